//! Wiring: store, upstream client, workers and the HTTP server, and an orderly shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tokio::task::JoinHandle;

use crate::api::{self, AppState, KeyRing};
use crate::clock::{SharedClock, Timestamp};
use crate::config::Settings;
use crate::delivery::worker::DeliveryWorker;
use crate::lifecycle::Lifecycle;
use crate::maintenance::Maintenance;
use crate::poller::Poller;
use crate::push::PushInbox;
use crate::signals::Signals;
use crate::store::health::Health;
use crate::store::Store;
use crate::upstream::{Budgets, UpstreamClient};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not open storage at {path}: {source}")]
    Storage {
        path: String,
        source: crate::store::StoreError,
    },
    #[error("{0}")]
    Config(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage works again but must be reopened: exiting for the supervisor to restart the service")]
    StorageNeedsRestart,
    #[error("storage stalled (writes stopped coming back): exiting for the supervisor to restart the service")]
    StorageStalled,
}

/// The parts a running service is made of, ready to serve.
pub struct Application {
    addr: SocketAddr,
    server: actix_web::dev::Server,
    store: Store,
    health: Arc<Health>,
    signals: Arc<Signals>,
    workers: Vec<JoinHandle<()>>,
    stall_watch: JoinHandle<()>,
    settings: Arc<Settings>,
}

/// The shared handles, built once; tests and benchmarks reach in through it.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    /// Whether storage works (fed by every store result); see [`crate::store::health`].
    pub health: Arc<Health>,
    pub lifecycle: Lifecycle,
    pub signals: Arc<Signals>,
    pub clock: SharedClock,
    pub settings: Arc<Settings>,
}

impl Services {
    pub fn build(settings: Settings, clock: SharedClock) -> Result<Services, StartError> {
        let store =
            crate::store::open(&settings.storage).map_err(|source| StartError::Storage {
                path: storage_label(&settings.storage),
                source,
            })?;
        // Opening sled builds its page table beside the snapshot it reads: give that back.
        crate::memory::release_now();
        Ok(Services::with_store(settings, clock, store))
    }

    /// The services on a store opened elsewhere (a test wraps one that fails on demand). Its
    /// results are watched by a [`Health`], as those of the store `build` opens.
    pub fn with_store(settings: Settings, clock: SharedClock, store: Store) -> Services {
        let health = Health::new();
        let store: Store = Arc::new(crate::store::health::Watched::new(store, health.clone()));
        // Several instances on one store share the account's budgets through it.
        let budgets = if store.shares_budgets() {
            let budgets = Arc::new(Budgets::shared(
                settings.upstream.generate_per_minute,
                settings.upstream.read_per_minute,
            ));
            budgets.start_refills(store.clone(), clock.clone());
            budgets
        } else {
            Arc::new(Budgets::new(
                settings.upstream.generate_per_minute,
                settings.upstream.read_per_minute,
            ))
        };
        let upstream = UpstreamClient::new(
            settings.upstream.base_url.clone(),
            settings.upstream.api_secret.clone(),
            settings.upstream.timeout,
            budgets,
            clock.clone(),
            settings.upstream.rate_limit_backoff,
        );
        let push = Arc::new(PushInbox::new(settings.poller.max_interval_with_webhooks));
        push.add_secret(settings.upstream.webhooks.secret.expose());
        let lifecycle = Lifecycle {
            store: store.clone(),
            upstream,
            clock: clock.clone(),
            settings: settings.poller.clone(),
            push,
        };
        Services {
            store,
            health,
            lifecycle,
            signals: Arc::new(Signals::default()),
            clock,
            settings: Arc::new(settings),
        }
    }

    /// Make the store ready to serve (PostgreSQL: connect, apply the migrations). A failure
    /// names the storage key and never prints a password.
    pub async fn prepare_storage(&self) -> Result<(), StartError> {
        self.store
            .prepare()
            .await
            .map_err(|source| StartError::Storage {
                path: storage_label(&self.settings.storage),
                source,
            })
    }

