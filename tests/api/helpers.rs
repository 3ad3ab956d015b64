//! `spawn_app()` and friends: one running service per test, against its own simulator.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agenthook::app::{Application, Services, StopHandle};
use agenthook::clock::{self, ManualClock, SharedClock};
use agenthook::config::Settings;
use agenthook::sim::{SimConfig, SimServer};
use serde_json::Value;

pub use crate::fixtures::{
    free_port, spawn_sim, spawn_sim_with_clock, wait_ready, Process, SettingsBuilder,
};

pub const KEY_A: &str = "tenant-a-key-0123456789";
pub const KEY_B: &str = "tenant-b-key-0123456789";

/// Settings for tests: loopback everywhere, fast cadences, two tenants.
pub fn test_settings(data_dir: &Path, sim: &SimServer) -> Settings {
    SettingsBuilder::new(data_dir)
        .upstream(
            &sim.base_url,
            &sim.state.config().api_secret,
            Duration::from_secs(5),
        )
        .upstream_budgets(600, 6000)
        .keys(&[("tenant-a", KEY_A), ("tenant-b", KEY_B)])
        .with(|s| {
            s.server.shutdown_grace = Duration::from_secs(5);
            s.storage.cache_bytes = 8 * 1024 * 1024;
            s.poller.first_poll_after = Duration::from_millis(50);
            s.poller.interval = Duration::from_millis(50);
            s.poller.max_interval = Duration::from_millis(200);
            s.poller.submit_retry_after = Duration::from_millis(100);
            s.delivery.timeout = Duration::from_secs(2);
        })
        .build()
}

/// A simulator with generous limits that finishes agents quickly.
pub fn fast_sim_config() -> SimConfig {
    SimConfig {
        time_to_ready: Duration::from_millis(300),
        generate_per_minute: 10_000,
        read_per_minute: 100_000,
        ..SimConfig::default()
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub sim: SimServer,
    pub settings: Settings,
    pub dir: Arc<tempfile::TempDir>,
    stop: StopHandle,
    task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// `GET path` as `key`, its body as JSON (whatever the status).
    pub async fn get_json(&self, path: &str, key: &str) -> serde_json::Value {
        self.get(path, key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The first page of a tenant's jobs, newest first.
    pub async fn list_jobs(&self, key: &str) -> Vec<serde_json::Value> {
        let page = self.get_json("/v1/jobs", key).await;
        page["data"].as_array().expect("a page of jobs").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(key)
    }

    pub fn post(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(key)
    }

    pub fn delete(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.url(path)).bearer_auth(key)
    }

    /// `POST /v1/jobs` with `body`; the status and the parsed answer.
    pub async fn create_job(&self, key: &str, body: Value) -> (u16, Value) {
        let res = self.post("/v1/jobs", key).json(&body).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    pub async fn job(&self, key: &str, id: &str) -> (u16, Value) {
        let res = self
            .get(&format!("/v1/jobs/{id}"), key)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    /// Wait (polling the API) until the job reaches `status`.
    pub async fn wait_for_status(&self, key: &str, id: &str, status: &str) -> Value {
        for _ in 0..200 {
            let (_, job) = self.job(key, id).await;
            if job["status"] == status {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("job {id} never reached {status}");
    }

    /// Stop as SIGTERM would, and wait for the orderly shutdown to finish.
    pub async fn stop(self) -> (SimServer, Arc<tempfile::TempDir>, Settings) {
        self.stop.stop().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        (self.sim, self.dir, self.settings)
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(fast_sim_config(), |_| {}).await
}

pub async fn spawn_app_with(sim_config: SimConfig, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let sim = spawn_sim(sim_config);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(dir.path(), &sim);
    tweak(&mut settings);
    start(sim, dir, settings, clock::system()).await
}

/// Start a service on existing parts (a restart reuses the simulator and data directory).
pub async fn start(
    sim: SimServer,
    dir: Arc<tempfile::TempDir>,
    settings: Settings,
    clock: SharedClock,
) -> TestApp {
    // An in-process restart may find the previous instance's last threads still letting go of
    // the database lock; a new process never does.
    let mut tries = 0;
    let app = loop {
        match Application::build(settings.clone(), clock.clone()).await {
            Ok(app) => break app,
            Err(e) if tries < 100 && e.to_string().contains("lock") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("start service: {e}"),
        }
    };
    let base = format!("http://{}", app.addr());
    let stop = app.stop_handle();
    let task = tokio::spawn(async move {
        app.run().await.expect("service ran");
    });
    TestApp {
        base,
        http: reqwest::Client::new(),
        sim,
        settings,
        dir,
        stop,
        task,
    }
}

/// Services without the HTTP server or background loops, on a manual clock: tests drive the
/// scheduler with `step()`.
pub struct Harness {
    pub services: Services,
    pub clock: Arc<ManualClock>,
    pub sim: SimServer,
    pub _dir: tempfile::TempDir,
}

pub fn harness(sim_config: SimConfig, tweak: impl FnOnce(&mut Settings)) -> Harness {
    let clock = ManualClock::starting_now();
    let sim = spawn_sim_with_clock(sim_config, clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path(), &sim);
    tweak(&mut settings);
    let services = Services::build(settings, clock.clone()).expect("services");
    Harness {
        services,
        clock,
        sim,
        _dir: dir,
    }
}

/// Open a stopped service's database directly, to look at what it stored.
pub async fn open_store(path: &Path) -> agenthook::store::Store {
    for _ in 0..100 {
        match agenthook::store::SledStore::open(path, 8 * 1024 * 1024) {
            Ok(store) => return std::sync::Arc::new(store),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the database at {} stayed locked", path.display());
}
