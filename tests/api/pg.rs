//! A throwaway PostgreSQL cluster for the tests that need one: Debian's `postgresql` package
//! (`initdb` and `pg_ctl` from /usr/lib/postgresql/*/bin, or on PATH), in a temporary
//! directory, on 127.0.0.1 and a free port, its socket in that directory. Started once per
//! test run, shared by every test, each test in a database of its own; stopped when the run
//! ends. When run as root, the cluster runs as the `postgres` user (or `nobody`): `initdb`
//! refuses root.
//!
//! Without the binaries the tests that need it say "skipped: PostgreSQL not installed" and
//! pass, unless [`REQUIRED_ENV`] is `required` (as `.ci/run` sets it): then they fail.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Set (by `.ci/run`) to make a missing PostgreSQL a failure instead of a skip.
pub const REQUIRED_ENV: &str = "AGENTHOOK_POSTGRES_TESTS";

pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    user: Option<(u32, u32)>,
    /// Commits wait for the WAL (see [`Cluster::private`]); the shared cluster does not.
    durable: bool,
    _dir: tempfile::TempDir,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

fn find_bin() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    candidates.sort();
    candidates.reverse();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// The uid and gid of an unprivileged user to run the cluster as, when we are root.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; the passwd record is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        for name in [c"postgres", c"nobody"] {
            let pw = libc::getpwnam(name.as_ptr());
            if !pw.is_null() {
                return Some(((*pw).pw_uid, (*pw).pw_gid));
            }
        }
    }
    panic!("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL");
}

fn chown(path: &Path, (uid, gid): (u32, u32)) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert_eq!(rc, 0, "chown {}", path.display());
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command.env_remove("PGDATA").env("LC_ALL", "C");
        command
    }

    /// A cluster of its own (not the shared one), stopped and removed when dropped: for tests
    /// that stop and restart the database. Its commits are durable (`synchronous_commit=on`):
    /// an immediate stop loses nothing acknowledged.
    pub fn private() -> Option<Cluster> {
        Cluster::init_with(true)
    }

    fn start() -> Option<Cluster> {
        let cluster = Cluster::init()?;
        // Stopped when the test process exits.
        extern "C" fn stop_at_exit() {
            if let Some(Some(cluster)) = CLUSTER.get() {
                cluster.stop();
                let _ = std::fs::remove_dir_all(cluster._dir.path());
            }
        }
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        Some(cluster)
    }

    fn init() -> Option<Cluster> {
        Cluster::init_with(false)
    }

    fn init_with(durable: bool) -> Option<Cluster> {
        let Some(bin) = find_bin() else {
            if std::env::var(REQUIRED_ENV).as_deref() == Ok("required") {
                panic!("{REQUIRED_ENV}=required but PostgreSQL (initdb, pg_ctl) is not installed");
            }
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("agenthook-pg-")
            .tempdir()
            .expect("tempdir");
        let user = unprivileged();
        if let Some(user) = user {
            chown(dir.path(), user);
        }
        let data = dir.path().join("data");
        let port = crate::fixtures::free_port();
        let cluster = Cluster {
            bin,
            data,
            port,
            user,
            durable,
            _dir: dir,
        };
        let out = cluster
            .command("initdb")
            .args(["-D"])
            .arg(&cluster.data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.pg_ctl_start();
        Some(cluster)
    }

    fn pg_ctl_start(&self) {
        let socket_dir = self.data.parent().unwrap();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit={} \
             -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB",
            self.port,
            socket_dir.display(),
            if self.durable { "on" } else { "off" }
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(socket_dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(socket_dir.join("log")).unwrap_or_default()
        );
    }

    /// Stop the cluster at once (its clients see the connection drop).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Start it again after [`Cluster::stop`].
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    /// Only private clusters are dropped (the shared one is stopped at exit).
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shared cluster, started on first use; `None` (after saying so) when PostgreSQL is not
/// installed and not required.
pub fn cluster() -> Option<&'static Cluster> {
    let cluster = CLUSTER.get_or_init(Cluster::start).as_ref();
    if cluster.is_none() {
        eprintln!("skipped: PostgreSQL not installed");
    }
    cluster
}

/// A fresh, empty database of the shared cluster: its URL.
pub async fn fresh_database() -> Option<String> {
    let cluster = cluster()?;
    let name = format!(
        "t{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::SeqCst)
    );
    let mut last = None;
    for _ in 0..50 {
        match sqlx_admin(cluster, &format!("CREATE DATABASE {name}")).await {
            Ok(()) => return Some(cluster.url(&name)),
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not create a test database: {last:?}");
}

pub async fn sqlx_admin(cluster: &Cluster, sql: &str) -> Result<(), String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(())
}

/// A migrated PgStore on a fresh database, or `None` when PostgreSQL is not installed.
pub async fn pg_store() -> Option<(std::sync::Arc<agenthook::store::PgStore>, String)> {
    let url = fresh_database().await?;
    let store = agenthook::store::PgStore::open(&url, 8, Duration::from_secs(120))
        .expect("open the PostgreSQL store");
    store.migrate().await.expect("migrate");
    Some((std::sync::Arc::new(store), url))
}
