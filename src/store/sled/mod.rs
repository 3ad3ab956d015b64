//! The embedded backend: sled, one process per directory.
//!
//! Trees:
//! - `jobs`: job id → job; `deliveries`: `tenant \0 delivery id` → delivery (a tenant's lie
//!   together; the body of its event inside only when it is the event's only delivery);
//!   `events`: event id → the event's body, once for all its deliveries; `subscriptions`: id →
//!   subscription
//! - `index`: secondary keys, by prefix (see [`keys`]): a tenant's jobs and subscriptions,
//!   agent id → job id, a job's deliveries, a subscription's failed deliveries
//! - `due`: the scheduler's queue, `kind | due millis | job id` → empty, or `leased` while a
//!   claim holds the job (`jobs::LEASED`)
//! - `queue`: the delivery worker's queue, `fresh|retry | due millis | tenant \0 delivery id`
//!   → the delivery's destination key (see `deliveries::Claims`)
//! - `idempotency`: `tenant \0 key` → record; `secrets`: tenant → callback signing secrets
//! - `meta`: the layout version of the records (see [`SledStore::open`])
//! - `upstream`: agenthook's webhook registration with bitHuman (`upstream_webhook`)
//!
//! Every write goes through the writer thread ([`writer`]), which makes it durable before it
//! answers. Reads and claims run on tokio's blocking pool ([`api`]), never on a runtime thread:
//! a sled call may wait for sled's global lock while a flush holds it.
//!
//! A delivery claim is held in memory and writes nothing: the queue entry stays until the
//! attempt is recorded, so a worker that dies mid-task leaves an entry that is due at once on
//! the next start, and nothing is lost nor needs a separate recovery pass (see
//! `deliveries::Claims`).

mod api;
mod cache;
mod counts;
mod deliveries;
mod export;
mod jobs;
mod keys;
mod record;
mod retention;
mod subscriptions;
mod upstream_webhook;
mod writer;

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Result, StoreError};
use crate::domain::{SecretSet, Subscription};

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        match error {
            // The operating system's words ("No space left on device (os error 28)"), which
            // is what an operator reading a 503 or a log line needs.
            sled::Error::Io(io) => StoreError::Unavailable(describe_io(&io)),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// An I/O error in plain words: sled hands some on with their debug text as the message.
pub(crate) fn describe_io(io: &std::io::Error) -> String {
    match io.kind() {
        std::io::ErrorKind::StorageFull => "no space left on device".into(),
        std::io::ErrorKind::ReadOnlyFilesystem => "read-only file system".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => io.to_string(),
    }
}

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    jobs: sled::Tree,
    deliveries: sled::Tree,
    events: sled::Tree,
    subscriptions: sled::Tree,
    index: sled::Tree,
    due: sled::Tree,
    queue: sled::Tree,
    idempotency: sled::Tree,
    secrets: sled::Tree,
    writer: writer::Writer,
    /// Idempotency keys whose first request is being answered (see [`Store::begin_job`]).
    in_flight: jobs::InFlight,
    /// Deliveries the worker is sending.
    claims: deliveries::Claims,
    /// Subscriptions by id and callback secrets by tenant, as last read (see `cache`).
    subscription_cache: cache::ReadCache<Subscription>,
    secret_cache: cache::ReadCache<SecretSet>,
    /// Entries of the two queues, for metrics (see `counts`).
    counts: counts::QueueCounts,
    /// The database's directory (probed when sled refuses writes, see `retention`).
    path: std::path::PathBuf,
    /// Reads running on the blocking pool at once (see `api`).
    readers: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Open (or create) the database at `path`, with at most `cache_bytes` of page cache.
    /// Records of an earlier layout are brought up to date first (`deliveries::upgrade_layout`).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let trees = writer::Trees {
            jobs: db.open_tree("jobs")?,
            deliveries: db.open_tree("deliveries")?,
            events: db.open_tree("events")?,
            subscriptions: db.open_tree("subscriptions")?,
            index: db.open_tree("index")?,
            due: db.open_tree("due")?,
            queue: db.open_tree("queue")?,
            idempotency: db.open_tree("idempotency")?,
            secrets: db.open_tree("secrets")?,
        };
        deliveries::upgrade_layout(&db, &trees)?;
        let counts = counts::QueueCounts::open(&trees.due, &trees.queue)?;
        Ok(SledStore {
            jobs: trees.jobs.clone(),
            deliveries: trees.deliveries.clone(),
            events: trees.events.clone(),
            subscriptions: trees.subscriptions.clone(),
            index: trees.index.clone(),
            due: trees.due.clone(),
            queue: trees.queue.clone(),
            idempotency: trees.idempotency.clone(),
            secrets: trees.secrets.clone(),
            writer: writer::Writer::start(db.clone(), trees, counts.clone()),
            counts,
            readers: std::sync::Arc::new(tokio::sync::Semaphore::new(api::READERS)),
            in_flight: jobs::InFlight::default(),
            claims: deliveries::Claims::default(),
            subscription_cache: cache::ReadCache::default(),
            secret_cache: cache::ReadCache::default(),
            path: path.to_path_buf(),
            db,
        })
    }

    /// Flush synchronously (tests that write around the writer).
    #[cfg(test)]
    pub fn flush_now(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// A cheap liveness check of the database.
    pub fn is_healthy(&self) -> bool {
        self.db.contains_key(b"__probe").is_ok()
    }
}

/// The entries of a time-ordered queue (`kind | millis | id`, see [`keys::timed`]) due at or
/// before `now`, earliest first.
fn due_entries(tree: &sled::Tree, kind: u8, now: crate::clock::Timestamp) -> sled::Iter {
    let start = [kind];
    let end = keys::timed_upper(kind, now);
    tree.range(start.as_slice()..end.as_slice())
}

/// The bytes a delivery's record takes in the store when it is stored alone (the record of an
/// event's only delivery holds the event's body): for capacity planning and the delivery
/// benchmark's storage floor.
pub fn delivery_record_len(delivery: &crate::domain::Delivery) -> usize {
    record::encode_new(std::slice::from_ref(delivery))[0].len()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("domain records always serialise")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// For use inside transactions, where errors must be wrapped as aborts.
fn decode_tx<T: DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, ConflictableTransactionError<StoreError>> {
    decode(bytes).map_err(ConflictableTransactionError::Abort)
}

fn tx_result<T>(result: std::result::Result<T, TransactionError<StoreError>>) -> Result<T> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::from(e),
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::SledStore;

    /// A store in a fresh temporary directory, kept alive by the returned guard.
    pub fn temp_store() -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), 8 * 1024 * 1024).expect("open store");
        (store, dir)
    }

    /// Open the store at `path` once the one before let go of the directory's lock (its
    /// writer thread ends a little after it is dropped); any other error is returned.
    pub fn open_when_free(path: &std::path::Path) -> super::Result<SledStore> {
        for _ in 0..200 {
            match SledStore::open(path, 8 * 1024 * 1024) {
                Err(e) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other,
            }
        }
        panic!("the store stayed locked");
    }

    /// [`open_when_free`], which must succeed.
    pub fn reopen(path: &std::path::Path) -> SledStore {
        open_when_free(path).expect("reopen the store")
    }
}
