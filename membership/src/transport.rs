//! The IO half: one quinn endpoint per node, a connection per peer, and the
//! tokio task that feeds datagrams and timers into [`Swim`] and carries out
//! its actions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, ConnectionError, Endpoint};
use tokio::sync::{broadcast, mpsc, watch};

use crate::admission::PEER_SERVER_NAME;
use crate::identity::MemberMeta;
use crate::rpc::{FramedStream, IncomingStream, RpcError};
use crate::stats::Stats;
use crate::swim::{Action, MemberView, MembershipEvent, Swim};

/// Datagrams held for a peer while its connection is being dialled.
const MAX_PENDING_PER_PEER: usize = 16;

pub(crate) enum Input {
    Datagram(SocketAddr, Bytes),
    Timer(foca::Timer<crate::PeerId>),
    Discovered(Vec<SocketAddr>),
    Meta(MemberMeta),
    Connected(SocketAddr),
    DialFailed(SocketAddr),
}

/// The member table as last published by the driver.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub members: Vec<MemberView>,
    pub taken: Instant,
}

enum Dial {
    InProgress(watch::Receiver<Option<Result<Connection, String>>>),
    FailedAt(Instant),
}

/// Dials remembered (running, or failed within the backoff) at most:
/// addresses come from DNS and from gossip, and a failed one is only worth
/// remembering for the backoff.
pub(crate) const MAX_DIAL_RECORDS: usize = 1024;

/// Datagrams read from connections and not yet handled by the driver at
/// most; more are dropped (gossip is lossy by design). About 1.2 KB each.
pub(crate) const MAX_QUEUED_DATAGRAMS: u64 = 4096;

/// Incoming handshakes in progress at once (see `Pool::accept_loop`).
pub(crate) const MAX_HANDSHAKES: usize = 256;

/// Takes one of `cap` slots counted in `queued`; false (nothing taken)
/// when all are in use. The consumer gives the slot back with a
/// `fetch_sub(1)` once it has handled the item.
fn take_slot(queued: &std::sync::atomic::AtomicU64, cap: u64) -> bool {
    queued
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_ok()
}

/// Records a failed dial to `addr` at `now`, first forgetting failures
/// older than `backoff`; refuses (false) when `MAX_DIAL_RECORDS` are kept
/// even so.
fn record_failed_dial(
    dials: &mut HashMap<SocketAddr, Dial>,
    addr: SocketAddr,
    now: Instant,
    backoff: Duration,
) -> bool {
    if dials.len() >= MAX_DIAL_RECORDS {
        dials.retain(|_, d| !matches!(d, Dial::FailedAt(at) if now.duration_since(*at) >= backoff));
    }
    if dials.len() >= MAX_DIAL_RECORDS && !dials.contains_key(&addr) {
        return false;
    }
    dials.insert(addr, Dial::FailedAt(now));
    true
}

