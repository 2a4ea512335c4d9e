//! Ordered message channels between replicas, over membership's QUIC
//! streams: one outgoing stream per peer, opened on first use and reopened
//! after a failure; every incoming stream is read into one inbox.
//!
//! Messages to a peer whose stream is down are dropped, like datagrams: the
//! protocol above copes (elections retry, a diff lost in a gap is repaired by
//! sync, a lost forward times out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pika_membership::{MemberState, Membership};
use tokio::sync::mpsc;

use crate::wire::PeerMessage;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;

/// Messages read from peers and not yet taken by the driver. When it is
/// full the readers wait: QUIC flow control then holds the senders back,
/// whose own queues (`QUEUE`) drop what does not fit. Memory stays bounded
/// by this count, plus one frame in the making per incoming stream (at
/// most `max_frame` each, and at most `membership`'s stream limit per
/// peer).
pub const INBOX: usize = 4096;

/// Retries (one per `retry`) after which the writer for a node that is no
/// longer a member ends, so that nodes replaced long ago do not keep a
/// task and a queue each.
const FORGET_AFTER: u32 = 60;

/// Messages taken from a peer's queue into one stream write: forwarded
/// writes, their answers, diffs and acks that queued while the previous
/// write was on its way leave together.
const BATCH: usize = 256;

/// How often, at most, a writer looks whether its peer's address changed
/// (also at most once per `retry`).
const ADDRESS_CHECK: Duration = Duration::from_millis(250);

/// A test-only fault switch: drop traffic to or from chosen peers, or
/// delay what goes to them (order kept).
#[derive(Default)]
pub struct Faults {
    blocked_out: Mutex<Vec<String>>,
    blocked_in: Mutex<Vec<String>>,
    /// Peers whose log entries (`Diff`) are dropped on arrival, everything
    /// else delivered: a follower alive to the leader that never receives
    /// a write.
    diffs_blocked_in: Mutex<Vec<String>>,
    /// A pause of the protocol driver asked for and not begun yet.
    pause: Mutex<Option<Duration>>,
    /// Every apply of committed entries fails, as on a failing disk.
    applies_fail: std::sync::atomic::AtomicBool,
    /// The log's extra milliseconds per sync (`LogOptions::sync_delay_ms`).
    sync_delay_ms: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>,
    delays: Mutex<HashMap<String, Duration>>,
    /// Peer → probability of dropping each message sent to it.
    losses: Mutex<HashMap<String, f64>>,
    dice: Mutex<u64>,
}

