fn main() -> std::process::ExitCode {
    agenthook::cli::main()
}
