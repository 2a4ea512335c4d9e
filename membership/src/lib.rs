//! pika's cluster membership: who my peers are and how to reach them.
//!
//! - [`admission`]: mutual TLS 1.3 against a CA derived from the cluster's
//!   `security_key`; a peer without the key never finishes a handshake.
//! - [`discovery`]: `dns_addr` resolved (hickory) at start and every
//!   `refresh_interval`.
//! - [`swim`]: the sans-IO membership state machine (foca's SWIM plus the
//!   member table), driven by `transport` over QUIC datagrams.
//! - [`rpc`] and [`frame`]: typed, framed, ordered streams between members,
//!   which replication builds on.
//!
//! [`Membership::start`] wires these together for one node.

pub mod admission;
pub mod datagram;
pub mod discovery;
pub mod frame;
pub mod identity;
mod restart;
pub mod rpc;
pub mod stats;
pub mod swim;
mod transport;

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

pub use admission::KeyStrength;
pub use discovery::DiscoveryConfig;
pub use identity::{MemberMeta, PeerId};
pub use rpc::{FramedStream, IncomingStream, RpcError};
pub use stats::StatsSnapshot;
pub use swim::{MemberState, MemberView, MembershipEvent, SwimConfig};
pub use transport::Snapshot;

use crate::stats::Stats;
use crate::transport::{Driver, Input, Pool, PoolSettings};

/// Everything a node's membership needs; the node maps its `cluster.*`
/// configuration onto this.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Persisted in the node's store: the same across restarts.
    pub node_id: String,
    /// Grows with every start of the node. It also orders two nodes that
    /// claim one address (a node whose data directory was wiped comes back
    /// under a new node id): the higher replaces the other at once. So
    /// take it from the start time where a node can start afresh (`pika`
    /// raises its store's count to the wall clock in milliseconds).
    pub generation: u64,
    /// The UDP address the QUIC endpoint binds (`cluster.bind_addr:port`).
    pub bind: SocketAddr,
    /// The address peers reach this node at. `None` means `bind` when it
    /// names one interface, or else the local address the kernel would use
    /// to reach the first discovered peer.
    pub advertise: Option<SocketAddr>,
    pub discovery: DiscoveryConfig,
    /// How often `dns_addr` is resolved again.
    pub refresh_interval: Duration,
    pub swim: SwimConfig,
    /// `cluster.security_key`; empty means no admission.
    pub security_key: Vec<u8>,
    /// `cluster.prefix`: part of the CA derivation and of the ALPN.
    pub prefix: String,
    /// Largest frame accepted or sent on an RPC stream.
    pub max_frame: usize,
    /// What this node first says about itself.
    pub meta: MemberMeta,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding the peer endpoint on udp://{addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admission(#[from] admission::AdmissionError),
    #[error(
        "cannot tell this node's own peer address: bind_addr is unspecified and no peer resolved; set cluster.bind_addr"
    )]
    NoAdvertiseAddress,
    #[error("invalid transport setting: {0}")]
    Transport(String),
}