    /// The polls a stopped process had leased are due now, not when their leases end, where
    /// storage can tell that their holder is gone ([`crate::store::Storage::release_leases`]).
    /// `started`: a time before this process claimed anything. Its own leases end a full lease
    /// after that or later, so they are left alone, and this may run beside the poller (it
    /// reads every poll due within a lease: about half a second for 100,000 on a cold start).
    pub async fn take_back_leases(&self, started: Timestamp) {
        let now = self.clock.now();
        let lease = self.settings.poller.lease;
        let horizon = crate::clock::after(started, lease) - chrono::Duration::milliseconds(1);
        match self.store.release_leases(now, horizon).await {
            Ok(0) => {}
            Ok(jobs) => {
                tracing::info!(jobs, "polls leased by a stopped process are due again");
                self.signals.poller_wake.notify_one();
            }
            Err(error) => {
                tracing::warn!(%error, "polls leased by a stopped process wait for their leases")
            }
        }
    }

    /// Wake this instance's workers when any instance sharing the store writes work.
    pub fn watch_wakeups(&self) {
        let signals = self.signals.clone();
        self.store.watch_wakeups(Arc::new(move |wake| match wake {
            crate::store::Wakeup::Deliveries => signals.delivery_wake.notify_one(),
            crate::store::Wakeup::Jobs => signals.poller_wake.notify_one(),
        }));
    }

    pub fn poller(&self) -> Poller {
        Poller::new(self.lifecycle.clone(), self.signals.clone())
    }

    pub fn maintenance(&self) -> Maintenance {
        Maintenance::new(self.store.clone(), self.clock.clone(), self.signals.clone())
            .retention(self.settings.storage.retention)
    }

    pub fn delivery_worker(&self) -> Result<DeliveryWorker, StartError> {
        DeliveryWorker::new(
            self.store.clone(),
            self.clock.clone(),
            self.settings.delivery.clone(),
            self.signals.clone(),
        )
        .map_err(|e| StartError::Config(format!("could not build the delivery HTTP client: {e}")))
    }
}

impl Application {
    /// Open storage, bind the listener (port 0 picks a free one), start the workers.
    pub async fn build(settings: Settings, clock: SharedClock) -> Result<Application, StartError> {
        let addr = settings.server.bind;
        let listener =
            TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        Self::build_on(settings, clock, listener).await
    }

    /// As [`Application::build`], on an already-bound listener (whose address may be part of
    /// `upstream.webhooks.public_url`).
    pub async fn build_on(
        settings: Settings,
        clock: SharedClock,
        listener: TcpListener,
    ) -> Result<Application, StartError> {
        let services = Services::build(settings, clock)?;
        let started = services.clock.now();
        services.prepare_storage().await?;
        if let Some(url) = services.settings.upstream.webhooks.public_url() {
            crate::push::ensure_registration(&services.lifecycle, url).await;
        }
        let leases = services.clone();
        let app = Self::start(services, listener)?;
        // Beside the poller: start-up does not wait for the look at every poll due soon.
        tokio::spawn(async move { leases.take_back_leases(started).await });
        Ok(app)
    }

