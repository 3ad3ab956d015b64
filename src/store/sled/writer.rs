//! The writer thread: group commit for every write of the store; each is answered only once it
//! is durable. Written outside it: what opening the store does before the writer starts (the
//! one-time layout upgrade, and the first count of the queues in a directory written before
//! counts were kept, `counts`); moving a first-layout record's event body out when it is
//! claimed (`deliveries::move_bodies_out`), which changes no record's meaning; and agenthook's
//! webhook registration with bitHuman, written once at start in a tree of its own and flushed
//! (`upstream_webhook`).
//!
//! sled 0.34 makes each transaction expensive on its own: it seals the log buffer before and
//! after (two disk writes), and it takes sled's global lock exclusively, which a flush holds
//! shared through its whole write and fsync. Transactions made on many threads therefore queue
//! behind each other and behind every flush, and each costs its own I/O.
//!
//! Here one thread does all of it, in rounds: take the requests queued while the previous
//! round ran, up to [`ROUND_ROWS`] rows (small writes such as an attempt's record ahead of bulk
//! ones such as a completion's fan-out, see [`RoundOf::fill`]); run every write of the round
//! inside ONE transaction; flush once; answer everyone. A round's writes never overlap a flush,
//! and under load one transaction and one fsync carry dozens of requests. Requests of one
//! caller keep their order (a caller waits for each answer before it writes again).
//!
//! A write is a closure over [`Tx`] that sled may run more than once (on a conflict with a
//! transaction made elsewhere), so it must only read and write through `tx`. It returns its
//! answer. If a write aborts, the round's transaction is dropped and every write of the round
//! is run again in a transaction of its own, so one bad write cannot take others down with it
//! or leave half of itself behind.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::oneshot;

use super::counts::{Deltas, QueueCounts};
use super::{tx_result, Result, StoreError};

pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// Every tree of the store, inside one transaction (offered whether or not a write uses it).
#[allow(dead_code)]
pub(crate) struct Tx<'a> {
    pub jobs: &'a TransactionalTree,
    pub deliveries: &'a TransactionalTree,
    pub events: &'a TransactionalTree,
    pub subscriptions: &'a TransactionalTree,
    pub index: &'a TransactionalTree,
    pub due: &'a TransactionalTree,
    pub queue: &'a TransactionalTree,
    pub idempotency: &'a TransactionalTree,
    pub secrets: &'a TransactionalTree,
    /// What this transaction did to the queues (`due`, `queue`), counted once it commits.
    deltas: &'a RefCell<Deltas>,
}

impl Tx<'_> {
    /// Queue a job (`due`), counted; `value` says whether a claim holds it (see
    /// `jobs::LEASED`).
    pub fn put_due(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        let old = self.due.insert(key, value)?;
        self.deltas.borrow_mut().inserted(key, old.is_some());
        Ok(())
    }

    /// Take a job's entry out of `due`, counted.
    pub fn remove_due(&self, key: &[u8]) -> TxResult<()> {
        let old = self.due.remove(key)?;
        self.deltas.borrow_mut().removed(key, old.is_some());
        Ok(())
    }

    /// Queue a delivery (`queue`), counted; `value` names its destination.
    pub fn put_queued(&self, key: &[u8], value: &[u8]) -> TxResult<()> {
        let old = self.queue.insert(key, value)?;
        self.deltas.borrow_mut().inserted(key, old.is_some());
        Ok(())
    }

    /// Take a delivery's entry out of `queue`, counted.
    pub fn remove_queued(&self, key: &[u8]) -> TxResult<()> {
        let old = self.queue.remove(key)?;
        self.deltas.borrow_mut().removed(key, old.is_some());
        Ok(())
    }
}

/// The trees, in the order [`Tx`] names them.
#[derive(Clone)]
pub(crate) struct Trees {
    pub jobs: sled::Tree,
    pub deliveries: sled::Tree,
    pub events: sled::Tree,
    pub subscriptions: sled::Tree,
    pub index: sled::Tree,
    pub due: sled::Tree,
    pub queue: sled::Tree,
    pub idempotency: sled::Tree,
    pub secrets: sled::Tree,
}