/// A running membership: the QUIC endpoint, the SWIM driver and discovery.
/// Cheap to share behind an `Arc`; [`Membership::shutdown`] stops it.
pub struct Membership {
    me: PeerId,
    security: KeyStrength,
    pool: Arc<Pool>,
    stats: Arc<Stats>,
    inputs: mpsc::UnboundedSender<Input>,
    view: watch::Receiver<Snapshot>,
    events: broadcast::Sender<MembershipEvent>,
    incoming: Mutex<Option<mpsc::Receiver<IncomingStream>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Membership {
    /// Binds the endpoint, resolves `dns_addr` once, announces to every peer
    /// found, and keeps going in background tasks.
    pub async fn start(config: MembershipConfig) -> Result<Membership, StartError> {
        let security = KeyStrength::of(&config.security_key);
        let transport = Arc::new(transport_config(&config.swim)?);
        let tls = admission::Admission::new(
            &config.security_key,
            &config.prefix,
            &config.node_id,
            transport,
        )?;

        let socket = UdpSocket::bind(config.bind).map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let bound = socket.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| StartError::Transport("no async runtime for quinn".into()))?;
        // The address first: the endpoint's reset keys belong to it.
        let first_round = discovery::resolve(&config.discovery).await;
        let advertise = match config.advertise {
            Some(addr) => addr,
            None if !bound.ip().is_unspecified() => bound,
            None => advertise_toward(&first_round, bound.port())?,
        };
        let endpoint_config =
            restart::endpoint_config(&config.security_key, &config.prefix, advertise)?;
        let mut endpoint = quinn::Endpoint::new(endpoint_config, Some(tls.server), socket, runtime)
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        endpoint.set_default_client_config(tls.client);

        let me = PeerId::new(config.node_id.clone(), advertise, config.generation);

        let stats = Arc::new(Stats::default());
        let (inputs, input_rx) = mpsc::unbounded_channel();
        let (stream_tx, stream_rx) = mpsc::channel(256);
        let interval = config.swim.heartbeat_interval;
        let settings = PoolSettings {
            connect_timeout: (interval * 2).max(Duration::from_millis(200)),
            backoff: interval,
            max_frame: config.max_frame,
        };
        let pool = Pool::new(endpoint, settings, stats.clone(), inputs.clone(), stream_tx);

        let now = Instant::now();
        let seed = seed_from_os();
        let swim = swim::Swim::new(
            me.clone(),
            config.meta.clone(),
            config.swim.clone(),
            seed,
            now,
        );
        let (view_tx, view) = watch::channel(Snapshot {
            members: swim.members(now),
            taken: now,
        });
        let (events, _) = broadcast::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let tick = (interval / 4).max(Duration::from_millis(5));
        let driver = Driver::new(
            swim,
            pool.clone(),
            input_rx,
            tick,
            view_tx,
            events.clone(),
            stop_rx.clone(),
        );

        let mut tasks = vec![
            tokio::spawn(driver.run()),
            tokio::spawn(pool.clone().accept_loop()),
        ];
        let _ = inputs.send(Input::Discovered(first_round.into_iter().collect()));
        tasks.push(tokio::spawn(refresh_loop(
            config.discovery.clone(),
            config.refresh_interval,
            inputs.clone(),
            stop_rx,
        )));

        match security {
            KeyStrength::None => tracing::warn!(
                "cluster.security_key is empty: any pika node that can reach udp://{bound} may join this cluster"
            ),
            KeyStrength::Weak => tracing::warn!(
                "cluster.security_key is shorter than {} bytes; use a longer random key",
                admission::RECOMMENDED_KEY_LEN
            ),
            KeyStrength::Strong => {}
        }
        tracing::info!(%bound, %advertise, node_id = %me.node_id, generation = me.generation, "peer endpoint listening");

        Ok(Membership {
            me,
            security,
            pool,
            stats,
            inputs,
            view,
            events,
            incoming: Mutex::new(Some(stream_rx)),
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    /// This node's identity.
    pub fn me(&self) -> &PeerId {
        &self.me
    }

    /// The local address of the peer endpoint.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.pool.endpoint().local_addr().ok()
    }

    /// Whether peers must hold a (non-empty) key to join.
    pub fn security_enabled(&self) -> bool {
        self.security != KeyStrength::None
    }

    /// The member table, self first, with `last_seen` as of now.
    pub fn members(&self) -> Vec<MemberView> {
        let snapshot = self.view.borrow().clone();
        let age = snapshot.taken.elapsed();
        snapshot
            .members
            .into_iter()
            .map(|mut m| {
                if !m.is_self {
                    m.last_seen += age;
                }
                m
            })
            .collect()
    }

    /// Watches the member table; it changes after every membership input.
    pub fn watch(&self) -> watch::Receiver<Snapshot> {
        self.view.clone()
    }

    /// Membership changes from now on.
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Replaces what this node tells the others about itself.
    pub fn set_meta(&self, meta: MemberMeta) {
        let _ = self.inputs.send(Input::Meta(meta));
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Opens an ordered bidirectional stream to the member at `addr`,
    /// connecting first if needed.
    pub async fn open_stream(&self, addr: SocketAddr) -> Result<FramedStream, RpcError> {
        self.pool.open_stream(addr).await
    }

    /// The streams other members open to this node. The first caller gets
    /// the receiver; later calls get `None`. Until someone takes it, incoming
    /// streams are dropped.
    pub fn incoming_streams(&self) -> Option<mpsc::Receiver<IncomingStream>> {
        self.incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Stops gossip and discovery and closes every connection, telling the
    /// peers so.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let endpoint = self.pool.endpoint();
        endpoint.close(0u32.into(), b"shutdown");
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

async fn refresh_loop(
    discovery: DiscoveryConfig,
    every: Duration,
    inputs: mpsc::UnboundedSender<Input>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let round = discovery::resolve_round(&discovery).await;
        if round.incomplete {
            // Taken as the whole truth, a lookup that timed out would make
            // every down member's address look gone from DNS (forgotten)
            // and stop the announcements to members not heard from; the
            // last complete round stands until the next one.
            tracing::debug!("a discovery round got no answer for a name; keeping the last one");
            continue;
        }
        if inputs
            .send(Input::Discovered(round.found.into_iter().collect()))
            .is_err()
        {
            return;
        }
    }
}

/// Bidirectional streams a peer may have open to this node at once.
pub const MAX_STREAMS_PER_PEER: u32 = 16;

/// QUIC settings tuned to the heartbeat: a connection to a vanished peer is
/// given up after the heartbeat timeout, and the first handshake retry comes
/// quickly on a LAN.
fn transport_config(swim: &SwimConfig) -> Result<quinn::TransportConfig, StartError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = swim
        .heartbeat_timeout
        .max(swim.heartbeat_interval * 2)
        .max(Duration::from_millis(500));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| StartError::Transport(e.to_string()))?,
    ));
    transport.keep_alive_interval(Some(swim.heartbeat_interval));
    // A peer opens one replica stream and a few RPC streams at a time; the
    // limit bounds what one peer can make this node hold in frames being
    // read to MAX_STREAMS_PER_PEER · max_frame.
    transport.max_concurrent_bidi_streams(MAX_STREAMS_PER_PEER.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.initial_rtt(
        (swim.heartbeat_interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(333)),
    );
    transport.ack_frequency_config(Some(ack_frequency()));
    Ok(transport)
}

/// What this node asks its peers of their QUIC acknowledgements (the ACK
/// frequency extension). By default a receiver acknowledges every second
/// packet at once, in a datagram of its own when it has nothing to send;
/// replication traffic answers every packet soon anyway (a `Diff` with an
/// `Ack`, an `Ack` with a `Commit` or the next `Diff`), so an acknowledgement
/// that waits a little rides along. At one client a 3-node write took 11.7
/// datagrams before and 8.0 after (the eight replication messages), with
/// 5-8 % less CPU per write on each node (`docs/benchmarks.md`). Loss
/// recovery allows for the delay: a probe timeout adds the peer's
/// `max_ack_delay`.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into())
        .max_ack_delay(Some(MAX_ACK_DELAY));
    ack
}

/// Packets a peer may take in before it must acknowledge at once.
const ACK_ELICITING_THRESHOLD: u32 = 8;
/// How long a peer may hold an acknowledgement back otherwise.
const MAX_ACK_DELAY: Duration = Duration::from_millis(5);

/// The local address the kernel would use to send to the first resolved
/// peer: the node's own address when it binds every interface.
fn advertise_toward(
    peers: &std::collections::BTreeSet<SocketAddr>,
    port: u16,
) -> Result<SocketAddr, StartError> {
    for peer in peers {
        let unspecified: SocketAddr = if peer.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let probe = UdpSocket::bind(unspecified).and_then(|s| {
            s.connect(peer)?;
            s.local_addr()
        });
        if let Ok(local) = probe {
            return Ok(SocketAddr::new(local.ip(), port));
        }
    }
    Err(StartError::NoAdvertiseAddress)
}

/// foca's member selection only needs to differ between nodes; the OS
/// randomness behind `RandomState` is enough and adds no dependency.
fn seed_from_os() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
