//! The HTTP API: routes, shared state, and the envelope every response goes
//! through (request id, JSON errors, revision header, metrics).

mod access;
mod backup;
mod consul;
mod envelope;
mod error;
#[cfg(feature = "test-faults")]
mod faults;
mod files;
mod inspect;
mod status;
mod tokens;
mod ui;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use pika_replication::replica::Replica;
use pika_replication::{Applied, Op, Store, WriteError, WriteQueue};

use crate::config::Config;
pub use error::ApiError;

/// What every handler shares, behind one `Arc`: axum clones the state for
/// each extractor of each request, and a clone of the fields one by one
/// (eight reference counts up, then down) was 2 % of the leader's request
/// handling at 64 clients.
#[derive(Clone)]
pub struct AppState(Arc<Handlers>);

impl AppState {
    pub fn new(handlers: Handlers) -> Self {
        Self(Arc::new(handlers))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handlers;

    fn deref(&self) -> &Handlers {
        &self.0
    }
}

/// The node's parts the API handlers use ([`AppState`]).
pub struct Handlers {
    pub store: Arc<Store>,
    pub writes: Writes,
    pub config: Arc<Config>,
    /// False once shutdown has begun: /readyz turns 503.
    pub ready: Arc<AtomicBool>,
    pub started: Instant,
    pub request_ids: RequestIds,
    /// The address the HTTP server is bound to (the real port, even for port 0).
    pub http_addr: std::net::SocketAddr,
    /// Present when `cluster.enabled` is true.
    pub membership: Option<Arc<pika_membership::Membership>>,
    /// Turns true when shutdown begins: open watches end so the server can.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Checks API tokens (see `crate::auth`).
    pub auth: crate::auth::Auth,
}

/// Where writes go: the local committer, or the cluster's leader.
#[derive(Clone)]
pub enum Writes {
    Local(WriteQueue),
    // Shared, not boxed: the state is cloned for every request (each
    // `State` extractor), and a replica handle is a few hundred bytes with
    // strings and paths in its config; cloning a box of it was a fifth of
    // the leader's request handling at 64 clients.
    Replicated(Arc<Replica>),
}

impl Writes {
    /// Applies `op` once per `request_id`, durably (and, in a cluster, on
    /// every member of the leader's replication set) before answering.
    pub async fn submit(&self, op: Op, request_id: &RequestId) -> Result<Applied, WriteError> {
        self.submit_with_id(op, request_id.0.clone()).await
    }

    /// [`Writes::submit`] with a request id of the caller's making (one
    /// request that writes twice needs two).
    pub async fn submit_with_id(&self, op: Op, request_id: String) -> Result<Applied, WriteError> {
        match self {
            Writes::Local(queue) => queue.submit_once(op, Some(request_id)).await,
            Writes::Replicated(replica) => replica.submit(op, request_id).await,
        }
    }

    pub fn replica(&self) -> Option<&Replica> {
        match self {
            Writes::Replicated(r) => Some(r),
            Writes::Local(_) => None,
        }
    }
}

/// The id of the request being served (the client's `X-Request-Id`, or a
/// fresh one); also the idempotency key of a write.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Request ids unique within a boot (a random boot prefix and a counter)
/// and unguessable (a keyed hash of the counter): a generated id is the
/// idempotency key of the request's writes, and one a client could predict
/// it could claim first, so that the write would be answered with another
/// op's outcome and never applied.
#[derive(Clone)]
pub struct RequestIds {
    boot: u32,
    next: Arc<AtomicU64>,
    /// SipHash with keys drawn from the OS at start.
    tag: std::hash::RandomState,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut bytes = [0u8; 4];
        // A constant prefix only weakens uniqueness across restarts.
        let _ = getrandom::fill(&mut bytes);
        Self {
            boot: u32::from_le_bytes(bytes),
            next: Arc::new(AtomicU64::new(1)),
            tag: std::hash::RandomState::new(),
        }
    }

    pub fn next(&self) -> String {
        use std::hash::BuildHasher;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:x}-{:016x}", self.boot, self.tag.hash_one(n))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Set to `1` to expose `POST /debug/faults`, which drops replica traffic
/// to or from chosen nodes: for fault tests only, never for operators, and
/// only in builds with the `test-faults` feature.
pub const TEST_FAULTS_ENV: &str = "PIKA_TEST_FAULTS";

/// The fault-injection route, where the build has it and the environment
/// asks for it.
#[cfg(feature = "test-faults")]
fn fault_routes(state: &AppState) -> Router<AppState> {
    let open =
        std::env::var(TEST_FAULTS_ENV).is_ok_and(|v| v == "1") && state.writes.replica().is_some();
    if !open {
        return Router::new();
    }
    tracing::warn!("{TEST_FAULTS_ENV}=1: the fault-injection endpoint /debug/faults is open");
    Router::new().route("/debug/faults", axum::routing::post(faults::set_faults))
}

#[cfg(not(feature = "test-faults"))]
fn fault_routes(_: &AppState) -> Router<AppState> {
    Router::new()
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes();
    fault_routes(&state)
        .route("/", get(ui::index))
        .route("/ui/vendor/codemirror/{file}", get(ui::vendor))
        .route(
            "/api/v1/file/{*path}",
            get(files::get_file)
                .post(files::save_file)
                .delete(files::delete_file),
        )
        .route("/api/v1/data/{*path}", get(files::get_data))
        .route("/api/v1/versions/{*path}", get(files::get_versions))
        .route("/api/v1/diff/{*path}", get(inspect::diff))
        .route("/api/v1/search", get(inspect::search))
        .route("/api/v1/backup", get(backup::backup))
        .route("/api/v1/folder", get(files::list_root))
        .route("/api/v1/folder/", get(files::list_root))
        .route("/api/v1/folder/{*path}", get(files::list_folder))
        .route("/api/v1/cluster/status", get(status::cluster_status))
        .route(
            "/api/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/api/v1/whoami", get(tokens::whoami))
        .route(
            "/api/v1/tokens/{name}",
            axum::routing::delete(tokens::revoke_token),
        )
        .route("/api/v1/watch", get(watch::watch))
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(status::metrics))
        .merge(consul::routes())
        .route_layer(axum::middleware::from_fn(envelope::tag_route))
        .fallback(status::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            envelope::envelope,
        ))
        .with_state(state)
}
