//! The command line: `serve`, `sim`, `verify`, `demo`, `store copy`. `main.rs` only calls [`main`].

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
    /// See it work: the simulator, the service and a local receiver; one job, one signed
    /// webhook, verified.
    Demo,
    /// Storage chores: `store copy` moves a sled directory into a PostgreSQL database.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Run the bitHuman simulator alone (for docker-compose, tests and trying things out).
    Sim(crate::sim::SimArgs),
    /// Check a received webhook: headers as flags, the exact body on stdin. Exits 0 when the
    /// signature and timestamp are valid, 1 when not.
    Verify {
        /// The signing secret (`whsec_...`).
        #[arg(long, env = "AGENTHOOK_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long = "id", value_name = "WEBHOOK_ID")]
        id: String,
        /// The `webhook-timestamp` header.
        #[arg(long, value_name = "UNIX_SECONDS")]
        timestamp: String,
        /// The `webhook-signature` header.
        #[arg(long, value_name = "SIGNATURES")]
        signature: String,
        /// How far the timestamp may be from now, in seconds.
        #[arg(long, default_value_t = crate::delivery::signature::DEFAULT_TOLERANCE_SECS)]
        tolerance: i64,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy everything a stopped service stored (jobs, deliveries and their events,
    /// subscriptions, secrets, idempotency keys) from a sled directory into a PostgreSQL
    /// database. The target must be empty unless --force.
    Copy {
        /// The source: `sled:PATH` (the service using it must be stopped).
        #[arg(long, value_name = "sled:PATH")]
        from: String,
        /// The target: `postgres:URL` or a `postgres://` URL.
        #[arg(long, value_name = "postgres:URL")]
        to: String,
        /// Copy into a database that is not empty (records with the same ids are replaced).
        #[arg(long)]
        force: bool,
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
    let code = match cli.command {
        Command::Serve { config, simulator } => runtime.block_on(serve(config, simulator)),
        Command::Sim(args) => runtime.block_on(simulate(args)),
        Command::Store {
            command: StoreCommand::Copy { from, to, force },
        } => runtime.block_on(store_copy(&from, &to, force)),
        Command::Demo => runtime.block_on(async {
            match crate::demo::run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agenthook demo: {e}");
                    ExitCode::from(1)
                }
            }
        }),
        Command::Verify {
            secret,
            id,
            timestamp,
            signature,
            tolerance,
        } => verify(&secret, &id, &timestamp, &signature, tolerance),
    };
    // A task still blocked (on stalled storage, say) must not keep the process from ending.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
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
    // Kept alive for as long as the service runs.
    let _simulator = if simulator {
        match start_simulator(&mut settings) {
            Ok(sim) => Some(sim),
            Err(e) => {
                eprintln!("agenthook: could not start the simulator: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
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
    tracing::info!(addr = %app.addr(), upstream = %settings.upstream.base_url, dashboard = %format!("http://{}/ui/", app.addr()), "agenthook listening");
    match app.run_until_signalled().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agenthook: {e}");
            ExitCode::from(1)
        }
    }
}

/// Start the simulator on a free loopback port and point the upstream at it (and its webhooks
/// at this service). Without configured API keys, the development key is accepted.
fn start_simulator(settings: &mut Settings) -> std::io::Result<crate::sim::SimServer> {
    let config = crate::sim::SimConfig {
        time_to_ready: std::time::Duration::from_secs(10),
        generate_per_minute: settings.upstream.generate_per_minute,
        read_per_minute: settings.upstream.read_per_minute,
        ..crate::sim::SimConfig::default()
    };
    let secret = config.api_secret.clone();
    let sim = crate::sim::spawn(std::net::TcpListener::bind("127.0.0.1:0")?, config)?;
    settings.upstream.base_url = sim.base_url.parse().map_err(std::io::Error::other)?;
    settings.upstream.api_secret = Secret::new(secret);
    // The simulator plays bitHuman's own webhooks too: register this service's push URL with it.
    if settings.upstream.webhooks.public_url().is_none() && settings.server.bind.port() != 0 {
        let mut addr = settings.server.bind;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        settings.upstream.webhooks.public_url = format!("http://{addr}/v1/upstream/webhooks");
    }
    if settings.auth.keys.is_empty() {
        settings.auth.keys.push(dev_key());
        eprintln!(
            "agenthook: simulator mode with no configured API keys: use `Authorization: Bearer {DEV_KEY}` \
             (tenant \"{DEV_TENANT}\")"
        );
    }
    tracing::info!(upstream = %sim.base_url, "built-in bitHuman simulator running");
    Ok(sim)
}

async fn simulate(args: crate::sim::SimArgs) -> ExitCode {
    crate::telemetry::init(&crate::config::LogSettings {
        format: crate::config::LogFormat::Pretty,
        level: "info".into(),
    });
    if let Err(e) = args.config.validate() {
        eprintln!("agenthook sim: {e}");
        return ExitCode::from(2);
    }
    match crate::sim::run(args.bind, args.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agenthook sim: {e}");
            ExitCode::from(1)
        }
    }
}

fn dev_key() -> ApiKey {
    ApiKey {
        name: DEV_TENANT.into(),
        key: Secret::new(DEV_KEY),
    }
}

fn verify(secret: &str, id: &str, timestamp: &str, signature: &str, tolerance: i64) -> ExitCode {
    use std::io::Read;

    use crate::delivery::signature::{self, SigningSecret};

    let secret = match SigningSecret::parse(secret) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("agenthook verify: the secret is not usable: {e}");
            return ExitCode::from(2);
        }
    };
    let mut body = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut body) {
        eprintln!("agenthook verify: could not read the body from stdin: {e}");
        return ExitCode::from(2);
    }
    let now = chrono::Utc::now().timestamp();
    match signature::verify(&secret, id, timestamp, signature, &body, now, tolerance) {
        Ok(()) => {
            println!("valid: signature matches and the timestamp is within {tolerance}s");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("invalid: {e}");
            ExitCode::from(1)
        }
    }
}

/// `agenthook store copy`: sled → PostgreSQL.
async fn store_copy(from: &str, to: &str, force: bool) -> ExitCode {
    let Some(path) = from.strip_prefix("sled:") else {
        eprintln!("agenthook store copy: --from must be sled:PATH");
        return ExitCode::from(2);
    };
    let url = match to.strip_prefix("postgres:") {
        Some(rest) if rest.starts_with("postgres://") || rest.starts_with("postgresql://") => rest,
        _ if to.starts_with("postgres://") || to.starts_with("postgresql://") => to,
        _ => {
            eprintln!("agenthook store copy: --to must be postgres:URL (postgres://USER@HOST/DB)");
            return ExitCode::from(2);
        }
    };
    let shown = crate::config::redact_url(url);
    let source = match crate::store::SledStore::open(std::path::Path::new(path), 64 << 20) {
        Ok(store) => store,
        Err(e) => {
            eprintln!(
                "agenthook store copy: could not open sled:{path} ({e}); is a service still using it?"
            );
            return ExitCode::from(1);
        }
    };
    let export = match source.export() {
        Ok(export) => export,
        Err(e) => {
            eprintln!("agenthook store copy: reading sled:{path}: {e}");
            return ExitCode::from(1);
        }
    };
    let target = match crate::store::PgStore::open(url, 4, std::time::Duration::from_secs(120)) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("agenthook store copy: {e}");
            return ExitCode::from(2);
        }
    };
    match target.import(&export, force).await {
        Ok(()) => {
            println!("copied {} from sled:{path} to {shown}", export.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agenthook store copy: writing to {shown}: {e}; nothing was copied");
            ExitCode::from(1)
        }
    }
}
