//! Group commit: many callers waiting for durability share one fsync.

use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use super::{Result, StoreError};

type Waiter = oneshot::Sender<std::result::Result<(), String>>;

#[derive(Clone)]
pub struct GroupFlush {
    requests: mpsc::Sender<Waiter>,
}

impl GroupFlush {
    /// One thread flushes for everyone: it takes every waiter queued while the previous flush
    /// ran, flushes once, and answers them all. It stops when the last handle is dropped.
    pub fn start(db: sled::Db) -> Self {
        let (requests, inbox) = mpsc::channel::<Waiter>();
        thread::Builder::new()
            .name("agenthook-flush".into())
            .spawn(move || {
                while let Ok(first) = inbox.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(inbox.try_iter());
                    let outcome = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    for waiter in waiters {
                        let _ = waiter.send(outcome.clone());
                    }
                }
            })
            .expect("spawn flush thread");
        GroupFlush { requests }
    }

    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            StoreError::Sled(sled::Error::Unsupported(
                "the flush thread has stopped".into(),
            ))
        };
        self.requests.send(tx).map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e))))
    }
}
