//! Configuration: the seed-compatible YAML surface, its defaults and its
//! validation. Loading (files, env overrides, error reports) is in `load`.
//!
//! Every key an existing pika user has in their YAML keeps its meaning;
//! keys pika adds (`cluster.dns_server`, `cluster.max_frame_mb`,
//! `cluster.pipeline_depth`) have defaults, so old files load unchanged.

pub mod duration;
pub mod load;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use pika_replication::replica::LearnerFeed;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use duration::HumanDuration;
pub use load::{ConfigError, Loaded, Sources, load};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    /// tracing filter directives: `info`, `debug`, `pika=debug,info`.
    pub log_level: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub host: String,
    /// HTTP port; 0 picks a free port (the log says which).
    #[serde(deserialize_with = "port")]
    pub port: u16,
    pub limits: LimitsConfig,
    pub tls: TlsConfig,
}

/// `server.tls`: HTTPS on the API listener. Off by default (the loopback
/// quick start stays plain HTTP).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Set together with `key_file`.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert_file`.
    pub key_file: PathBuf,
    /// Generate a self-signed certificate at first start and keep it in the
    /// data directory (`tls/cert.pem`, `tls/key.pem`); its SHA-256
    /// fingerprint is logged at every start.
    pub self_signed: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.self_signed || !self.cert_file.as_os_str().is_empty()
    }
}

/// `auth`: API tokens (see `pika::auth`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Every route but `/healthz`, `/readyz` (and `/metrics` unless
    /// `protect_metrics`) needs a token. Default true.
    pub enabled: bool,
    /// The admin token (`pika_` + 64 lowercase hex; `pika token generate`
    /// prints one). Required on cluster nodes, the same on every node;
    /// a standalone node without one generates `admin.token` in its data
    /// directory. Env: `PIKA_AUTH_ADMIN_TOKEN`.
    pub admin_token: String,
    /// Accept `enabled: false` on a listener that is not loopback.
    pub allow_insecure: bool,
    /// `/metrics` needs a token too (any valid one).
    pub protect_metrics: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            admin_token: String::new(),
            allow_insecure: false,
            protect_metrics: false,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("enabled", &self.enabled)
            .field("admin_token", &masked(&self.admin_token))
            .field("allow_insecure", &self.allow_insecure)
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

fn masked(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "********" }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest accepted request body, in MiB. Larger requests get 413.
    pub request_body_mb: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub bw: BwConfig,
    /// Versions kept per path (the latest included).
    pub history: u64,
    /// Bound on redb's page cache, in MiB (redb's own default is 1 GiB).
    pub cache_mb: u64,
    /// Cluster only: how often the state applied behind the replicated log
    /// is made durable (a checkpoint); a restart replays the log from the
    /// last one. Default 1s.
    pub checkpoint_interval: HumanDuration,
    /// Cluster only: log entries kept behind the last checkpoint, for
    /// followers to catch up from; a follower further behind gets a
    /// snapshot of the differing Merkle buckets instead. Default 65536.
    pub log_retention: u64,
}

/// `storage.bw`: named after the original pika's storage section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct BwConfig {
    /// Directory holding the database file.
    pub path: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// DNS name (or comma list of `host[:port]`) that resolves to every node.
    pub dns_addr: String,
    /// Address of the peer (QUIC) endpoint.
    pub bind_addr: String,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// Cluster size R; quorum is R/2 + 1.
    pub replicas: u32,
    pub security_key: SecurityKey,
    pub refresh_interval: HumanDuration,
    pub heartbeat_interval: HumanDuration,
    pub heartbeat_timeout: HumanDuration,
    /// A follower in the leader's replication set that has not received a
    /// write this long after it was sent loses its read permission, and
    /// leaves the set once that has surely run out (`heartbeat_timeout`
    /// · 1.1 later); writes then go on without it. Default 5s.
    pub ack_timeout: HumanDuration,
    /// A voter that membership has not seen alive for this long is
    /// removed from the voter set (`{prefix}/voters`), and a caught-up
    /// learner takes its place. Default 5m: long enough that a restart or
    /// a node drained for maintenance keeps its vote.
    pub dead_voter_timeout: HumanDuration,
    /// How the leader feeds learners, the nodes beyond the voter set:
    /// `per_write` (default: with each write; commits wait for them, and
    /// they serve linearizable reads locally) or `batched` (once per
    /// `heartbeat_interval`; no commit waits for them, and a linearizable
    /// read on one first asks the leader for its commit index). The
    /// leader's setting is the one that counts.
    pub learner_feed: LearnerFeed,
    pub lock_key: String,
    pub sync_interval: HumanDuration,
    pub prefix: String,
    pub forward_timeout: HumanDuration,
    /// `ip:port` of one name server to ask for `dns_addr` instead of the
    /// system resolvers; empty means the system's.
    pub dns_server: String,
    /// Largest message on a peer stream, in MiB.
    pub max_frame_mb: u32,
    /// Batches of writes the leader keeps awaiting their commit before the
    /// next one waits (at most 50 ms) for room, 1 to 64; what arrives
    /// meanwhile gathers into the next batch. Default 2: one batch is made
    /// durable and acknowledged while the next is on its way. Each batch
    /// costs every follower a `Diff`, an append, two acks and a protocol
    /// step whatever its size: 1 makes batches about twice as large (on 3
    /// nodes on a LAN, 10-14 % more writes/s with a light client, none
    /// with a heavier one, and a longer tail; docs/benchmarks.md). Raise
    /// it where the round trip to the followers is long against a batch's
    /// work (nodes in different regions).
    pub pipeline_depth: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            auth: AuthConfig::default(),
            log_level: "info".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            bw: BwConfig::default(),
            history: 20,
            cache_mb: 64,
            checkpoint_interval: HumanDuration(Duration::from_secs(1)),
            log_retention: 1 << 16,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            request_body_mb: 32,
        }
    }
}

