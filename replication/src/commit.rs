//! Group commit: many concurrent writers, one durable transaction.
//!
//! A durable commit costs an fsync, and fsyncs are the write path's budget.
//! Writers queue their ops; one committer thread takes everything that queued
//! up while the previous commit was on disk and commits it as one batch. Under
//! load the batch grows and the cost per op falls; with one writer the batch
//! is one op and nothing waits for a timer.
//!
//! On a leader a batch does not wait on the disk (the proposal appends in
//! memory; the log's flush runs elsewhere), so a write that finds the
//! committer idle, nothing queued and nothing in flight runs its batch of
//! one on its own task: two thread hand-overs fewer on a write's way out
//! (to the committer thread, and from it to the peer writers) at low load.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};

mod recent;
use recent::RecentRequests;

use crate::record::{Applied, Fingerprint, Op, OpError, OpKind};
use crate::store::Store;

/// What a policy's [`CommitPolicy::execute`] decided: each op's result, and
/// the revision of the batch's last change (none when no op changed
/// anything).
pub type Decided = (Vec<Result<Applied, OpError>>, Option<u64>);

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
    /// No leader, no quorum, or leadership lost before the write was
    /// acknowledged (it may or may not take effect): retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// A reason the protocol core gives for taking no write now.
impl From<&'static str> for WriteError {
    fn from(why: &'static str) -> Self {
        WriteError::Unavailable(why.into())
    }
}

/// A writer's answer channel.
pub type Reply = oneshot::Sender<Result<Applied, WriteError>>;

struct PendingWrite {
    op: Op,
    request_id: Option<String>,
    reply: Reply,
}

/// What the committer asks of the node around each batch. Standalone nodes
/// write in epoch 0 straight into the store and answer at once; a leader
/// appends each batch to its log, ships it to its followers and answers
/// once it is committed.
pub trait CommitPolicy: Send + Sync + 'static {
    /// The epoch this batch is written in, or why no write is taken now.
    fn epoch(&self) -> Result<u64, WriteError>;
    /// Decides the batch's ops in order (each sees the ones before it) and
    /// writes the changes. An `Err` means no op in the batch took effect.
    fn execute(
        &self,
        store: &Store,
        ops: &[Op],
        epoch: u64,
        now_ms: u64,
    ) -> Result<Decided, WriteError>;
    /// The batch was executed. `waits_for` is the revision the answers
    /// depend on (none when no op changed anything).
    fn committed(
        &self,
        epoch: u64,
        waits_for: Option<u64>,
        answers: Vec<(Reply, Result<Applied, WriteError>)>,
    );
    /// The last revision the batch just executed was decided against. A
    /// refusal (409, 404) made against entries not committed yet must not
    /// be answered before they are: if they were dropped, the refusal was
    /// about a state that never existed.
    fn decided_through(&self, store: &Store) -> u64 {
        store.revision()
    }
    /// Called with a write in hand, before the batch is gathered: may block
    /// while earlier batches are still on their way, so that what arrives
    /// meanwhile leaves as one batch instead of many small ones.
    fn wait_for_room(&self) {}
    /// Request ids written in this epoch's log and not committed yet, with
    /// what they did and which write they were: a retry of one is answered
    /// with that, not applied again. Asked once per epoch.
    fn requests_in_flight(&self) -> Vec<(String, Applied, Fingerprint)> {
        Vec::new()
    }
    /// Whether a writer may run a batch of its one op on its own task, when
    /// the committer is idle and nothing is queued: true when a batch never
    /// waits on the disk (a leader's proposal appends in memory and queues
    /// its sends; its log flush runs elsewhere). A standalone commit syncs
    /// the store, so it stays on the committer's thread.
    fn proposes_in_memory(&self) -> bool {
        false
    }
    /// Whether no batch awaits its commit. A writer proposes its own op
    /// only then: with batches on their way, what arrives meanwhile should
    /// gather into the next one on the committer.
    fn nothing_in_flight(&self) -> bool {
        true
    }
}

/// Standalone: epoch 0, one durable store transaction per batch, answers as
/// soon as it is on disk.
pub struct Standalone;

impl CommitPolicy for Standalone {
    fn epoch(&self) -> Result<u64, WriteError> {
        Ok(0)
    }
    fn execute(
        &self,
        store: &Store,
        ops: &[Op],
        epoch: u64,
        now_ms: u64,
    ) -> Result<Decided, WriteError> {
        store
            .execute_then(ops, epoch, now_ms, |_| {})
            .map(|(results, changes)| (results, changes.last().map(|c| c.revision)))
            .map_err(|e| WriteError::Storage(e.to_string()))
    }
    fn committed(
        &self,
        _: u64,
        _: Option<u64>,
        answers: Vec<(Reply, Result<Applied, WriteError>)>,
    ) {
        for (reply, result) in answers {
            // A writer that gave up waiting is not an error of the commit.
            let _ = reply.send(result);
        }
    }
}

