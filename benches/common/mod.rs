//! Helpers shared by the benchmark binaries: process and thread CPU accounting from `/proc`,
//! resident memory, latency summaries, and small formatting aids. Linux only.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The settings builder and the process helpers the integration tests use too.
#[path = "../../tests/fixtures/mod.rs"]
pub mod fixtures;

/// Loopback webhook receivers.
pub mod receivers;

/// POST `body` as JSON to `url` with `key` as the bearer token: the status and the JSON answer
/// (null when the answer is not JSON).
pub async fn post_json(
    client: &reqwest::Client,
    url: String,
    key: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let res = client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request the service");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

/// Resident memory of another process (a child running the real binary), in bytes.
pub fn child_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// User plus system CPU time another process has used, from `/proc/<pid>/stat`.
pub fn child_cpu(pid: u32) -> Duration {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU time used so far by those threads of another process whose name begins with `prefix`
/// (from `/proc/<pid>/task/*/stat`; a thread that has ended is no longer counted).
pub fn child_threads_cpu(pid: u32, prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')'));
            name.is_some_and(|(name, _)| name.starts_with(prefix))
        })
        .map(|stat| stat_cpu(&stat))
        .sum()
}

/// utime plus stime of a `stat` line (of a process or a thread).
fn stat_cpu(stat: &str) -> Duration {
    // The fields after the command name (in parentheses): utime and stime are the 12th and
    // 13th of those.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz.max(1))
}

/// Resident memory of this process, from `/proc/self/status` (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS:") * 1024
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// CPU time used by this whole process so far (user + system), with microsecond resolution
/// (`getrusage`), including threads that have already exited.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The ids of this process's live threads.
pub fn thread_ids() -> HashSet<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A thread's name (`comm`) and CPU time so far (nanoseconds on CPU, from `schedstat`).
pub fn thread_cpu(tid: u32) -> Option<(String, Duration)> {
    let base = format!("/proc/self/task/{tid}");
    let name = std::fs::read_to_string(format!("{base}/comm")).ok()?;
    let sched = std::fs::read_to_string(format!("{base}/schedstat")).ok()?;
    let ns: u64 = sched.split_whitespace().next()?.parse().ok()?;
    Some((name.trim().to_owned(), Duration::from_nanos(ns)))
}

/// Assigns this process's threads to named groups: by the set of threads that appeared when a
/// component started (actix names the workers of both servers alike), else by thread name.
#[derive(Default)]
pub struct ThreadGroups {
    known: Vec<(String, HashSet<u32>)>,
    seen: HashSet<u32>,
}

impl ThreadGroups {
    /// Call before starting anything: the threads present now are `label`.
    pub fn new(label: &str) -> Self {
        let mut groups = ThreadGroups::default();
        groups.claim_new(label);
        groups
    }

    /// Every thread that appeared since the last call belongs to `label`.
    pub fn claim_new(&mut self, label: &str) {
        let now = thread_ids();
        let fresh: HashSet<u32> = now.difference(&self.seen).copied().collect();
        self.seen.extend(&fresh);
        self.known.push((label.to_owned(), fresh));
    }

    fn group_of(&self, tid: u32, name: &str) -> String {
        if name.starts_with("agenthook-writ") {
            return "agenthook: storage writer thread".into();
        }
        if name.starts_with("sled") {
            return "sled background threads".into();
        }
        if name.starts_with("loadgen") {
            return "load generator".into();
        }
        if name.starts_with("server-rt") {
            return "server runtime (accept loops, poller)".into();
        }
        for (label, tids) in &self.known {
            if tids.contains(&tid) {
                return label.clone();
            }
        }
        format!("other ({name})")
    }

    /// CPU time per group for the threads alive now.
    pub fn snapshot(&self) -> BTreeMap<String, Duration> {
        let mut out: BTreeMap<String, Duration> = BTreeMap::new();
        for tid in thread_ids() {
            if let Some((name, cpu)) = thread_cpu(tid) {
                *out.entry(self.group_of(tid, &name)).or_default() += cpu;
            }
        }
        out
    }
}

/// Per-group CPU between two snapshots, as a share of one core over `wall`.
pub fn cpu_shares(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
    wall: Duration,
) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(group, cpu)| {
            let was = before.get(group).copied().unwrap_or_default();
            let used = cpu.saturating_sub(was);
            (
                group.clone(),
                100.0 * used.as_secs_f64() / wall.as_secs_f64(),
            )
        })
        .filter(|(_, pct)| *pct >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}

/// Busy and total jiffies of the whole machine (`/proc/stat`), to see what else was running.
pub fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait are fields 3 and 4.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Latency summary of a set of samples (microseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let pick = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Latency {
            p50_us: pick(0.50),
            p90_us: pick(0.90),
            p99_us: pick(0.99),
            max_us: *samples.last().expect("not empty"),
            mean_us: samples.iter().sum::<u64>() as f64 / samples.len() as f64,
        }
    }
}

/// The `p`th percentile (0-100) of `sorted` durations, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (the upper one of an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied()
}

pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// A duration from an environment variable in whole seconds, else `default`.
pub fn env_secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

pub fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open a sled directory a stopped service may still hold for a moment.
pub fn open_store_retrying(path: &std::path::Path, cache: u64) -> agenthook::store::Store {
    let mut last = None;
    for _ in 0..200 {
        match agenthook::store::SledStore::open(path, cache) {
            Ok(store) => return std::sync::Arc::new(store),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("could not reopen {}: {last:?}", path.display());
}