/// Live connections by peer address, inbound and outbound alike: whichever
/// side dialled, one authenticated connection is enough to talk both ways.
pub(crate) struct Pool {
    endpoint: Endpoint,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    dials: Mutex<HashMap<SocketAddr, Dial>>,
    settings: PoolSettings,
    stats: Arc<Stats>,
    inputs: mpsc::UnboundedSender<Input>,
    streams: mpsc::Sender<IncomingStream>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolSettings {
    /// A handshake not done by then is a failed dial.
    pub connect_timeout: Duration,
    /// After a failed dial, wait this long before the next attempt.
    pub backoff: Duration,
    /// Largest frame on a stream of this pool's connections.
    pub max_frame: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent across a panic (every update is one insert or
    // remove), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    pub(crate) fn new(
        endpoint: Endpoint,
        settings: PoolSettings,
        stats: Arc<Stats>,
        inputs: mpsc::UnboundedSender<Input>,
        streams: mpsc::Sender<IncomingStream>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            dials: Mutex::new(HashMap::new()),
            settings,
            stats,
            inputs,
            streams,
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn ready(&self, addr: SocketAddr) -> Option<Connection> {
        lock(&self.conns)
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// A connection to `addr`, dialling if there is none. Concurrent callers
    /// share one dial; within `backoff` of a failed dial, fails at once.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<Connection, RpcError> {
        if let Some(conn) = self.ready(addr) {
            return Ok(conn);
        }
        let mut outcome = self
            .start_dial(addr)
            .ok_or_else(|| RpcError::Unreachable(addr, "recent dial failed".into()))?;
        let result = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RpcError::Closed)?
            .clone();
        match result {
            Some(Ok(conn)) => Ok(conn),
            Some(Err(e)) => Err(RpcError::Unreachable(addr, e)),
            None => Err(RpcError::Closed),
        }
    }

    /// Starts dialling `addr` unless a dial is already running (then joins
    /// it) or the last one failed less than `backoff` ago (then `None`).
    fn start_dial(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Option<watch::Receiver<Option<Result<Connection, String>>>> {
        let mut dials = lock(&self.dials);
        match dials.get(&addr) {
            Some(Dial::InProgress(rx)) => return Some(rx.clone()),
            Some(Dial::FailedAt(at)) if at.elapsed() < self.settings.backoff => return None,
            _ => {}
        }
        if dials.len() >= MAX_DIAL_RECORDS {
            let backoff = self.settings.backoff;
            dials.retain(|_, d| !matches!(d, Dial::FailedAt(at) if at.elapsed() >= backoff));
        }
        if dials.len() >= MAX_DIAL_RECORDS && !dials.contains_key(&addr) {
            // Every slot holds a dial running or failed within the backoff.
            Stats::bump(&self.stats.dial_records_full);
            return None;
        }
        let (tx, rx) = watch::channel(None);
        dials.insert(addr, Dial::InProgress(rx.clone()));
        let pool = self.clone();
        tokio::spawn(async move {
            let result = pool.dial(addr).await;
            {
                let mut dials = lock(&pool.dials);
                match &result {
                    Ok(_) => {
                        dials.remove(&addr);
                    }
                    Err(_) => {
                        let backoff = pool.settings.backoff;
                        if !record_failed_dial(&mut dials, addr, Instant::now(), backoff) {
                            Stats::bump(&pool.stats.dial_records_full);
                        }
                    }
                };
            }
            let input = match &result {
                Ok(_) => Input::Connected(addr),
                Err(_) => Input::DialFailed(addr),
            };
            let _ = pool.inputs.send(input);
            let _ = tx.send(Some(result));
        });
        Some(rx)
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Connection, String> {
        let connecting = self
            .endpoint
            .connect(addr, PEER_SERVER_NAME)
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.settings.connect_timeout, connecting).await {
            Ok(Ok(conn)) => {
                self.register(conn.clone());
                Ok(conn)
            }
            Ok(Err(e)) => {
                self.handshake_failed(addr, &e, "dialling");
                Err(e.to_string())
            }
            Err(_) => Err(format!(
                "no handshake within {:?}",
                self.settings.connect_timeout
            )),
        }
    }

    /// Accepts connections until the endpoint closes. A peer that fails
    /// admission is counted, logged and forgotten.
    ///
    /// At most [`MAX_HANDSHAKES`] run at once, each for at most twice the
    /// dial timeout (the dialler gave up by then); more are refused (the
    /// peer dials again), and past half of them a peer must first prove
    /// its address (a QUIC retry), so that spoofed sources cannot hold
    /// them. Without the bound, anyone who could reach the port held a
    /// task, a key exchange and a signature per Initial, for up to the idle
    /// timeout.
    pub(crate) async fn accept_loop(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let limit = self.settings.connect_timeout * 2;
        while let Some(incoming) = self.endpoint.accept().await {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                Stats::bump(&self.stats.handshakes_refused);
                incoming.refuse();
                continue;
            };
            if slots.available_permits() < MAX_HANDSHAKES / 2
                && !incoming.remote_address_validated()
                && incoming.may_retry()
            {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            let pool = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let remote = incoming.remote_address();
                match tokio::time::timeout(limit, incoming).await {
                    Ok(Ok(conn)) => pool.register(conn),
                    Ok(Err(e)) => pool.handshake_failed(remote, &e, "accepting"),
                    Err(_) => {
                        tracing::debug!(%remote, "accepting: no handshake within {limit:?}")
                    }
                }
            });
        }
    }

