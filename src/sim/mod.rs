//! The bitHuman simulator: a stand-in for the Agent Generation API in tests, benchmarks, the
//! demo and docker-compose (`agenthook sim`).
//!
//! It speaks both shapes described in `upstream/`: the seed contract and the API as it behaves
//! today, each switchable through [`SimConfig`].
//!
//! # Upstream routes
//! - `POST /v1/agent/generate`, `GET /v1/agent/status/{agent_id}`, `POST /v1/validate`, all
//!   authenticated by the `api-secret` header (validate answers `{"valid": false}` instead of a
//!   401). Generate honours `Idempotency-Key` (24 h, per api-secret, replays marked
//!   `Idempotency-Replayed: true`) and a custom `agent_id`.
//! - Rate limits are sliding 60-second windows: the generate bucket for generate, the read
//!   bucket for status and validate. A client that never sends more than N requests in any 60
//!   seconds is never refused; over it, 429 `RATE_LIMITED`, with `Retry-After` if configured.
//! - An agent's status follows real elapsed time against `time_to_ready`. In the current status
//!   shape it passes through the misleading values of the live API before its end: `completed`
//!   near 5 %, `success` as a step marker near 20 % and 45 %, `generating` and `processing` in
//!   between; it ends `ready` with progress 1.0, or `failed`.
//!
//! # Triggers in the generate body
//! | trigger | effect |
//! |---|---|
//! | prompt contains `[fail]` | fails at 50 % of the time to ready: "Generation failed: simulated failure" |
//! | `image` contains `unreachable` | generate answers 200 `processing`; fails at 10 %: "Image processing failed: could not download image" |
//! | prompt contains `[null-model]` | ends `ready` with `model_url: null` |
//! | prompt contains `[success-final]` | ends `success` with progress 1.0, never `ready` (seed shape: `ready`) |
//! | prompt contains `[slow]` | takes ten times the time to ready |
//! | `video` contains `unsupported` | 400 `VIDEO_INPUT_NOT_SUPPORTED` |
//!
//! Other agents fail half-way with probability `failure_ratio`, picked deterministically from
//! the seed and the agent's creation index.
//!
//! # Control routes (no authentication, not recorded)
//! | route | does |
//! |---|---|
//! | `GET /_sim/health` | `{"ok": true}` |
//! | `GET /_sim/requests` | every recorded upstream request, oldest first |
//! | `GET /_sim/stats` | counts per route and status; per bucket the busiest 60 s |
//! | `GET /_sim/config`, `POST /_sim/config` | read, or merge a partial JSON configuration |
//! | `POST /_sim/outage` `{"on": true}` | every upstream route answers 503 `NO_AVAILABLE_WORKERS` |
//! | `POST /_sim/fail-next` `{"count": 2, "status": 500}` | the next requests answer that status |
//! | `GET /_sim/agents`, `GET /_sim/agents/{id}` | status data (current shape) |
//! | `POST /_sim/agents/{id}` `{"status": "ready"}` | force `processing`, `ready`, `success` or `failed` (with optional `error_message`) |
//! | `DELETE /_sim/agents/{id}` | forget the agent: status answers 404 |
//! | `POST /_sim/reset` | forget everything but the configuration |
//!
//! # bitHuman's own webhooks
//! `POST/GET /v1/webhooks` and `DELETE /v1/webhooks/{id}` (authenticated, read bucket) keep
//! registrations; `POST /v1/webhooks/{id}/test` sends it a `ping`; `--webhook-url` adds one more. When an agent ends, each receiver gets
//! `agent.ready` / `agent.failed` signed as upstream signs them, attempted at 0, 2 and 5 s,
//! after `--webhook-delay`; a `--webhook-drop-ratio` share is never sent (see [`webhooks`]).
//!
//! The same controls exist in Rust on [`SimState`], reachable as [`SimServer::state`].

mod agent;
mod config;
mod limiter;
mod reply;
mod routes;
mod state;
pub mod webhooks;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

pub use agent::Outcome;
pub use config::{ErrorShape, GenerateShape, SimArgs, SimConfig, StatusShape};
pub use limiter::SlidingWindowLimiter;
pub use state::{
    BucketStats, RecordedRequest, RouteStats, SimState, SimStats, REQUEST_LOG_CAPACITY,
};
pub use webhooks::WebhookStats;

/// How long `run` lets in-flight requests finish after a shutdown signal.
const GRACEFUL_SHUTDOWN_SECS: u64 = 5;

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct SimServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (loopback even when bound to all interfaces).
    pub base_url: String,
    pub state: Arc<SimState>,
    handle: ServerHandle,
    /// The webhook sender task (see [`webhooks`]).
    sender: Option<tokio::task::AbortHandle>,
}

impl SimServer {
    /// Stops the server at once. The simulator keeps nothing worth a graceful drain, and tests
    /// should not wait on idle keep-alive connections.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(sender) = &self.sender {
            sender.abort();
        }
        // `stop` sends its command before returning the future; nobody needs the reply.
        drop(self.handle.stop(false));
    }
}

/// Starts the simulator on an already-bound listener (tests bind `127.0.0.1:0`), inside the
/// current tokio runtime.
pub fn spawn(listener: TcpListener, config: SimConfig) -> io::Result<SimServer> {
    spawn_with_state(listener, Arc::new(SimState::new(config)))
}

/// Like [`spawn`], with a state built by the caller, e.g. on a manual clock
/// ([`SimState::with_clock`]).
pub fn spawn_with_state(listener: TcpListener, state: Arc<SimState>) -> io::Result<SimServer> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("the simulator needs a tokio runtime: {e}")))?;
    let (server, mut sim) = build(listener, state, 0)?;
    runtime.spawn(server);
    sim.sender = Some(
        runtime
            .spawn(webhooks::run(sim.state.clone()))
            .abort_handle(),
    );
    Ok(sim)
}

/// `agenthook sim`: binds `bind`, serves until Ctrl-C or SIGTERM, then drains for a few seconds.
pub async fn run(bind: SocketAddr, config: SimConfig) -> io::Result<()> {
    let listener = TcpListener::bind(bind)?;
    tracing::info!(?config, "simulator configuration");
    let state = Arc::new(SimState::new(config));
    let (server, mut sim) = build(listener, state, GRACEFUL_SHUTDOWN_SECS)?;
    tracing::info!(addr = %sim.addr, base_url = %sim.base_url, "bitHuman simulator listening");
    let served = tokio::spawn(server);
    sim.sender = Some(tokio::spawn(webhooks::run(sim.state.clone())).abort_handle());
    shutdown_signal().await;
    tracing::info!("shutting the simulator down");
    sim.handle.stop(true).await;
    match served.await {
        Ok(result) => result,
        Err(join) => Err(io::Error::other(join)),
    }
}

fn build(
    listener: TcpListener,
    state: Arc<SimState>,
    shutdown_timeout_secs: u64,
) -> io::Result<(Server, SimServer)> {
    let addr = listener.local_addr()?;
    let data = web::Data::from(Arc::clone(&state));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(routes::configure)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(shutdown_timeout_secs)
    .listen(listener)?
    .run();
    let sim = SimServer {
        addr,
        base_url: base_url(addr),
        state,
        handle: server.handle(),
        sender: None,
    };
    Ok((server, sim))
}

/// The URL a local client uses: an unspecified address (`0.0.0.0`) is reached on loopback.
fn base_url(addr: SocketAddr) -> String {
    let mut reachable = addr;
    if addr.ip().is_unspecified() {
        reachable.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{reachable}")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