/// The handle writers submit to. Clone it freely; when the last clone is
/// dropped the committer finishes the queued ops and its thread exits.
#[derive(Clone)]
pub struct WriteQueue {
    tx: mpsc::Sender<PendingWrite>,
    committer: Arc<Committer>,
}

/// What the committer thread and a writer proposing its own op share.
struct Committer {
    store: Arc<Store>,
    policy: Arc<dyn CommitPolicy>,
    /// Held for a whole batch, by whoever runs it: one batch at a time, in
    /// the order they take it.
    recent: std::sync::Mutex<RecentRequests>,
}

impl Committer {
    fn new(store: Arc<Store>, policy: Arc<dyn CommitPolicy>) -> Self {
        Self {
            store,
            policy,
            recent: std::sync::Mutex::new(RecentRequests::new(16 * 1024)),
        }
    }
}

impl WriteQueue {
    /// Starts the committer thread. Join the handle after dropping every
    /// `WriteQueue` clone to wait until all accepted writes are answered.
    pub fn start(
        store: Arc<Store>,
        limits: BatchLimits,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        Self::start_with(store, limits, Arc::new(Standalone))
    }

    /// Like [`WriteQueue::start`], with the given commit policy.
    pub fn start_with(
        store: Arc<Store>,
        limits: BatchLimits,
        policy: Arc<dyn CommitPolicy>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(limits.max_ops.max(1) * 4);
        let committer = Arc::new(Committer::new(store, policy));
        let on_thread = committer.clone();
        let handle = std::thread::Builder::new()
            .name("pika-committer".into())
            .spawn(move || run(&on_thread, rx, limits))?;
        Ok((Self { tx, committer }, handle))
    }

    /// Queues an op and waits until it is durably committed or refused.
    pub async fn submit(&self, op: Op) -> Result<Applied, WriteError> {
        self.submit_once(op, None).await
    }

    /// Like [`WriteQueue::submit`]; an op whose `request_id` was applied
    /// recently gets that result again instead of being applied twice.
    pub async fn submit_once(
        &self,
        op: Op,
        request_id: Option<String>,
    ) -> Result<Applied, WriteError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingWrite {
            op,
            request_id,
            reply,
        };
        if let Some(pending) = self.propose_here(pending) {
            self.tx
                .send(pending)
                .await
                .map_err(|_| WriteError::Closed)?;
        }
        answer.await.unwrap_or(Err(WriteError::Closed))
    }

    /// Runs a batch of this one op on the caller's task when nothing is
    /// queued, the committer is between batches and the policy proposes in
    /// memory; otherwise gives the op back for the queue. At one client
    /// this takes the hand-over to the committer thread, and the one from
    /// it to the peer writers, off every write. Under load the queue is
    /// rarely empty, and batches form on the committer as before. The
    /// batch takes the core's lock as the committer's would; a leader's
    /// steps hold it for microseconds (its syncs and applies run outside
    /// it), so the task does not stall its worker for long.
    fn propose_here(&self, pending: PendingWrite) -> Option<PendingWrite> {
        let committer = &*self.committer;
        if !committer.policy.proposes_in_memory() || self.tx.capacity() < self.tx.max_capacity() {
            return Some(pending);
        }
        let Ok(mut recent) = committer.recent.try_lock() else {
            return Some(pending);
        };
        if !committer.policy.nothing_in_flight() {
            return Some(pending);
        }
        let mut batch = vec![pending];
        commit(
            &committer.store,
            &mut batch,
            committer.policy.as_ref(),
            &mut recent,
        );
        None
    }
}

fn run(committer: &Committer, mut rx: mpsc::Receiver<PendingWrite>, limits: BatchLimits) {
    let policy = committer.policy.as_ref();
    let mut batch: Vec<PendingWrite> = Vec::with_capacity(limits.max_ops);
    while let Some(first) = rx.blocking_recv() {
        policy.wait_for_room();
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
        let mut recent = committer
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        commit(&committer.store, &mut batch, policy, &mut recent);
    }
    tracing::debug!("write queue closed; committer exits");
}