    fn handshake_failed(&self, remote: SocketAddr, error: &ConnectionError, side: &str) {
        match error {
            // A protocol failure during the handshake is a failed admission:
            // bad certificate, unknown CA, no common ALPN.
            ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_) => {
                Stats::bump(&self.stats.handshakes_rejected);
                tracing::warn!(%remote, %error, "{side}: peer handshake rejected (wrong security_key or prefix?)");
            }
            _ => tracing::debug!(%remote, %error, "{side}: handshake did not complete"),
        }
    }

    /// Makes `conn` the connection for its peer and reads from it until it
    /// closes: datagrams go to the driver, streams to whoever takes them.
    fn register(self: &Arc<Self>, conn: Connection) {
        let peer = canonical(conn.remote_address());
        let node_id = crate::admission::proven_node_id(&conn);
        tracing::debug!(%peer, ?node_id, "peer connection up");
        lock(&self.conns).insert(peer, conn.clone());
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    datagram = conn.read_datagram() => match datagram {
                        Ok(bytes) => {
                            Stats::bump(&pool.stats.datagrams_in);
                            Stats::add(&pool.stats.datagram_bytes_in, bytes.len());
                            if !take_slot(&pool.stats.datagrams_queued, MAX_QUEUED_DATAGRAMS) {
                                Stats::bump(&pool.stats.datagrams_overflow);
                                continue;
                            }
                            if pool.inputs.send(Input::Datagram(peer, bytes)).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    },
                    stream = conn.accept_bi() => match stream {
                        Ok(pair) => {
                            let stream = FramedStream::new(peer, pair, pool.settings.max_frame, pool.stats.clone(), node_id.clone());
                            if pool.streams.try_send(IncomingStream { peer, stream }).is_err() {
                                tracing::debug!(%peer, "incoming stream dropped: nobody is accepting");
                            }
                        }
                        Err(_) => break,
                    },
                }
            }
            let mut conns = lock(&pool.conns);
            if conns
                .get(&peer)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                conns.remove(&peer);
            }
            tracing::debug!(%peer, reason = ?conn.close_reason(), "peer connection closed");
        });
    }

    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<FramedStream, RpcError> {
        let conn = self.connect(addr).await?;
        let pair = conn
            .open_bi()
            .await
            .map_err(|e| RpcError::Connection(addr, e))?;
        Ok(FramedStream::new(
            addr,
            pair,
            self.settings.max_frame,
            self.stats.clone(),
            crate::admission::proven_node_id(&conn),
        ))
    }
}

/// Owns the state machine; runs until `stop` flips.
pub(crate) struct Driver {
    pub swim: Swim,
    pub pool: Arc<Pool>,
    pub inputs: mpsc::UnboundedReceiver<Input>,
    pub tick: Duration,
    pub view: watch::Sender<Snapshot>,
    pub events: broadcast::Sender<MembershipEvent>,
    pub stop: watch::Receiver<bool>,
    pending: HashMap<SocketAddr, Vec<Bytes>>,
}