impl Default for BwConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/pika"),
        }
    }
}

impl ClusterConfig {
    /// Where the voter set is kept: `{prefix}/voters`.
    pub fn voters_path(&self) -> String {
        format!("{}/voters", self.prefix)
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let secs = |s| HumanDuration(Duration::from_secs(s));
        Self {
            enabled: false,
            dns_addr: String::new(),
            bind_addr: "0.0.0.0".into(),
            port: 5000,
            replicas: 3,
            security_key: SecurityKey::default(),
            refresh_interval: secs(30),
            heartbeat_interval: secs(5),
            heartbeat_timeout: secs(30),
            ack_timeout: secs(5),
            dead_voter_timeout: secs(300),
            learner_feed: LearnerFeed::PerWrite,
            lock_key: "pika-leader".into(),
            sync_interval: secs(300),
            prefix: "pika".into(),
            forward_timeout: secs(30),
            dns_server: String::new(),
            max_frame_mb: 64,
            pipeline_depth: 2,
        }
    }
}

impl Config {
    /// Checks what types alone cannot. Each problem is `(key, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let c = &self.cluster;
        if c.enabled && c.replicas == 0 {
            out.push((
                "cluster.replicas",
                "must be at least 1 when cluster.enabled is true".into(),
            ));
        }
        // Zero, each of these would spin a loop or time out at once.
        for (key, d, message) in [
            (
                "cluster.heartbeat_interval",
                c.heartbeat_interval.0,
                "must be greater than 0",
            ),
            (
                "cluster.ack_timeout",
                c.ack_timeout.0,
                "must be greater than 0",
            ),
            (
                "cluster.forward_timeout",
                c.forward_timeout.0,
                "must be greater than 0: every write and wait would time out at once",
            ),
            (
                "cluster.refresh_interval",
                c.refresh_interval.0,
                "must be greater than 0 (it is how often dns_addr is resolved again)",
            ),
            (
                "cluster.sync_interval",
                c.sync_interval.0,
                "must be greater than 0 (it is how often the leader sends its Merkle root)",
            ),
        ] {
            if c.enabled && d.is_zero() {
                out.push((key, message.into()));
            }
        }
        // The lease (L, drift taken off: 0.9 L) must outlast the next
        // heartbeat round (H, ticks every H/4) and its acks; shorter, and
        // every leader steps down before renewing, for good.
        if c.enabled && c.heartbeat_timeout.0 < c.heartbeat_interval.0 * 2 {
            out.push((
                "cluster.heartbeat_timeout",
                format!(
                    "must be at least twice cluster.heartbeat_interval ({} < 2 x {}): a leader's \
                     lease must outlast its next heartbeat round",
                    c.heartbeat_timeout, c.heartbeat_interval
                ),
            ));
        }
        // A day at most, each: a bound no setting needs to pass, and far
        // below where adding one to a clock reading overflows.
        for (key, d) in [
            ("cluster.heartbeat_interval", c.heartbeat_interval.0),
            ("cluster.heartbeat_timeout", c.heartbeat_timeout.0),
            ("cluster.ack_timeout", c.ack_timeout.0),
            ("cluster.forward_timeout", c.forward_timeout.0),
            ("cluster.sync_interval", c.sync_interval.0),
            ("cluster.dead_voter_timeout", c.dead_voter_timeout.0),
            ("cluster.refresh_interval", c.refresh_interval.0),
        ] {
            if c.enabled && d > MAX_DURATION {
                out.push((key, "must be at most 24h".into()));
            }
        }
        if c.enabled && c.dead_voter_timeout.0 < c.heartbeat_timeout.0 {
            out.push((
                "cluster.dead_voter_timeout",
                "must be at least cluster.heartbeat_timeout".into(),
            ));
        }
        if c.enabled {
            out.extend(self.cluster_address_problems());
        }
        if self.storage.bw.path.as_os_str().is_empty() {
            out.push(("storage.bw.path", "must not be empty".into()));
        }
        if self.storage.history == 0 {
            out.push(("storage.history", "must be at least 1".into()));
        }
        if self.storage.cache_mb == 0 || self.storage.cache_mb > 1 << 20 {
            out.push((
                "storage.cache_mb",
                "must be between 1 and 1048576 (MiB)".into(),
            ));
        }
        if self.storage.checkpoint_interval.0.is_zero() {
            out.push((
                "storage.checkpoint_interval",
                "must be longer than zero".into(),
            ));
        }
        if self.server.limits.request_body_mb == 0 {
            out.push(("server.limits.request_body_mb", "must be at least 1".into()));
        }
        out.extend(self.auth_problems());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            out.push((
                "log_level",
                format!("`{}` is not a log filter: {e}", self.log_level),
            ));
        } else if let Some(word) = bare_non_level(&self.log_level) {
            // A bare word is a target to tracing (`warning` would log only
            // events of a target named so: nothing of pika's).
            out.push((
                "log_level",
                format!(
                    "`{word}` is not a level: use trace, debug, info, warn, error or off, or a \
                     directive such as `pika=debug`"
                ),
            ));
        }
        out
    }

    /// Tokens and TLS: what would leave the API open or half configured.
    fn auth_problems(&self) -> Vec<(&'static str, String)> {
        let (auth, tls) = (&self.auth, &self.server.tls);
        let mut out = Vec::new();
        if !auth.admin_token.is_empty() && !crate::auth::token::well_formed(&auth.admin_token) {
            out.push((
                "auth.admin_token",
                "must be `pika_` followed by 64 lowercase hex characters \
                 (`pika token generate` prints a fresh one)"
                    .into(),
            ));
        }
        if auth.enabled && self.cluster.enabled && auth.admin_token.is_empty() {
            out.push((
                "auth.admin_token",
                "must be set when cluster.enabled and auth.enabled are true: every node needs \
                 the same admin token (`pika token generate` prints one; env \
                 PIKA_AUTH_ADMIN_TOKEN)"
                    .into(),
            ));
        }
        if !auth.enabled && !auth.allow_insecure && !is_loopback(&self.server.host) {
            out.push((
                "auth.enabled",
                format!(
                    "false is refused while server.host ({}) is not a loopback address: anyone \
                     who reaches the port could read and change every config; set \
                     auth.allow_insecure: true to accept that",
                    self.server.host
                ),
            ));
        }
        let (cert, key) = (
            !tls.cert_file.as_os_str().is_empty(),
            !tls.key_file.as_os_str().is_empty(),
        );
        if cert != key {
            out.push((
                if cert {
                    "server.tls.key_file"
                } else {
                    "server.tls.cert_file"
                },
                "server.tls.cert_file and server.tls.key_file are set together".into(),
            ));
        }
        if tls.self_signed && (cert || key) {
            out.push((
                "server.tls.self_signed",
                "cannot be true together with server.tls.cert_file/key_file".into(),
            ));
        }
        out
    }

    /// What the peer transport needs to make sense of its addresses.
    fn cluster_address_problems(&self) -> Vec<(&'static str, String)> {
        let c = &self.cluster;
        let mut out = Vec::new();
        if c.port == 0 {
            out.push((
                "cluster.port",
                "must be from 1 to 65535: the other nodes dial it".into(),
            ));
        }
        if c.dns_addr.trim().is_empty() {
            out.push((
                "cluster.dns_addr",
                "must name the cluster (a DNS name, or a comma list of host[:port]) when cluster.enabled is true".into(),
            ));
        } else if let Err(e) = pika_membership::discovery::parse_targets(&c.dns_addr, c.port) {
            out.push(("cluster.dns_addr", e.to_string()));
        }
        if c.bind_addr.parse::<std::net::IpAddr>().is_err() {
            out.push((
                "cluster.bind_addr",
                format!("`{}` is not an IP address", c.bind_addr),
            ));
        }
        if !c.dns_server.is_empty() && c.dns_server.parse::<std::net::SocketAddr>().is_err() {
            out.push((
                "cluster.dns_server",
                format!("`{}` is not an ip:port address", c.dns_server),
            ));
        }
        if !(1..=4096).contains(&c.max_frame_mb) {
            out.push(("cluster.max_frame_mb", "must be from 1 to 4096".into()));
        }
        if !(1..=64).contains(&c.pipeline_depth) {
            out.push(("cluster.pipeline_depth", "must be from 1 to 64".into()));
        }
        // One write travels whole in a frame (a log entry, a forward); a
        // frame that cannot hold the largest body accepted leaves that
        // write's entry unsendable, and the followers stuck before it.
        if u64::from(c.max_frame_mb) <= self.server.limits.request_body_mb {
            out.push((
                "cluster.max_frame_mb",
                format!(
                    "must be larger than server.limits.request_body_mb ({}): a write travels \
                     whole in one frame",
                    self.server.limits.request_body_mb
                ),
            ));
        }
        if c.prefix.is_empty() {
            out.push(("cluster.prefix", "must not be empty".into()));
        } else if let Err(e) = pika_replication::ConfigPath::new(c.voters_path()) {
            out.push((
                "cluster.prefix",
                format!("`{}` makes no valid path for pika's records: {e}", c.prefix),
            ));
        } else if let Err(e) =
            pika_replication::ConfigPath::new(format!("{}/{}", c.prefix, c.lock_key))
        {
            out.push((
                "cluster.lock_key",
                format!(
                    "`{}/{}` (cluster.prefix/cluster.lock_key) is not a valid path: {e}",
                    c.prefix, c.lock_key
                ),
            ));
        }
        out
    }

    /// The config as JSON with the security key masked: for logs and status.
    pub fn masked(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(key) = value.pointer_mut("/cluster/security_key") {
            *key = self.cluster.security_key.masked().into();
        }
        if let Some(token) = value.pointer_mut("/auth/admin_token") {
            *token = masked(&self.auth.admin_token).into();
        }
        value
    }

    /// The address the HTTP server listens on: `server.host`, or every
    /// interface when it is empty (as in the original pika's files).
    pub fn listen_host(&self) -> &str {
        match self.server.host.trim() {
            "" => "0.0.0.0",
            host => host,
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        usize::try_from(self.server.limits.request_body_mb.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX)
    }
}

