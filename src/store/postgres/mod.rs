//! The shared backend: PostgreSQL, any number of instances on one database.
//!
//! Tables (see `migrations/`): `jobs`, `events` (an event's body once for all its deliveries),
//! `deliveries`, `idempotency`, `subscriptions`, `secrets`. Records are the domain types as
//! JSON; the columns beside them are what the queries select and order on.
//!
//! How the promises of [`Storage`](crate::store::Storage) hold with several writers:
//! - Claims of due jobs and deliveries are one `UPDATE ... FROM (SELECT ... FOR UPDATE SKIP
//!   LOCKED)`: concurrent claimers skip each other's rows. A claim sets a lease and a fresh
//!   claim token; every later write of that claim carries the token in its `WHERE`, so an
//!   instance whose lease ran out (and whose work the next owner took) writes nothing.
//! - A claimed delivery is recorded with one `UPDATE` when its row is still the version claimed
//!   (one round trip per attempt); otherwise the stored row is read under a row lock and
//!   changed.
//! - A released claim (a dropped lease, a put-back) is written by a background task and, before
//!   any claim of this instance, by the claim itself: this instance sees its own releases at
//!   once, the others within milliseconds (or when the lease ends, should the instance die).
//! - The outbox (`complete_job`) is one transaction.
//! - An `Idempotency-Key` is held by inserting its row (`ON CONFLICT DO NOTHING`) in
//!   `begin_job`: a concurrent request with it on any instance sees it in flight. A hold whose
//!   holder died ends after [`KEY_HOLD`], and the key is then taken by the next request.
//! - Counts for `/metrics` are `count(*)` over the partial indexes of what is queued (pending
//!   jobs, queued deliveries): the cost follows the backlog, never history, and no counter row
//!   serialises every write of every instance (a counts table updated in each transaction
//!   would make all instances queue on one row lock).
//! - Nothing is cached in memory: a change to a subscription or a secret is seen by every
//!   instance at its next read.
//! - Writes that queue work `NOTIFY agenthook_wake` in their transaction; each instance
//!   `LISTEN`s and wakes its workers (see [`PgStore::watch_wakeups`]).

mod api;
mod deliveries;
mod import;
mod jobs;
mod push;
mod retention;
mod subscriptions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Result, StoreError, Wakeup};
use crate::clock::Timestamp;
use crate::domain::JobId;

/// The channel every instance listens on: payload `d` (deliveries queued) or `j` (jobs due).
pub const WAKE_CHANNEL: &str = "agenthook_wake";

/// How long a request admitting a job holds its `Idempotency-Key` at most: a holder that died
/// (its instance killed mid-request) lets go of the key after this.
pub const KEY_HOLD: Duration = Duration::from_secs(120);

/// The versioned migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(error.to_string())
            }
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// A claim or key hold given back, written by [`PgStore::flush_releases`].
#[derive(Debug)]
enum Release {
    /// A delivery's claim ends; it may be claimed again at `at` (millis; `None`: at once).
    Delivery {
        id: String,
        token: i64,
        at: Option<i64>,
    },
    /// An idempotency key held by a request that stored nothing is free again.
    Key {
        tenant: String,
        key: String,
        token: i64,
    },
}