impl Driver {
    pub(crate) fn new(
        swim: Swim,
        pool: Arc<Pool>,
        inputs: mpsc::UnboundedReceiver<Input>,
        tick: Duration,
        view: watch::Sender<Snapshot>,
        events: broadcast::Sender<MembershipEvent>,
        stop: watch::Receiver<bool>,
    ) -> Driver {
        Driver {
            swim,
            pool,
            inputs,
            tick,
            view,
            events,
            stop,
            pending: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.changed() => break,
                _ = ticker.tick() => self.swim.tick(Instant::now()),
                input = self.inputs.recv() => match input {
                    Some(input) => self.handle(input),
                    None => break,
                },
            }
            self.perform();
            let now = Instant::now();
            self.view.send_replace(Snapshot {
                members: self.swim.members(now),
                taken: now,
            });
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Datagram(from, bytes) => {
                self.pool
                    .stats
                    .datagrams_queued
                    .fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = self.swim.datagram(from, &bytes, now) {
                    Stats::bump(&self.pool.stats.malformed_dropped);
                    tracing::debug!(%from, error = %e, "datagram dropped");
                }
            }
            Input::Timer(timer) => self.swim.timer(timer, now),
            Input::Discovered(addrs) => self.swim.discovered(addrs, now),
            Input::Meta(meta) => self.swim.set_meta(meta),
            Input::Connected(addr) => {
                if let (Some(queued), Some(conn)) =
                    (self.pending.remove(&addr), self.pool.ready(addr))
                {
                    for datagram in queued {
                        self.send_now(&conn, addr, datagram);
                    }
                }
            }
            Input::DialFailed(addr) => {
                self.pending.remove(&addr);
            }
        }
    }

    fn perform(&mut self) {
        for action in self.swim.drain_actions() {
            match action {
                Action::Send { to, datagram } => self.send(to, Bytes::from(datagram)),
                Action::Schedule { after, timer } => {
                    let inputs = self.pool.inputs.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = inputs.send(Input::Timer(timer));
                    });
                }
                Action::Event(event) => {
                    // No subscriber is fine: the table itself is published.
                    let _ = self.events.send(event);
                }
            }
        }
    }

    fn send(&mut self, to: SocketAddr, datagram: Bytes) {
        if let Some(conn) = self.pool.ready(to) {
            self.send_now(&conn, to, datagram);
            return;
        }
        // Hold a few datagrams (the first announce, above all) until the
        // dial finishes; SWIM copes with the rest being lost.
        let queue = self.pending.entry(to).or_default();
        if queue.len() < MAX_PENDING_PER_PEER {
            queue.push(datagram);
        }
        if self.pool.start_dial(to).is_none() {
            self.pending.remove(&to);
        }
    }

    fn send_now(&self, conn: &Connection, to: SocketAddr, datagram: Bytes) {
        let len = datagram.len();
        match conn.send_datagram(datagram) {
            Ok(()) => {
                Stats::bump(&self.pool.stats.datagrams_out);
                Stats::add(&self.pool.stats.datagram_bytes_out, len);
            }
            Err(e) => tracing::debug!(%to, error = %e, "datagram not sent"),
        }
    }
}

/// `addr` as DNS and the config name it: on a socket bound to `::`, quinn
/// reports an IPv4 peer as `[::ffff:a.b.c.d]`, which matches no address the
/// node dialled or heard of, so every lookup missed (a dial per send, and
/// heartbeats refused for claiming another address).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod dial_tests {
    use super::*;

    #[test]
    fn queued_datagrams_stop_at_the_cap_and_room_comes_back() {
        let queued = std::sync::atomic::AtomicU64::new(0);
        for _ in 0..3 {
            assert!(take_slot(&queued, 3));
        }
        assert!(!take_slot(&queued, 3), "the fourth is dropped");
        assert_eq!(queued.load(Ordering::Relaxed), 3, "a refusal takes nothing");
        queued.fetch_sub(1, Ordering::Relaxed);
        assert!(take_slot(&queued, 3));
    }

    #[test]
    fn failed_dials_are_kept_up_to_a_bound_and_stale_ones_make_room() {
        let backoff = Duration::from_secs(1);
        let t0 = Instant::now();
        let addr = |i: usize| SocketAddr::from(([127, 0, 2, (i % 250) as u8], 1000 + i as u16));
        let mut dials = HashMap::new();
        for i in 0..MAX_DIAL_RECORDS {
            assert!(record_failed_dial(&mut dials, addr(i), t0, backoff));
        }
        assert!(
            !record_failed_dial(&mut dials, addr(MAX_DIAL_RECORDS), t0, backoff),
            "full of failures within the backoff"
        );
        assert!(
            record_failed_dial(&mut dials, addr(0), t0, backoff),
            "an address already kept is updated in place"
        );
        let later = t0 + backoff;
        assert!(record_failed_dial(
            &mut dials,
            addr(MAX_DIAL_RECORDS),
            later,
            backoff
        ));
        assert_eq!(dials.len(), 1, "the stale ones were forgotten");
    }
}