fn commit(
    store: &Store,
    batch: &mut Vec<PendingWrite>,
    policy: &dyn CommitPolicy,
    recent: &mut RecentRequests,
) {
    let epoch = match policy.epoch() {
        Ok(epoch) => epoch,
        Err(e) => {
            for pending in batch.drain(..) {
                let _ = pending.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    if recent.epoch != Some(epoch) {
        recent.begin_epoch(epoch, policy.requests_in_flight());
    }
    // Retries of applied requests are answered with the first result, once
    // whatever that result depends on is committed; the same id on a
    // different write is refused.
    let mut answers = Vec::new();
    let mut waits_for: Option<u64> = None;
    let mut fresh: Vec<PendingWrite> = Vec::with_capacity(batch.len());
    // Retries of the same id inside this batch, answered after it.
    let mut repeats = Vec::new();
    let mut in_batch: HashMap<String, Fingerprint> = HashMap::new();
    // This leader's memory first (it also holds refusals), then the
    // replicated record, which a previous leader may have written: one read
    // transaction for the whole batch.
    let unknown: Vec<&str> = batch
        .iter()
        .filter_map(|p| p.request_id.as_deref())
        .filter(|id| recent.get(id).is_none())
        .collect();
    let stored = stored_requests(store, &unknown);
    for pending in batch.drain(..) {
        let id = pending.request_id.as_deref();
        // A postcard copy of the op and a blake3 over it: only for ops with
        // an id, and once (the answer below finds it in `in_batch`).
        let fingerprint = match id {
            Some(_) => pending.op.fingerprint(),
            None => Fingerprint::default(),
        };
        let known = id.and_then(|id| {
            recent
                .get(id)
                .map(|(f, r)| (Some(*f), r.clone()))
                .or_else(|| stored.get(id).map(|(f, a)| (*f, Ok(*a))))
        });
        let reused = |id: &str| {
            Err(WriteError::Rejected(OpError::RequestIdReused {
                request_id: id.to_string(),
                path: pending.op.path.to_string(),
            }))
        };
        match (id, known) {
            (Some(id), Some((Some(first), _))) if first != fingerprint => {
                answers.push((pending.reply, reused(id)));
            }
            (_, Some((_, result))) => {
                if let Ok(applied) = &result {
                    waits_for = waits_for.max(Some(applied.revision));
                }
                answers.push((pending.reply, result.map_err(WriteError::from)));
            }
            (Some(id), None) => match in_batch.get(id) {
                Some(first) if *first != fingerprint => answers.push((pending.reply, reused(id))),
                Some(_) => repeats.push(pending),
                None => {
                    in_batch.insert(id.to_string(), fingerprint);
                    fresh.push(pending);
                }
            },
            (None, None) => fresh.push(pending),
        }
    }
    // The ops move into the batch (a put's value is not copied); their
    // replies stay here.
    let (ops, fresh): (Vec<Op>, Vec<(Option<String>, Reply)>) = fresh
        .into_iter()
        .map(|p| {
            let op = p.op.with_request_id(p.request_id.clone());
            (op, (p.request_id, p.reply))
        })
        .unzip();
    let started = Instant::now();
    let outcome = policy.execute(store, &ops, epoch, now_ms());
    metrics::histogram!("pika_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("pika_commit_batch_ops").record(ops.len() as f64);
    match outcome {
        Ok((results, last)) => {
            metrics::gauge!("pika_revision").set(store.revision() as f64);
            waits_for = waits_for.max(last);
            for (((id, reply), op), result) in fresh.into_iter().zip(&ops).zip(results) {
                if let Some(id) = id {
                    let fingerprint = in_batch
                        .get(&id)
                        .copied()
                        .unwrap_or_else(|| op.fingerprint());
                    recent.remember(id, fingerprint, result.clone());
                }
                answers.push((reply, result.map_err(WriteError::from)));
            }
            for pending in repeats {
                let result = pending
                    .request_id
                    .as_deref()
                    .and_then(|id| recent.get(id).map(|(_, r)| r.clone()))
                    .unwrap_or_else(|| Err(OpError::NotFound(pending.op.path.to_string())));
                answers.push((pending.reply, result.map_err(WriteError::from)));
            }
            recent.forget_applied(store.revision());
        }
        Err(e) => {
            tracing::error!(error = %e, ops = ops.len(), "batch failed; no op in it was applied");
            metrics::counter!("pika_commit_failures_total").increment(1);
            let replies = fresh
                .into_iter()
                .map(|(_, reply)| reply)
                .chain(repeats.into_iter().map(|p| p.reply));
            for reply in replies {
                answers.push((reply, Err(e.clone())));
            }
        }
    }
    if answers
        .iter()
        .any(|(_, r)| matches!(r, Err(WriteError::Rejected(_))))
    {
        waits_for = waits_for.max(Some(policy.decided_through(store)));
    }
    policy.committed(epoch, waits_for, answers);
}

/// What the store remembers of these request ids: the change each made
/// (its fingerprint, when the history still has it) and its result.
fn stored_requests(store: &Store, ids: &[&str]) -> HashMap<String, (Option<Fingerprint>, Applied)> {
    let found = match store.applied_requests(ids) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "reading applied request ids; treating them as new");
            return HashMap::new();
        }
    };
    let revisions: Vec<u64> = found.iter().flatten().map(|a| a.revision).collect();
    // Almost every write carries a fresh id: no second read transaction
    // for those.
    let changes = if revisions.is_empty() {
        Vec::new()
    } else {
        store.changes_at(&revisions).unwrap_or_default()
    };
    let mut changes = changes.into_iter();
    ids.iter()
        .zip(found)
        .filter_map(|(id, applied)| {
            let applied = applied?;
            let change = changes.next().flatten();
            Some((id.to_string(), (change.map(|c| c.fingerprint()), applied)))
        })
        .collect()
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
            flags: 0,
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
        let store = Arc::new(Store::open(dir.path(), 20).unwrap());
        let (tx, rx) = mpsc::channel(256);
        let mut answers = Vec::new();
        for i in 0..100 {
            let (reply, answer) = oneshot::channel();
            tx.try_send(PendingWrite {
                op: op(i),
                request_id: None,
                reply,
            })
            .unwrap();
            answers.push(answer);
        }
        drop(tx);
        run(
            &Committer::new(store.clone(), Arc::new(Standalone)),
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

    /// Standalone commits, with what a test needs to see or steer: which
    /// thread ran each batch, whether the policy proposes in memory and has
    /// batches in flight, and a pipeline that is full once.
    #[derive(Default)]
    struct Probe {
        in_memory: bool,
        in_flight: std::sync::atomic::AtomicBool,
        ran_on: std::sync::Mutex<Vec<Option<String>>>,
        /// Says that the committer waits, then waits for room.
        full_once: Option<(
            std::sync::mpsc::Sender<()>,
            std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
        )>,
    }

    impl CommitPolicy for Probe {
        fn epoch(&self) -> Result<u64, WriteError> {
            Standalone.epoch()
        }
        fn execute(
            &self,
            store: &Store,
            ops: &[Op],
            epoch: u64,
            now_ms: u64,
        ) -> Result<Decided, WriteError> {
            if !ops.is_empty() {
                let thread = std::thread::current().name().map(str::to_string);
                self.ran_on.lock().unwrap().push(thread);
            }
            Standalone.execute(store, ops, epoch, now_ms)
        }
        fn committed(
            &self,
            epoch: u64,
            waits_for: Option<u64>,
            answers: Vec<(Reply, Result<Applied, WriteError>)>,
        ) {
            Standalone.committed(epoch, waits_for, answers);
        }
        fn wait_for_room(&self) {
            if let Some((waiting, room)) = &self.full_once {
                let _ = waiting.send(());
                let room = room.lock().unwrap();
                let _ = room.recv_timeout(std::time::Duration::from_secs(10));
            }
        }
        fn proposes_in_memory(&self) -> bool {
            self.in_memory
        }
        fn nothing_in_flight(&self) -> bool {
            !self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A committer that has to wait for room in the pipeline (a leader
    /// with batches in flight) sends everything that arrived meanwhile as
    /// one batch.
    #[test]
    fn writes_that_arrive_while_the_pipeline_is_full_leave_as_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 20).unwrap());
        let (waiting, waited) = std::sync::mpsc::channel();
        let (room, roomy) = std::sync::mpsc::channel();
        let policy = Probe {
            full_once: Some((waiting, std::sync::Mutex::new(roomy))),
            ..Probe::default()
        };
        let (queue, committer) =
            WriteQueue::start_with(store.clone(), BatchLimits::default(), Arc::new(policy))
                .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let submit = |i| {
            let queue = queue.clone();
            runtime.spawn(async move { queue.submit(op(i)).await })
        };
        let mut writes = vec![submit(0)];
        runtime.block_on(tokio::task::yield_now());
        waited
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the committer asks for room before it gathers a batch");
        writes.extend((1..10).map(submit));
        runtime.block_on(async {
            // Every write queued before there is room.
            while queue.tx.capacity() > queue.tx.max_capacity() - 9 {
                tokio::task::yield_now().await;
            }
        });
        room.send(()).unwrap();
        for write in writes {
            assert!(runtime.block_on(write).unwrap().is_ok());
        }
        assert_eq!(store.revision(), 10);
        assert_eq!(store.commits(), 1, "ten writes, one batch");
        drop(queue);
        let _ = room.send(());
        committer.join().unwrap();
    }

    /// A leader's write with nothing queued and nothing in flight is
    /// proposed by its own task, not handed to the committer thread; with
    /// batches in flight, writes queue for the committer as before. Both
    /// paths share what they remember of request ids.
    #[test]
    fn an_idle_leader_proposes_a_write_on_its_writer_and_a_busy_one_queues_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 20).unwrap());
        let policy = Arc::new(Probe {
            in_memory: true,
            ..Probe::default()
        });
        let (queue, committer) =
            WriteQueue::start_with(store.clone(), BatchLimits::default(), policy.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let here = std::thread::current().name().map(str::to_string);
        let committer_thread = Some("pika-committer".to_string());
        let id = Some("req-1".to_string());

        let first = runtime
            .block_on(queue.submit_once(op(1), id.clone()))
            .unwrap();
        assert_eq!(*policy.ran_on.lock().unwrap(), std::slice::from_ref(&here));
        // The retry is answered from what the writer's batch remembered.
        let again = runtime
            .block_on(queue.submit_once(op(1), id.clone()))
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(store.revision(), 1, "the retry changed nothing");

        policy
            .in_flight
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let second = runtime.block_on(queue.submit_once(op(2), None)).unwrap();
        assert_eq!(second.revision, 2);
        // The committer knows the id the writer proposed: the retry is
        // answered, not applied again.
        let third = runtime.block_on(queue.submit_once(op(1), id)).unwrap();
        assert_eq!(third, first);
        assert_eq!(store.revision(), 2);
        assert_eq!(
            *policy.ran_on.lock().unwrap(),
            [here, committer_thread],
            "an op with nothing in flight runs on its writer; with batches in flight, on the committer"
        );
        drop(queue);
        committer.join().unwrap();
    }

    #[tokio::test]
    async fn a_retried_request_id_is_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 20).unwrap());
        let (queue, _handle) = WriteQueue::start(store.clone(), BatchLimits::default()).unwrap();
        let id = Some("req-1".to_string());
        let first = queue.submit_once(op(1), id.clone()).await.unwrap();
        let again = queue.submit_once(op(1), id).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(store.revision(), 1, "the retry changed nothing");
        let other = queue
            .submit_once(op(1), Some("req-2".into()))
            .await
            .unwrap();
        assert_eq!(other.version, 2);
    }

    #[tokio::test]
    async fn a_request_id_reused_for_another_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 20).unwrap());
        let (queue, _handle) = WriteQueue::start(store.clone(), BatchLimits::default()).unwrap();
        let id = Some("req-9".to_string());
        queue.submit_once(op(1), id.clone()).await.unwrap();
        let refused = |r: &Result<Applied, WriteError>| {
            matches!(
                r,
                Err(WriteError::Rejected(OpError::RequestIdReused { .. }))
            )
        };
        let other = queue.submit_once(op(2), id.clone()).await;
        assert!(refused(&other), "{other:?}");
        // A new committer (a restart, or another leader) knows the id from
        // the store alone.
        drop(queue);
        let (queue, _handle) = WriteQueue::start(store.clone(), BatchLimits::default()).unwrap();
        let other = queue.submit_once(op(3), id.clone()).await;
        assert!(refused(&other), "{other:?}");
        assert_eq!(queue.submit_once(op(1), id).await.unwrap().revision, 1);
        assert_eq!(store.revision(), 1);
    }

    #[test]
    fn an_op_and_the_change_it_made_have_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 20).unwrap();
        let (_, changes) = store.execute_then(&[op(4)], 0, 0, |_| {}).unwrap();
        assert_eq!(changes[0].fingerprint(), op(4).fingerprint());
        assert_ne!(changes[0].fingerprint(), op(5).fingerprint());
        // The bytes hashed are the op's postcard encoding, as releases
        // that serialized it to a buffer first hashed them.
        let mut hasher = blake3::Hasher::new();
        hasher.update(op(4).path.as_str().as_bytes());
        hasher.update(&[0]);
        hasher.update(&postcard::to_stdvec(&op(4).kind).unwrap());
        assert_eq!(op(4).fingerprint(), <[u8; 32]>::from(hasher.finalize()));
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