impl Faults {
    /// Holds everything sent to each named peer for its duration (zero or
    /// absent: no delay).
    pub fn delay_outgoing(&self, delays: HashMap<String, Duration>) {
        *lock(&self.delays) = delays;
    }
    fn delay_to(&self, to: &str) -> Duration {
        lock(&self.delays).get(to).copied().unwrap_or_default()
    }
    /// Drops everything this node sends to `to` (one way) from now on.
    pub fn block_outgoing(&self, to: &[String]) {
        *lock(&self.blocked_out) = to.to_vec();
    }
    /// Drops everything this node receives from `from` from now on.
    pub fn block_incoming(&self, from: &[String]) {
        *lock(&self.blocked_in) = from.to_vec();
    }
    /// Pauses the protocol for `d`, as a stopped process or a long GC
    /// pause would: the driver holds the core for that long (ticks,
    /// messages and the committer wait), then handles every message that
    /// queued up before its first tick.
    pub fn pause_protocol(&self, d: Duration) {
        *lock(&self.pause) = Some(d);
    }
    pub(crate) fn take_pause(&self) -> Option<Duration> {
        lock(&self.pause).take()
    }
    /// Every sync of this node's log takes `d` more from now on, as on a
    /// disk whose syncs stall (zero: back to normal).
    pub fn slow_syncs(&self, d: Duration) {
        if let Some(ms) = self.sync_delay_ms.get() {
            let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            ms.store(millis, std::sync::atomic::Ordering::Relaxed);
        }
    }
    pub(crate) fn attach_sync_delay(&self, ms: Arc<std::sync::atomic::AtomicU64>) {
        let _ = self.sync_delay_ms.set(ms);
    }
    /// Makes every apply of committed entries fail from now on (or not).
    pub fn fail_applies(&self, fail: bool) {
        self.applies_fail
            .store(fail, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn applies_fail(&self) -> bool {
        self.applies_fail.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Drops every `Diff` this node receives from `from` from now on.
    pub fn block_incoming_diffs(&self, from: &[String]) {
        *lock(&self.diffs_blocked_in) = from.to_vec();
    }
    /// Drops each message sent to a named peer with its probability.
    pub fn lose_outgoing(&self, losses: HashMap<String, f64>) {
        *lock(&self.losses) = losses;
    }
    fn drops_out(&self, to: &str) -> bool {
        if lock(&self.blocked_out).iter().any(|p| p == to) {
            return true;
        }
        let Some(p) = lock(&self.losses).get(to).copied() else {
            return false;
        };
        let mut dice = lock(&self.dice);
        *dice ^= (*dice << 13) | 1;
        *dice ^= *dice >> 7;
        *dice ^= *dice << 17;
        ((*dice >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn drops_in(&self, from: &str, message: &PeerMessage) -> bool {
        lock(&self.blocked_in).iter().any(|p| p == from)
            || (matches!(message, PeerMessage::Diff { .. })
                && lock(&self.diffs_blocked_in).iter().any(|p| p == from))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Peers {
    me: String,
    membership: Arc<Membership>,
    outgoing: Mutex<HashMap<String, mpsc::Sender<(Instant, PeerMessage)>>>,
    pub faults: Arc<Faults>,
    retry: Duration,
    /// The runtime the per-peer writers run on: `send` is also called from
    /// the committer's thread, which is outside any runtime.
    runtime: tokio::runtime::Handle,
    /// This node's cluster id, said in every `Hello`; a stream from a
    /// node of another cluster is refused.
    cluster: ClusterId,
}

/// This node's cluster id (empty: none known yet), shared by the writers
/// that say it and the readers that check it; the driver keeps it current.
#[derive(Clone, Default)]
struct ClusterId(Arc<std::sync::RwLock<String>>);

impl ClusterId {
    fn get(&self) -> String {
        self.0.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Called after every protocol step: takes the write lock only when
    /// the id changed.
    fn set(&self, id: &str) {
        let changed = self.0.read().is_ok_and(|c| *c != id);
        if changed && let Ok(mut c) = self.0.write() {
            *c = id.to_string();
        }
    }
}

/// What peers send, as `(sender node id, message)`, split by who handles it.
pub struct Inboxes {
    /// Protocol messages, for the core.
    pub protocol: mpsc::Receiver<(String, PeerMessage)>,
    /// Forwarded writes and their answers (`Forward`, `ForwardReply`). The
    /// core decides nothing for them (the committer refuses a write when
    /// this node does not lead), so they skip the protocol thread: two
    /// thread hops fewer for every write sent through a follower.
    pub forwards: mpsc::Receiver<(String, PeerMessage)>,
}

/// Both inboxes' senders, for a stream reader.
#[derive(Clone)]
struct Senders {
    protocol: mpsc::Sender<(String, PeerMessage)>,
    forwards: mpsc::Sender<(String, PeerMessage)>,
}

impl Peers {
    /// Starts reading incoming streams; returns the inboxes. Call inside
    /// the runtime that is to run the peers' tasks.
    pub fn start(
        me: String,
        membership: Arc<Membership>,
        retry: Duration,
    ) -> (Arc<Peers>, Inboxes) {
        let (protocol, protocol_rx) = mpsc::channel(INBOX);
        let (forwards, forwards_rx) = mpsc::channel(INBOX);
        let inbox = Senders { protocol, forwards };
        let cluster = ClusterId::default();
        let peers = Arc::new(Peers {
            me,
            membership: membership.clone(),
            outgoing: Mutex::new(HashMap::new()),
            faults: Arc::new(Faults::default()),
            retry,
            runtime: tokio::runtime::Handle::current(),
            cluster: cluster.clone(),
        });
        if let Some(mut incoming) = membership.incoming_streams() {
            let faults = peers.faults.clone();
            tokio::spawn(async move {
                while let Some(s) = incoming.recv().await {
                    let inbox = inbox.clone();
                    let faults = faults.clone();
                    tokio::spawn(read_stream(s.stream, inbox, faults, cluster.clone()));
                }
            });
        }
        let inboxes = Inboxes {
            protocol: protocol_rx,
            forwards: forwards_rx,
        };
        (peers, inboxes)
    }

    /// This node's cluster id, as its log says now (empty: none yet).
    pub fn set_cluster(&self, id: &str) {
        self.cluster.set(id);
    }

    /// Queues `message` for `to`; never waits.
    pub fn send(self: &Arc<Self>, to: &str, message: PeerMessage) {
        if self.faults.drops_out(to) {
            return;
        }
        let mut outgoing = lock(&self.outgoing);
        if outgoing.get(to).is_none_or(|s| s.is_closed()) {
            let (tx, rx) = mpsc::channel(QUEUE);
            self.runtime
                .spawn(self.clone().write_stream(to.to_string(), rx));
            outgoing.insert(to.to_string(), tx);
            metrics::gauge!("pika_peer_writers").set(outgoing.len() as f64);
        }
        let Some(sender) = outgoing.get(to) else {
            return;
        };
        if sender.try_send((Instant::now(), message)).is_err() {
            metrics::counter!("pika_peer_queue_full_total").increment(1);
            tracing::debug!(to, "peer queue full or closed; message dropped");
        }
    }

    /// Per-peer writers running now.
    pub fn writers(&self) -> usize {
        lock(&self.outgoing).len()
    }

    /// The writer for `to` ended: forget it (a later send starts another).
    fn forget(&self, to: &str) {
        let mut outgoing = lock(&self.outgoing);
        if outgoing.get(to).is_some_and(|s| s.is_closed()) {
            outgoing.remove(to);
        }
        metrics::gauge!("pika_peer_writers").set(outgoing.len() as f64);
    }

    /// Keeps one stream to `to` open and writes its queue into it.
    async fn write_stream(
        self: Arc<Self>,
        to: String,
        mut queue: mpsc::Receiver<(Instant, PeerMessage)>,
    ) {
        let mut unknown_for = 0;
        // A message taken from the queue for a stream left because its
        // node moved: it goes first on the next one.
        let mut carried: Option<PeerMessage> = None;
        loop {
            let Some(addr) = self.address_of(&to) else {
                // Unknown or down: drop what is queued, look again later,
                // and end once it has been gone for long.
                while queue.try_recv().is_ok() {}
                carried = None;
                unknown_for += 1;
                if unknown_for >= FORGET_AFTER {
                    queue.close();
                    return self.forget(&to);
                }
                tokio::time::sleep(self.retry).await;
                continue;
            };
            unknown_for = 0;
            let mut stream = match self.membership.open_stream(addr).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%to, error = %e, "cannot open a replica stream");
                    while queue.try_recv().is_ok() {}
                    carried = None;
                    tokio::time::sleep(self.retry).await;
                    continue;
                }
            };
            // The address came from gossip, which any key holder can send
            // in another node's name; the certificate says who is really
            // there (without a key there is no certificate, and nothing
            // to check).
            if let Some(proven) = stream.peer_node_id()
                && proven != to.as_str()
            {
                tracing::warn!(%to, %proven, addr = %stream.peer(), "the node at the address gossip gave for a peer is another one; not sending to it");
                while queue.try_recv().is_ok() {}
                carried = None;
                tokio::time::sleep(self.retry).await;
                continue;
            }
            if stream
                .send(&PeerMessage::Hello {
                    node_id: self.me.clone(),
                    cluster: self.cluster.get(),
                })
                .await
                .is_err()
            {
                continue;
            }
            // Sent before anything queued after it, so the order holds.
            if let Some(message) = carried.take()
                && stream.send(&message).await.is_err()
            {
                continue;
            }
            let mut batch = Vec::with_capacity(BATCH);
            let mut address_checked = Instant::now();
            while let Some((queued, message)) = queue.recv().await {
                // A node back under its id at another address (a pod
                // restarted with its volume and a new IP) is alive there
                // while the connection to the old one still looks alive
                // here: nothing answers it, and only its idle timeout (the
                // heartbeat timeout) would end it. Writes would wait for
                // the member that long. Gossip knows the new address
                // within a heartbeat; look at it now and then.
                if address_checked.elapsed() >= self.retry.min(ADDRESS_CHECK) {
                    address_checked = Instant::now();
                    if self.address_of(&to).is_some_and(|now| now != addr) {
                        tracing::info!(%to, from = %addr, "peer moved to another address; reconnecting");
                        carried = Some(message);
                        break;
                    }
                }
                let delay = self.faults.delay_to(&to);
                let due = queued + delay;
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                batch.push(message);
                // One turn of the runtime first: the answers one commit
                // wakes (and the forwards of the handlers that ran beside
                // this task) queue in it and leave in one write, where they
                // went one by one. With clients spread over all nodes, UDP
                // datagrams per write 1.13 -> 0.70, writes/s +0-6 %
                // (`docs/benchmarks.md`, "... one turn before a peer
                // write").
                if delay.is_zero() {
                    tokio::task::yield_now().await;
                }
                // Whatever queued meanwhile leaves in the same write (a
                // delayed peer's messages one by one, each at its time).
                while batch.len() < BATCH && delay.is_zero() {
                    match queue.try_recv() {
                        Ok((_, next)) => batch.push(next),
                        Err(_) => break,
                    }
                }
                if let Err(e) = stream.send_all(&batch).await {
                    tracing::debug!(%to, error = %e, "replica stream broke");
                    break;
                }
                batch.clear();
            }
            if queue.is_closed() && carried.is_none() {
                return self.forget(&to);
            }
        }
    }

    /// The peer address of the newest incarnation of `node_id` that is not down.
    fn address_of(&self, node_id: &str) -> Option<std::net::SocketAddr> {
        self.membership
            .members()
            .into_iter()
            .filter(|m| !m.is_self && m.id.node_id == node_id && m.state != MemberState::Down)
            .max_by_key(|m| (m.id.generation, m.id.renewal))
            .map(|m| m.id.addr)
    }
}

async fn read_stream(
    mut stream: pika_membership::FramedStream,
    inbox: Senders,
    faults: Arc<Faults>,
    cluster: ClusterId,
) {
    let (from, theirs) = match stream.recv::<PeerMessage>().await {
        Ok(Some(PeerMessage::Hello { node_id, cluster })) => (node_id, cluster),
        other => {
            tracing::debug!(peer = %stream.peer(), ?other, "replica stream without a hello");
            return;
        }
    };
    if let Err(why) = hello_matches(stream.peer_node_id(), &from) {
        metrics::counter!("pika_peer_hello_refused_total").increment(1);
        tracing::warn!(peer = %stream.peer(), claimed = %from, "replica stream refused: {why}");
        return;
    }
    let ours = cluster.get();
    if !same_cluster(&ours, &theirs) {
        metrics::counter!("pika_peer_cluster_refused_total").increment(1);
        tracing::warn!(
            peer = %stream.peer(),
            node = %from,
            theirs = %theirs,
            ours = %ours,
            "replica stream refused: the node belongs to another cluster (a restored copy, \
             or another cluster under the same DNS name and key)"
        );
        return;
    }
    loop {
        match stream.recv::<PeerMessage>().await {
            Ok(Some(message)) => {
                if faults.drops_in(&from, &message) {
                    continue;
                }
                let inbox = match message {
                    PeerMessage::Forward { .. } | PeerMessage::ForwardReply { .. } => {
                        &inbox.forwards
                    }
                    _ => &inbox.protocol,
                };
                if deliver(inbox, from.clone(), message).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%from, error = %e, "replica stream ended");
                return;
            }
        }
    }
}

/// Hands a message to its handler, waiting while the inbox is full (and
/// counting that): this stream is then not read, and QUIC flow control
/// holds its sender back. Errs once the handler is gone.
async fn deliver(
    inbox: &mpsc::Sender<(String, PeerMessage)>,
    from: String,
    message: PeerMessage,
) -> Result<(), ()> {
    match inbox.try_send((from, message)) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        Err(mpsc::error::TrySendError::Full(item)) => {
            metrics::counter!("pika_peer_inbox_full_total").increment(1);
            inbox.send(item).await.map_err(|_| ())
        }
    }
}

/// Whether two nodes may speak: the same cluster id, or one of them knows
/// none yet (a new node, or a new cluster before its first voter set).
pub fn same_cluster(ours: &str, theirs: &str) -> bool {
    ours.is_empty() || theirs.is_empty() || ours == theirs
}

/// Whether a stream's `Hello` may speak for `claimed`: only the node its
/// certificate names (`proven`, from the handshake, signed by the
/// cluster's CA). Otherwise any key holder could send diffs, acks or votes
/// in another node's name.
pub fn hello_matches(proven: Option<&str>, claimed: &str) -> Result<(), String> {
    match proven {
        Some(id) if id == claimed => Ok(()),
        Some(id) => Err(format!(
            "its certificate is node {id}'s, its hello claims node {claimed}"
        )),
        None => Err(format!(
            "its certificate names no node (a build from before node ids were \
             certified?); its hello claims node {claimed}"
        )),
    }
}

#[cfg(test)]
mod inbox_tests {
    use super::*;

    #[tokio::test]
    async fn a_full_inbox_makes_the_reader_wait_instead_of_growing() {
        let (tx, mut rx) = mpsc::channel(2);
        let alive = || PeerMessage::Alive { seq: 1, boot: 1 };
        for _ in 0..2 {
            assert!(deliver(&tx, "a".into(), alive()).await.is_ok());
        }
        let blocked =
            tokio::time::timeout(Duration::from_millis(50), deliver(&tx, "a".into(), alive()))
                .await;
        assert!(blocked.is_err(), "the third waits while two are queued");
        assert!(rx.recv().await.is_some());
        assert!(
            deliver(&tx, "a".into(), alive()).await.is_ok(),
            "room again"
        );
        drop(rx);
        assert!(
            deliver(&tx, "a".into(), alive()).await.is_err(),
            "driver gone"
        );
    }
}

#[cfg(test)]
mod hello_tests {
    use super::hello_matches;

    #[test]
    fn a_hello_speaks_only_for_the_certified_node() {
        assert!(hello_matches(Some("a1"), "a1").is_ok());
        assert!(hello_matches(Some("a1"), "b2").is_err());
        assert!(hello_matches(None, "a1").is_err());
    }
}