impl Trees {
    /// Run `f` in one transaction over every tree; answers with what it did to the queues.
    fn transaction<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<(T, Deltas)> {
        let all = (
            &self.jobs,
            &self.deliveries,
            &self.events,
            &self.subscriptions,
            &self.index,
            &self.due,
            &self.queue,
            &self.idempotency,
            &self.secrets,
        );
        tx_result(all.transaction(
            |(jobs, deliveries, events, subscriptions, index, due, queue, idem, secrets)| {
                let deltas = RefCell::new(Deltas::default());
                let value = f(&Tx {
                    jobs,
                    deliveries,
                    events,
                    subscriptions,
                    index,
                    due,
                    queue,
                    idempotency: idem,
                    secrets,
                    deltas: &deltas,
                })?;
                let deltas = deltas.into_inner();
                deltas.persist(due, queue)?;
                Ok((value, deltas))
            },
        ))
    }
}

/// A write waiting for its round, with its caller's answer slot.
trait Pending: Send {
    /// Run the write; keep its answer for [`Pending::answer`].
    fn apply(&self, tx: &Tx<'_>) -> TxResult<()>;
    /// Hand the kept answer over, or `error` if the round failed.
    fn answer(self: Box<Self>, error: Option<StoreError>);
    /// About how many rows it writes (see [`ROUND_ROWS`]).
    fn rows(&self) -> usize;
}

struct Write<T, F> {
    write: F,
    rows: usize,
    result: RefCell<Option<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Pending for Write<T, F>
where
    T: Send,
    F: Fn(&Tx<'_>) -> TxResult<T> + Send,
{
    fn apply(&self, tx: &Tx<'_>) -> TxResult<()> {
        let value = (self.write)(tx)?;
        *self.result.borrow_mut() = Some(value);
        Ok(())
    }

    fn answer(self: Box<Self>, error: Option<StoreError>) {
        let Write {
            write,
            result,
            reply,
            ..
        } = *self;
        // What the write holds (a delivery's claim, say) is let go before its caller hears back.
        drop(write);
        let outcome = match (error, result.into_inner()) {
            (Some(error), _) => Err(error),
            (None, Some(value)) => Ok(value),
            (None, None) => Err(StoreError::Corrupt("a write was never run".into())),
        };
        let _ = reply.send(outcome);
    }

    fn rows(&self) -> usize {
        self.rows
    }
}

enum Request {
    /// Answer once everything written before is on disk.
    Flush(oneshot::Sender<Result<()>>),
    Write(Box<dyn Pending>),
}

impl Request {
    /// The rows it writes, as its caller declared them (at least one).
    fn rows(&self) -> usize {
        match self {
            Request::Flush(_) => 0,
            Request::Write(write) => write.rows(),
        }
    }
}

/// The requests of one round.
#[derive(Default)]
struct RoundOf {
    flushes: Vec<oneshot::Sender<Result<()>>>,
    writes: Vec<Box<dyn Pending>>,
    rows: usize,
}

impl RoundOf {
    /// Fill the round from `waiting` (in arrival order). Small writes (an attempt's record, a
    /// job's save) go first, up to half the round, ahead of bulk writes that came before them:
    /// a burst of completions then never holds up the attempts recorded meanwhile. The rest
    /// goes in arrival order while it fits. A flush is never taken ahead of a write that came
    /// before it (it answers once everything written before it is on disk).
    fn fill(waiting: &mut VecDeque<Request>) -> RoundOf {
        let mut round = RoundOf::default();
        let barrier = waiting
            .iter()
            .position(|r| matches!(r, Request::Flush(_)))
            .unwrap_or(waiting.len());
        let (mut i, mut end) = (0, barrier);
        while i < end && round.rows < ROUND_ROWS / 2 {
            if waiting[i].rows() == 1 {
                round.take(waiting.remove(i).expect("in range"));
                end -= 1;
            } else {
                i += 1;
            }
        }
        while let Some(next) = waiting.front() {
            let fits = round.rows + next.rows() <= ROUND_ROWS;
            if !fits && !round.is_empty() {
                break;
            }
            round.take(waiting.pop_front().expect("a front"));
        }
        round
    }

    fn is_empty(&self) -> bool {
        self.flushes.is_empty() && self.writes.is_empty()
    }

    fn take(&mut self, request: Request) {
        self.rows += request.rows();
        match request {
            Request::Flush(reply) => self.flushes.push(reply),
            Request::Write(write) => self.writes.push(write),
        }
    }
}

/// Rows written in one round at most (a request counts as the rows it declares, at least
/// one): a sled transaction keeps every write it makes in memory until it commits, and nothing
/// else is written meanwhile, so a burst (a poller round that completes dozens of jobs with a
/// hundred deliveries each, or saves 1,000 jobs) goes in several rounds, and the attempts
/// recorded meanwhile get theirs in between instead of waiting behind the whole burst.
const ROUND_ROWS: usize = 512;

#[derive(Clone)]
pub(crate) struct Writer {
    requests: mpsc::Sender<Request>,
}

impl Writer {
    /// Start the writer thread. It stops when the last handle is dropped.
    pub fn start(db: sled::Db, trees: Trees, counts: QueueCounts) -> Self {
        let (requests, inbox) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("agenthook-writer".into())
            .spawn(move || {
                // Requests taken from the inbox and not yet in a round, in arrival order.
                let mut waiting: VecDeque<Request> = VecDeque::new();
                loop {
                    if waiting.is_empty() {
                        match inbox.recv() {
                            Ok(request) => waiting.push_back(request),
                            Err(_) => return,
                        }
                    }
                    waiting.extend(inbox.try_iter());
                    if waiting.len() < ROUND_ROWS {
                        // Whoever is about to ask (a thread waiting for this core) joins
                        // this round.
                        thread::yield_now();
                        waiting.extend(inbox.try_iter());
                    }
                    let round_of = RoundOf::fill(&mut waiting);
                    round(&db, &trees, &counts, round_of.flushes, round_of.writes);
                }
            })
            .expect("spawn the storage writer thread");
        Writer { requests }
    }

    /// Wait until every write made before this call is on disk.
    pub async fn flush(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Flush(reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Run `write` in the next round and answer once it is on disk.
    pub async fn write<T, F>(&self, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>) -> TxResult<T> + Send + 'static,
    {
        self.write_rows(1, write).await
    }

    /// [`Writer::write`] for a write of about `rows` records (a completion's deliveries, a
    /// batch of jobs), so that rounds stay small.
    pub async fn write_rows<T, F>(&self, rows: usize, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Tx<'_>) -> TxResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let pending = Write {
            write,
            rows: rows.max(1),
            result: RefCell::new(None),
            reply,
        };
        self.requests
            .send(Request::Write(Box::new(pending)))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn round(
    db: &sled::Db,
    trees: &Trees,
    counts: &QueueCounts,
    flushes: Vec<oneshot::Sender<Result<()>>>,
    writes: Vec<Box<dyn Pending>>,
) {
    let mut failed: Vec<Option<StoreError>> = Vec::new();
    if !writes.is_empty() {
        let together = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            trees.transaction(|tx| writes.iter().try_for_each(|w| w.apply(tx)))
        }));
        failed = match together {
            Ok(Ok(((), deltas))) => {
                counts.apply(deltas);
                writes.iter().map(|_| None).collect()
            }
            // One at a time, so only the write at fault fails.
            _ => writes
                .iter()
                .map(|w| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        trees.transaction(|tx| w.apply(tx))
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!("a storage write panicked");
                        Err(StoreError::Corrupt("the write panicked".into()))
                    })
                    .map(|((), deltas)| counts.apply(deltas))
                    .err()
                })
                .collect(),
        };
    }
    let flushed = db
        .flush()
        .map(|_| ())
        .map_err(|e| match StoreError::from(e) {
            StoreError::Unavailable(message) | StoreError::Corrupt(message) => message,
        });
    for reply in flushes {
        let _ = reply.send(flushed.clone().map_err(flush_failed));
    }
    for (write, error) in writes.into_iter().zip(failed) {
        let error = error.or_else(|| flushed.clone().err().map(flush_failed));
        write.answer(error);
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the storage writer has stopped".into())
}

fn flush_failed(error: String) -> StoreError {
    StoreError::Unavailable(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::test_support::temp_store;

    /// A write of `rows` rows that writes nothing, for the round's arithmetic.
    fn write_of(rows: usize) -> Request {
        let (reply, _) = oneshot::channel::<Result<()>>();
        Request::Write(Box::new(Write {
            write: |_: &Tx<'_>| Ok(()),
            rows,
            result: RefCell::new(None),
            reply,
        }))
    }

    fn flush_request() -> Request {
        Request::Flush(oneshot::channel().0)
    }

    fn rows_of(round: &RoundOf) -> Vec<usize> {
        round.writes.iter().map(|w| w.rows()).collect()
    }

    #[test]
    fn small_writes_go_ahead_of_a_burst_and_a_round_stays_within_its_rows() {
        let mut waiting: VecDeque<Request> = [
            write_of(300),
            write_of(1),
            write_of(1),
            write_of(300),
            write_of(1),
        ]
        .into_iter()
        .collect();
        let first = RoundOf::fill(&mut waiting);
        assert_eq!(rows_of(&first), [1, 1, 1, 300], "the small ones first");
        assert_eq!(first.rows, 303);
        let second = RoundOf::fill(&mut waiting);
        assert_eq!(rows_of(&second), [300]);
        assert!(waiting.is_empty());

        // A write larger than a round goes alone.
        let mut waiting: VecDeque<Request> = [write_of(2_000), write_of(5)].into_iter().collect();
        assert_eq!(rows_of(&RoundOf::fill(&mut waiting)), [2_000]);
    }

    #[test]
    fn a_flush_never_goes_ahead_of_a_write_that_came_before_it() {
        let mut waiting: VecDeque<Request> =
            [write_of(400), write_of(400), flush_request(), write_of(1)]
                .into_iter()
                .collect();
        let first = RoundOf::fill(&mut waiting);
        assert_eq!(rows_of(&first), [400]);
        assert!(first.flushes.is_empty(), "the second write is not in yet");
        let second = RoundOf::fill(&mut waiting);
        assert_eq!(rows_of(&second), [400, 1]);
        assert_eq!(second.flushes.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_rounds_and_each_gets_its_own_answer() {
        let (store, _dir) = temp_store();
        let writes = (0..200u32).map(|i| {
            let writer = store.writer.clone();
            tokio::spawn(async move {
                writer
                    .write(move |tx| {
                        tx.secrets
                            .insert(format!("k{i:03}").as_bytes(), &i.to_be_bytes())?;
                        Ok(i * 2)
                    })
                    .await
            })
        });
        let answers: Vec<u32> = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(answers, (0..200).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(store.secrets.len(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_write_holds_is_released_before_its_caller_hears_back() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        struct Held(Arc<AtomicBool>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (store, _dir) = temp_store();
        for _ in 0..50 {
            let released = Arc::new(AtomicBool::new(false));
            let held = Held(released.clone());
            store
                .writer
                .write(move |_tx| {
                    let _ = &held;
                    Ok(())
                })
                .await
                .unwrap();
            assert!(
                released.load(Ordering::SeqCst),
                "still held after the answer"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_aborts_fails_alone_and_leaves_nothing_behind() {
        let (store, _dir) = temp_store();
        let writes = (0..50u32).map(|i| {
            let writer = store.writer.clone();
            tokio::spawn(async move {
                writer
                    .write(move |tx| {
                        tx.secrets.insert(format!("k{i:02}").as_bytes(), &[1])?;
                        if i == 7 {
                            // Half-written, then refused: none of it may stay.
                            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
                                "refused".into(),
                            )));
                        }
                        Ok(i)
                    })
                    .await
            })
        });
        let results: Vec<_> = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_err(), i == 7, "write {i}: {result:?}");
        }
        assert_eq!(store.secrets.len(), 49);
        assert!(store.secrets.get("k07").unwrap().is_none());
    }
}
