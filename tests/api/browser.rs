//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`), for
//! tests of the dashboard. The browser may only reach 127.0.0.1: no proxy, no DNS, no
//! background traffic.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Set (by `.ci/run`) to make a missing browser a failure instead of a skip.
pub const REQUIRED_ENV: &str = "AGENTHOOK_BROWSER_TESTS";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Browser {
    /// A fresh browser (empty profile) at `width`x`height`, or `None` when Chromium or
    /// chromedriver is not installed and the environment does not require them.
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        let chromium = std::env::var_os("CHROME_BIN")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| on_path(&["chromium", "chromium-browser", "google-chrome"]));
        let driver = std::env::var_os("CHROMEDRIVER")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(|| on_path(&["chromedriver"]));
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let required = std::env::var_os(REQUIRED_ENV).is_some_and(|v| v == "required");
            assert!(
                !required,
                "{REQUIRED_ENV}=required but chromium or chromedriver is not on PATH \
                 (Debian: apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "skipped: chromium/chromedriver not installed \
                 (Debian: apt-get install chromium chromium-driver)"
            );
            return None;
        };
        Some(Self::launch(&chromium, &driver, width, height).await)
    }

    async fn launch(chromium: &Path, driver: &Path, width: u32, height: u32) -> Browser {
        let port = free_port();
        // Its own process group, which the browser it starts joins: one signal ends them all.
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let profile = tempfile::tempdir().expect("a profile directory");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-client-side-phishing-detection".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter".to_owned(),
            "--metrics-recording-only".to_owned(),
            "--no-proxy-server".to_owned(),
            // Every host name fails to resolve: the page under test only uses 127.0.0.1.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("chromedriver exited with {status} before a session started");
                    }
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("no WebDriver session within 30 s: {e}");
                }
            }
        };
        let browser = Browser {
            client,
            driver: child,
            _profile: profile,
        };
        browser.resize_viewport(width, height).await;
        browser
    }

    /// Make the page's viewport (not the window around it) `width`x`height`.
    pub async fn resize_viewport(&self, width: u32, height: u32) {
        let mut outer = (width, height);
        for _ in 0..3 {
            self.client
                .set_window_size(outer.0, outer.1)
                .await
                .expect("resize the window");
            let inner = self
                .eval("return [window.innerWidth, window.innerHeight];")
                .await;
            let inner = (
                inner[0].as_u64().unwrap_or(width.into()) as u32,
                inner[1].as_u64().unwrap_or(height.into()) as u32,
            );
            if inner == (width, height) {
                return;
            }
            outer = (
                outer.0 + width.saturating_sub(inner.0),
                outer.1 + height.saturating_sub(inner.1),
            );
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Run `script` (a function body) in the page; its return value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Run `script` with `args` (as `arguments[0]`, ...).
    pub async fn eval_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Wait until `script` returns true in the page; panics with `what` after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, script: &str, args: Vec<Value>) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval_with(script, args.clone()).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                let text = self.eval("return document.body.innerText;").await;
                let visibility = self.eval("return document.visibilityState;").await;
                if let Ok(png) = self.client.screenshot().await {
                    let dir =
                        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::write(dir.join("failure.png"), png);
                }
                panic!(
                    "waited {timeout:?} for {what}; the page ({visibility}) shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Click the first element matching `css`, waiting for it to appear. The page redraws
    /// itself as data comes in: an element replaced between finding and clicking is found
    /// again.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let clicked = match self
                .client
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css(css))
                .await
            {
                Ok(element) => element.click().await,
                Err(e) => panic!("no {css}: {e}"),
            };
            match clicked {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.eval("return document.body.innerText;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A PNG of the viewport at `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) {
        // Let transitions and toasts settle a little, so the picture shows the page at rest.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(dir).expect("screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// End the session (the browser quits); the driver goes with the drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Also after a panic: neither the driver nor the browser it started may outlive the
        // test. Killing only the driver would leave the browser running, so the whole
        // process group goes.
        let pid = self.driver.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the group that `Command::process_group(0)`
        // made for our own child; it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.driver.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