/// The cluster's pre-shared key. YAML users write it bare (`security_key:
/// 123456`), so a number is accepted and used as its decimal text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecurityKey {
    pub value: String,
    /// Written as a YAML number: leading zeros or `1e3`-style forms are lost.
    pub was_number: bool,
}

impl SecurityKey {
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    fn from_number(n: impl fmt::Display) -> Self {
        Self {
            value: n.to_string(),
            was_number: true,
        }
    }

    pub fn masked(&self) -> &'static str {
        if self.is_empty() { "" } else { "********" }
    }
}

impl fmt::Debug for SecurityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.masked())
    }
}

impl Serialize for SecurityKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de> Deserialize<'de> for SecurityKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SecurityKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (or a number) key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecurityKey, E> {
                Ok(SecurityKey {
                    value: v.to_string(),
                    was_number: false,
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SecurityKey, E> {
                Ok(SecurityKey::from_number(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SecurityKey, E> {
                Ok(SecurityKey::from_number(v))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<SecurityKey, E> {
                Ok(SecurityKey::from_number(v))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<SecurityKey, E> {
                Ok(SecurityKey::from_number(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The longest duration a cluster setting may have.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The first comma-separated part of a log filter that is a bare word but
/// not a level.
fn bare_non_level(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    filter.split(',').map(str::trim).find(|part| {
        !part.is_empty()
            && !part.contains(['=', '[', ':'])
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(part))
    })
}

/// A TCP/UDP port, with a range error that says what the range is. The
/// original pika's files write it as a string (`port: "8080"`), so a
/// string of digits is a port too.
fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(i64),
        Text(String),
    }
    let n = match Port::deserialize(d)? {
        Port::Number(n) => n,
        Port::Text(t) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| serde::de::Error::custom(format!("port {t:?} is not a number")))?,
    };
    u16::try_from(n)
        .map_err(|_| serde::de::Error::custom(format!("port {n} is out of range (0-65535)")))
}
