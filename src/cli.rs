//! The command line: `serve`, `sim`, `verify`, `demo`. `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::clock;
use crate::config::{ApiKey, Secret, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "agenthook",
    version,
    about = "Signed webhooks for bitHuman agent generation: submit once, get called back when the agent is ready."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// A TOML file layered over the defaults (config/default.toml documents every key).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run the built-in bitHuman simulator in-process and point the upstream at it.
        #[arg(long)]
        simulator: bool,
    },
}

/// The API key `serve --simulator` uses when none is configured: a development convenience
/// for a service that talks only to its own simulator.
pub const DEV_TENANT: &str = "dev";
pub const DEV_KEY: &str = "dev-key-for-the-simulator-only";

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the async runtime");
    match cli.command {
        Command::Serve { config, simulator } => runtime.block_on(serve(config, simulator)),
    }
}

async fn serve(config: Option<PathBuf>, simulator: bool) -> ExitCode {
    let mut settings = match Settings::load(config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("agenthook: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.log);
    if simulator {
        eprintln!("agenthook: --simulator is not available in this build");
        return ExitCode::from(2);
    }
    if settings.upstream.api_secret.is_empty() {
        eprintln!(
            "agenthook: no upstream secret. Set BITHUMAN_API_SECRET (or upstream.api_secret in a --config file, \
             or AGENTHOOK__UPSTREAM__API_SECRET), or run `agenthook serve --simulator` to try it against the \
             built-in bitHuman simulator."
        );
        return ExitCode::from(2);
    }
    if settings.auth.keys.is_empty() {
        eprintln!(
            "agenthook: no API keys. Add at least one [[auth.keys]] entry (name = tenant, key = secret) to a \
             --config file; see config/default.toml."
        );
        return ExitCode::from(2);
    }
    run_service(&mut settings).await
}

async fn run_service(settings: &mut Settings) -> ExitCode {
    let app = match Application::build(settings.clone(), clock::system()).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("agenthook: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(addr = %app.addr(), upstream = %settings.upstream.base_url, "agenthook listening");
    match app.run_until_signalled().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agenthook: {e}");
            ExitCode::from(1)
        }
    }
}

#[allow(dead_code)]
fn dev_key() -> ApiKey {
    ApiKey {
        name: DEV_TENANT.into(),
        key: Secret::new(DEV_KEY),
    }
}
