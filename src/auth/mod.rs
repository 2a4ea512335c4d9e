//! Access control: who a request comes from ([`Auth::authenticate`]) and
//! what it may do ([`Principal`]).
//!
//! Two kinds of token open the API:
//! - the **admin token**, from `auth.admin_token` (or, on a standalone node
//!   without one, generated at first start into `admin.token` in the data
//!   directory). It is compared with the presented token's hash in constant
//!   time and never stored in the replicated state, so it works on a node
//!   that cannot read (no read lease), which is when an operator needs it;
//! - **API tokens**, created through `POST /api/v1/tokens` and kept in the
//!   replicated state (see [`token`]). Checking one is a linearizable local
//!   read of its record: a token created or revoked on any node is in force
//!   here as soon as that write was answered.
//!
//! The node that receives a request checks its token; a forwarded write
//! carries the token's name to the leader as its author.

pub mod admin_file;
pub mod scope;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use pika_replication::replica::{ReadPermission, Replica};
use pika_replication::{ChangeKind, Store};

use scope::{Operation, Scope};
use token::{TokenHash, TokenPaths, TokenRecord};

/// The name the configured admin token writes under.
pub const ADMIN_NAME: &str = "admin";

/// Who a request comes from, once its token checked out.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's name, recorded as the author of what it writes; `None`
    /// when access control is off.
    pub name: Option<String>,
    /// Manages tokens, sees the full status and config, and may do
    /// anything to any config.
    pub admin: bool,
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Everything allowed, nobody named: access control is off.
    pub fn unrestricted() -> Self {
        Self {
            name: None,
            admin: true,
            scopes: vec![Scope::everything()],
        }
    }

    fn admin(name: &str) -> Self {
        Self {
            name: Some(name.to_string()),
            admin: true,
            scopes: vec![Scope::everything()],
        }
    }

    pub fn may(&self, op: Operation, path: &str) -> bool {
        self.admin || self.scopes.iter().any(|s| s.grants(op, path))
    }

    /// Whether anything under `folder` may be read by this principal.
    pub fn reads_under(&self, folder: &str) -> bool {
        self.admin || self.scopes.iter().any(|s| s.reads_under(folder))
    }

    pub fn author(&self) -> Option<String> {
        self.name.clone()
    }
}

/// Why a request was turned away: its status, the reason label counted in
/// `pika_auth_failures_total`, and the message for the JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn unauthorized(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason: "forbidden",
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "unavailable",
            message: message.into(),
        }
    }
}

/// Checks tokens against the configured admin token and the replicated
/// token records. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    admin: Option<TokenHash>,
    paths: TokenPaths,
    store: Arc<Store>,
    replica: Option<Replica>,
    /// When each client address last had a failure logged.
    logged: Mutex<HashMap<IpAddr, Instant>>,
    /// Parsed token records by hash, with the version of the record they
    /// were parsed from. A lookup still reads the record's entry (so a
    /// revocation or a change is seen at once) but skips loading and
    /// parsing the record while its version is the same.
    parsed: Mutex<HashMap<[u8; 32], ParsedRecord>>,
}

/// A token record as parsed from the version `.0` of its path.
type ParsedRecord = (u64, Arc<TokenRecord>);

/// Failure log lines per client address: at most one per this long.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Addresses remembered for [`LOG_EVERY`]; beyond this, old ones are
/// forgotten (a flood of addresses costs log lines, not memory).
const LOGGED_ADDRESSES: usize = 4096;
/// Parsed token records kept; when full, the cache starts over.
const PARSED_RECORDS: usize = 4096;