#[derive(Debug, Default)]
struct Shared {
    /// Releases not yet written.
    releases: Mutex<Vec<Release>>,
    /// Taken while releases are written, so a claim waits for a flush in progress.
    flushing: tokio::sync::Mutex<()>,
    /// The claim tokens of the jobs this instance claimed, by job id.
    job_claims: Mutex<HashMap<JobId, i64>>,
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// How long a claimed delivery is held before another instance may take it over.
    delivery_lease: Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the epoch.
pub(crate) fn millis(at: Timestamp) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A fresh claim token.
fn token() -> i64 {
    rand::random::<i64>()
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain records always serialise")
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The name a serde enum is stored under (its JSON string).
fn name_of<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

impl PgStore {
    /// A pool for `url` that connects when first used: nothing is checked here (see
    /// [`PgStore::prepare`]). Needs a tokio runtime.
    pub fn open(url: &str, max_connections: u32, delivery_lease: Duration) -> Result<PgStore> {
        let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
            StoreError::Unavailable(format!(
                "storage.postgres.url ({}): {}",
                crate::config::redact_url(url),
                redact_error(&e.to_string(), url)
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(PgStore {
            pool,
            delivery_lease,
            shared: Arc::default(),
        })
    }

    /// Connect and apply the migrations not applied yet (under sqlx's advisory lock: several
    /// instances may start at once).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Queue a release and write it in the background (and before this instance's next claim).
    fn release(&self, release: Release) {
        lock(&self.shared.releases).push(release);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            handle.spawn(async move {
                if let Err(error) = store.flush_releases().await {
                    tracing::warn!(%error, "releasing claims failed; their leases end by themselves");
                }
            });
        }
    }

    /// Write the releases queued so far.
    async fn flush_releases(&self) -> Result<()> {
        let _flushing = self.shared.flushing.lock().await;
        let releases = std::mem::take(&mut *lock(&self.shared.releases));
        if releases.is_empty() {
            return Ok(());
        }
        let (mut ids, mut tokens, mut ats) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tenants, mut keys, mut key_tokens) = (Vec::new(), Vec::new(), Vec::new());
        for release in &releases {
            match release {
                Release::Delivery { id, token, at } => {
                    ids.push(id.clone());
                    tokens.push(*token);
                    ats.push(*at);
                }
                Release::Key { tenant, key, token } => {
                    tenants.push(tenant.clone());
                    keys.push(key.clone());
                    key_tokens.push(*token);
                }
            }
        }
        let written = async {
            if !ids.is_empty() {
                sqlx::query(
                    "UPDATE deliveries d SET claim_token = NULL, lease_until = u.at \
                     FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(id, token, at) \
                     WHERE d.id = u.id AND d.claim_token = u.token",
                )
                .bind(&ids)
                .bind(&tokens)
                .bind(&ats)
                .execute(&self.pool)
                .await?;
            }
            if !keys.is_empty() {
                sqlx::query(
                    "DELETE FROM idempotency i \
                     USING unnest($1::text[], $2::text[], $3::bigint[]) AS u(tenant, key, token) \
                     WHERE i.tenant = u.tenant AND i.key = u.key AND i.hold_token = u.token",
                )
                .bind(&tenants)
                .bind(&keys)
                .bind(&key_tokens)
                .execute(&self.pool)
                .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if let Err(error) = written {
            // Kept for the next try; the leases end by themselves meanwhile.
            lock(&self.shared.releases).extend(releases);
            return Err(error.into());
        }
        Ok(())
    }

    /// Listen for work written by any instance and call `wake` for each notice; every
    /// `fallback` without a notice too (a retry another instance scheduled is due by then, and
    /// a lost connection loses no work). Runs until the runtime ends; reconnects by itself.
    pub fn watch_wakeups(&self, wake: Arc<dyn Fn(Wakeup) + Send + Sync>, fallback: Duration) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::debug!(%error, "LISTEN: no connection; trying again");
                        tokio::time::sleep(fallback).await;
                        wake(Wakeup::Deliveries);
                        wake(Wakeup::Jobs);
                        continue;
                    }
                };
                if let Err(error) = listener.listen(WAKE_CHANNEL).await {
                    tracing::debug!(%error, "LISTEN failed; trying again");
                    tokio::time::sleep(fallback).await;
                    continue;
                }
                loop {
                    match tokio::time::timeout(fallback, listener.try_recv()).await {
                        Ok(Ok(Some(notice))) => match notice.payload() {
                            "j" => wake(Wakeup::Jobs),
                            _ => wake(Wakeup::Deliveries),
                        },
                        // The connection was lost (and is re-established): work may have been
                        // written meanwhile.
                        Ok(Ok(None)) => {
                            wake(Wakeup::Deliveries);
                            wake(Wakeup::Jobs);
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "LISTEN connection failed");
                            break;
                        }
                        Err(_) => {
                            wake(Wakeup::Deliveries);
                            wake(Wakeup::Jobs);
                        }
                    }
                }
            }
        });
    }
}

impl PgStore {
    /// The shared budgets' GCRA, one row per budget: `next_at` is when the next request is
    /// granted without burst; a grant at `now` is allowed while `next_at - burst_span <= now`
    /// and moves `next_at` one spacing on. Up to `want` grants in one statement, under the
    /// row's lock.
    pub async fn take_budget(
        &self,
        name: &str,
        now: Timestamp,
        spacing: Duration,
        burst: u32,
        want: u32,
    ) -> Result<u32> {
        // Microseconds: a spacing rounded to milliseconds would grant a little too fast.
        let spacing_us = (spacing.as_micros() as i64).max(1);
        let burst_span = spacing_us * (i64::from(burst.max(1)) - 1);
        let now_us = now.timestamp_micros();
        sqlx::query("INSERT INTO budgets (name, next_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(name)
            .bind(now_us)
            .execute(&self.pool)
            .await?;
        let granted: Option<i64> = sqlx::query_scalar(
            "WITH cur AS (SELECT GREATEST(next_at, $2) AS nx FROM budgets WHERE name = $1                           FOR UPDATE),              g AS (SELECT nx, CASE WHEN nx - $4 > $2 THEN 0                    ELSE LEAST($5, ($2 - (nx - $4)) / $3 + 1) END AS n FROM cur)              UPDATE budgets b SET next_at = g.nx + g.n * $3 FROM g WHERE b.name = $1              RETURNING g.n",
        )
        .bind(name)
        .bind(now_us)
        .bind(spacing_us)
        .bind(burst_span)
        .bind(i64::from(want))
        .fetch_optional(&self.pool)
        .await?;
        Ok(granted.unwrap_or(0).max(0) as u32)
    }
}

/// An error message with the URL's password taken out, should the driver repeat it.
fn redact_error(message: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message.to_owned(),
    }
}

/// `NOTIFY` the instances (delivered when the transaction commits).
async fn notify<'c, E>(executor: E, what: Wakeup) -> Result<()>
where
    E: sqlx::PgExecutor<'c>,
{
    let payload = match what {
        Wakeup::Deliveries => "d",
        Wakeup::Jobs => "j",
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(WAKE_CHANNEL)
        .bind(payload)
        .execute(executor)
        .await?;
    Ok(())
}
