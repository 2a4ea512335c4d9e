//! Group commit: many concurrent writers, one durable transaction.
//!
//! A durable commit costs an fsync, and fsyncs are the write path's budget.
//! Writers queue their ops; one committer thread takes everything that queued
//! up while the previous commit was on disk and commits it as one batch. Under
//! load the batch grows and the cost per op falls; with one writer the batch
//! is one op and nothing waits for a timer.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

use crate::record::{Applied, Op, OpError, OpKind};
use crate::store::Store;

/// Limits on one batch, so one commit never holds a huge transaction.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_ops: usize,
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_ops: 1024,
            max_bytes: 16 << 20,
        }
    }
}

/// Why a write was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The op was refused; nothing changed.
    #[error(transparent)]
    Rejected(#[from] OpError),
    /// The batch's transaction failed; nothing in it was committed.
    #[error("commit failed: {0}")]
    Storage(String),
    /// The node is shutting down and accepts no more writes.
    #[error("the node is shutting down")]
    Closed,
}

struct PendingWrite {
    op: Op,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// The handle writers submit to. Clone it freely; when the last clone is
/// dropped the committer finishes the queued ops and its thread exits.
#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<PendingWrite>,
}

impl WriteQueue {
    /// Starts the committer thread. Join the handle after dropping every
    /// `WriteQueue` clone to wait until all accepted writes are answered.
    pub fn start(
        store: Arc<Store>,
        limits: BatchLimits,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(limits.max_ops.max(1) * 4);
        let handle = std::thread::Builder::new()
            .name("pika-committer".into())
            .spawn(move || run(&store, rx, limits))?;
        Ok((Self { tx }, handle))
    }

    /// Queues an op and waits until it is durably committed or refused.
    pub async fn submit(&self, op: Op) -> Result<Applied, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(PendingWrite { op, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.unwrap_or(Err(WriteError::Closed))
    }
}

fn run(store: &Store, mut rx: mpsc::Receiver<PendingWrite>, limits: BatchLimits) {
    let mut batch: Vec<PendingWrite> = Vec::with_capacity(limits.max_ops);
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = op_size(&first.op);
        batch.push(first);
        while batch.len() < limits.max_ops && bytes < limits.max_bytes {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += op_size(&next.op);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        commit(store, &mut batch);
    }
    tracing::debug!("write queue closed; committer exits");
}

fn commit(store: &Store, batch: &mut Vec<PendingWrite>) {
    let (ops, replies): (Vec<Op>, Vec<_>) = batch.drain(..).map(|p| (p.op, p.reply)).unzip();
    let started = Instant::now();
    // Standalone writes belong to epoch 0; leader terms start at 1.
    let outcome = store.execute(&ops, 0, now_ms());
    metrics::histogram!("pika_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("pika_commit_batch_ops").record(ops.len() as f64);
    match outcome {
        Ok(results) => {
            metrics::gauge!("pika_revision").set(store.revision() as f64);
            for (reply, result) in replies.into_iter().zip(results) {
                // A writer that gave up waiting is not an error of the commit.
                let _ = reply.send(result.map_err(WriteError::from));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, ops = ops.len(), "batch commit failed; no op in it was applied");
            metrics::counter!("pika_commit_failures_total").increment(1);
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(WriteError::Storage(message.clone())));
            }
        }
    }
}

fn op_size(op: &Op) -> usize {
    let data = match &op.kind {
        OpKind::Put { data, .. } => data.len(),
        OpKind::Delete => 0,
    };
    op.path.as_str().len() + data
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigPath, Format, Meta};

    fn op(i: usize) -> Op {
        let meta = Meta {
            format: Format::Text,
            description: String::new(),
        };
        Op::put(
            ConfigPath::new(format!("k/{i}")).unwrap(),
            meta,
            b"v".to_vec(),
            None,
        )
        .unwrap()
    }

    /// Ops that queued up while the committer was busy go into one transaction.
    #[test]
    fn queued_ops_commit_as_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 20).unwrap();
        let (tx, rx) = mpsc::channel(256);
        let mut answers = Vec::new();
        for i in 0..100 {
            let (reply, answer) = oneshot::channel();
            tx.try_send(PendingWrite { op: op(i), reply }).unwrap();
            answers.push(answer);
        }
        drop(tx);
        run(
            &store,
            rx,
            BatchLimits {
                max_ops: 64,
                max_bytes: 1 << 20,
            },
        );
        let revisions: Vec<u64> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap().unwrap().revision)
            .collect();
        assert_eq!(revisions, (1..=100).collect::<Vec<_>>());
        // 100 ops under a 64-op limit: two transactions, one revision per op.
        assert_eq!(store.revision(), 100);
        assert_eq!(store.commits(), 2);
    }

    #[tokio::test]
    async fn dropping_every_handle_drains_and_stops_the_committer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 20).unwrap());
        let (queue, handle) = WriteQueue::start(store.clone(), BatchLimits::default()).unwrap();
        assert_eq!(queue.submit(op(1)).await.unwrap().revision, 1);
        let clone = queue.clone();
        drop(queue);
        drop(clone);
        handle.join().unwrap();
        assert_eq!(store.revision(), 1);
    }
}