impl Auth {
    pub fn new(
        enabled: bool,
        admin_token: Option<&str>,
        prefix: &str,
        store: Arc<Store>,
        replica: Option<Replica>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                enabled,
                admin: admin_token.map(TokenHash::of),
                paths: TokenPaths::new(prefix),
                store,
                replica,
                logged: Mutex::new(HashMap::new()),
                parsed: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    pub fn paths(&self) -> &TokenPaths {
        &self.inner.paths
    }

    /// The principal behind an `Authorization` header value (`None`: the
    /// header is absent).
    pub async fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, Refusal> {
        let inner = &self.inner;
        if !inner.enabled {
            return Ok(Principal::unrestricted());
        }
        let Some(header) = header else {
            return Err(Refusal::unauthorized(
                "missing",
                "this route needs an API token: send `Authorization: Bearer <token>`",
            ));
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                Refusal::unauthorized(
                    "malformed",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        if !token::well_formed(token) {
            return Err(Refusal::unauthorized(
                "malformed",
                "not a pika token (`pika_` followed by 64 lowercase hex characters)",
            ));
        }
        let hash = TokenHash::of(token);
        if inner.admin.is_some_and(|admin| admin.same_as(&hash)) {
            return Ok(Principal::admin(ADMIN_NAME));
        }
        let record = self
            .lookup(&hash)
            .await?
            .ok_or_else(|| Refusal::unauthorized("unknown", "unknown or revoked token"))?;
        if record.expires_at_ms.is_some_and(|at| now_ms() >= at) {
            return Err(Refusal::unauthorized(
                "expired",
                format!("token {:?} has expired", record.name),
            ));
        }
        Ok(Principal {
            name: Some(record.name.clone()),
            admin: record.admin,
            scopes: record.scopes.clone(),
        })
    }

    /// The record stored for `hash`, read as any linearizable read is:
    /// with a read lease, after its path's pending write (if any) commits.
    async fn lookup(&self, hash: &TokenHash) -> Result<Option<Arc<TokenRecord>>, Refusal> {
        let inner = &self.inner;
        let path = inner.paths.by_hash(hash);
        if let Some(replica) = &inner.replica {
            let permission = replica.read_permission().await.map_err(|e| {
                Refusal::unavailable(format!(
                    "this node cannot check API tokens now ({e}); retry, or use the admin token"
                ))
            })?;
            if permission == ReadPermission::Lease {
                replica
                    .read_barrier(&path)
                    .await
                    .map_err(|e| Refusal::unavailable(format!("checking the token: {e}")))?;
            }
        }
        let storage = |e: pika_replication::StoreError| Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "unavailable",
            message: format!("reading the token record: {e}"),
        };
        let Some(entry) = inner.store.entry(&path).map_err(storage)? else {
            return Ok(None);
        };
        if entry.deleted {
            return Ok(None);
        }
        if let Ok(parsed) = inner.parsed.lock()
            && let Some((version, record)) = parsed.get(&hash.0)
            && *version == entry.version
        {
            return Ok(Some(record.clone()));
        }
        let Some(change) = inner
            .store
            .get(&path, Some(entry.version))
            .map_err(storage)?
        else {
            return Ok(None);
        };
        let ChangeKind::Put { data, .. } = change.kind else {
            return Ok(None);
        };
        let record: Arc<TokenRecord> =
            serde_json::from_slice(&data).map(Arc::new).map_err(|e| {
                tracing::error!(path, error = %e, "a stored token record does not parse");
                Refusal::unauthorized("unknown", "unknown or revoked token")
            })?;
        if let Ok(mut parsed) = inner.parsed.lock() {
            if parsed.len() >= PARSED_RECORDS {
                parsed.clear();
            }
            parsed.insert(hash.0, (change.version, record.clone()));
        }
        Ok(Some(record))
    }

    /// Counts a refusal and logs it, at most once a second per address.
    pub fn record_failure(&self, refusal: &Refusal, client: Option<IpAddr>, route: &str) {
        metrics::counter!("pika_auth_failures_total", "reason" => refusal.reason).increment(1);
        let Some(client) = client else {
            tracing::warn!(reason = refusal.reason, route, "request refused");
            return;
        };
        let now = Instant::now();
        let Ok(mut logged) = self.inner.logged.lock() else {
            return;
        };
        if logged
            .get(&client)
            .is_some_and(|last| now.duration_since(*last) < LOG_EVERY)
        {
            return;
        }
        if logged.len() >= LOGGED_ADDRESSES {
            logged.retain(|_, last| now.duration_since(*last) < LOG_EVERY);
            if logged.len() >= LOGGED_ADDRESSES {
                logged.clear();
            }
        }
        logged.insert(client, now);
        tracing::warn!(%client, reason = refusal.reason, route, "request refused");
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