    /// Start serving with already-built services on an already-bound listener. On a directory
    /// another process used before, also run [`Services::take_back_leases`], as
    /// [`Application::build_on`] does.
    pub fn start(services: Services, listener: TcpListener) -> Result<Application, StartError> {
        let addr = listener.local_addr()?;
        let settings = services.settings.clone();
        crate::telemetry::metrics_handle();
        let keys = KeyRing::new(&settings.auth.keys, settings.auth.requests_per_minute)
            .map_err(StartError::Config)?;
        let state = web::Data::new(AppState {
            store: services.store.clone(),
            lifecycle: services.lifecycle.clone(),
            clock: services.clock.clone(),
            keys,
            settings: settings.clone(),
            signals: services.signals.clone(),
        });
        let server = HttpServer::new(move || {
            api::routes(App::new())
                .app_data(state.clone())
                .configure(api::extractor_configs)
                .configure(crate::ui::configure)
                .default_service(web::to(api::no_route))
                .wrap(api::error_handlers())
                .wrap(from_fn(api::request_id::middleware))
        })
        .disable_signals()
        .shutdown_timeout(settings.server.shutdown_grace.as_secs().max(1))
        .listen(listener)?
        .run();
        services.watch_wakeups();
        let heartbeat = tokio::spawn(crate::push::heartbeat(
            services.lifecycle.clone(),
            services.signals.clone(),
        ));
        let poller = tokio::spawn(services.poller().run());
        let deliveries = tokio::spawn(
            services
                .delivery_worker()?
                .run(settings.server.shutdown_grace),
        );
        let maintenance = tokio::spawn(services.maintenance().run());
        let trimmer = {
            let signals = services.signals.clone();
            tokio::spawn(crate::memory::trim_after_work(async move {
                signals.shutdown_started().await
            }))
        };
        let watcher = {
            let signals = services.signals.clone();
            tokio::spawn(
                services
                    .health
                    .clone()
                    .watch(services.store.clone(), async move {
                        signals.shutdown_started().await
                    }),
            )
        };
        // Not one of the workers: it goes on through the shutdown, which waits on storage too.
        let stall_watch = {
            let (health, limit) = (services.health.clone(), settings.storage.stall_timeout);
            tokio::spawn(async move { health.notice_a_stall(limit).await })
        };
        // A backend that recovers only when reopened: drain and exit non-zero. Stalled
        // storage: stop at once, since no request waiting for a write can be answered.
        {
            let (health, signals, handle) = (
                services.health.clone(),
                services.signals.clone(),
                server.handle(),
            );
            tokio::spawn(async move {
                health.wait_for_restart().await;
                signals.begin_shutdown();
                handle.stop(!health.stalled()).await;
            });
        }
        Ok(Application {
            addr,
            server,
            health: services.health,
            store: services.store,
            signals: services.signals,
            workers: vec![poller, deliveries, maintenance, heartbeat, watcher, trimmer],
            stall_watch,
            settings,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serve until SIGTERM or Ctrl-C, then shut down in order.
    pub async fn run_until_signalled(self) -> Result<(), StartError> {
        let handle = self.server.handle();
        let signals = self.signals.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            signals.begin_shutdown();
            handle.stop(true).await;
        });
        self.run().await
    }

    /// Serve until the server is stopped (by [`Application::stop_handle`] or a signal task).
    /// Each step of the shutdown gives way to a stall of storage, after which nothing that
    /// waits on it would end.
    pub async fn run(self) -> Result<(), StartError> {
        let Application {
            server,
            store,
            health,
            signals,
            workers,
            stall_watch,
            settings,
            ..
        } = self;
        let Some(served) = unless_stalled(&health, server).await else {
            return Err(abandon(store));
        };
        served?;
        signals.begin_shutdown();
        // One deadline for every worker, not one each.
        let deadline = tokio::time::Instant::now() + settings.server.shutdown_grace;
        let drained = async {
            for worker in workers {
                if tokio::time::timeout_at(deadline, worker).await.is_err() {
                    tracing::warn!("a worker did not stop within the grace period");
                }
            }
        };
        if unless_stalled(&health, drained).await.is_none() {
            return Err(abandon(store));
        }
        // The final flush (sled) or the pool's close (PostgreSQL): a write like any other for
        // the stall watch.
        let Some(closed) = unless_stalled(&health, store.close()).await else {
            return Err(abandon(store));
        };
        stall_watch.abort();
        if health.restart_needed() {
            // What could not be written was answered 503 or is retried by its owner; the
            // next process opens the data as it is on disk. (Kept, not dropped: dropping a
            // sled store flushes once more.)
            tracing::error!("stopped: storage must be reopened; exiting non-zero for the supervisor to restart the service");
            std::mem::forget(store);
            return Err(StartError::StorageNeedsRestart);
        }
        closed.map_err(|e| StartError::Io(std::io::Error::other(e)))?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Stops the service as SIGTERM would.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            server: self.server.handle(),
            signals: self.signals.clone(),
        }
    }
}

/// `step` of a shutdown, unless storage stalls first (`None`).
async fn unless_stalled<T>(
    health: &Health,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        done = step => Some(done),
        _ = health.wait_for_stall() => None,
    }
}

/// Leave stalled storage as it is: nothing waiting for a write will finish, and closing would
/// flush, which waits too (as would dropping a sled store's last handle, so it is kept: the
/// process is about to end). The next process opens the data as it is on disk.
fn abandon(store: Store) -> StartError {
    std::mem::forget(store);
    StartError::StorageStalled
}

#[derive(Clone)]
pub struct StopHandle {
    server: actix_web::dev::ServerHandle,
    signals: Arc<Signals>,
}

impl StopHandle {
    pub async fn stop(&self) {
        self.signals.begin_shutdown();
        self.server.stop(true).await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What a storage error at start names: the sled directory, or the PostgreSQL key and URL
/// (its password hidden).
fn storage_label(storage: &crate::config::StorageSettings) -> String {
    match storage.backend {
        crate::config::StorageBackend::Sled => storage.path.display().to_string(),
        crate::config::StorageBackend::Postgres => format!(
            "storage.postgres.url = {}",
            crate::config::redact_url(&storage.postgres.url)
        ),
    }
}
