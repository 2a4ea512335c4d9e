//! A running node: the store, its write queue and the HTTP server, started
//! together and stopped in the order that loses nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use pika_replication::{BatchLimits, Store, WriteQueue};

use crate::api::Writes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Handlers};
use crate::config::Config;

/// A node serving on a socket. Dropping it does not stop it; call
/// [`Node::shutdown`].
pub struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Opens the store and starts serving. Returns once the socket is bound.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound, addr) = oneshot::channel();
        let task = tokio::spawn(async move {
            serve(config, Some(bound), async {
                let _ = stopped.await;
            })
            .await
        });
        match addr.await {
            Ok(addr) => Ok(Node {
                addr,
                stop: Some(stop),
                task,
            }),
            // The task ended before binding: report why.
            Err(_) => Err(task
                .await
                .context("node task panicked")?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("node stopped before it was ready"))),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop: no new requests, in-flight writes answered, store closed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("node task panicked")?
    }
}

/// Runs a node until `shutdown` completes, then stops it gracefully:
/// the listener closes, in-flight requests finish (writes get their commit
/// or a clean error), the committer drains its queue, and the database file
/// is closed.
pub async fn serve(
    config: Config,
    bound: Option<oneshot::Sender<SocketAddr>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Install the recorder before anything records, or early samples are lost.
    crate::telemetry::prometheus();
    let data_dir = config.storage.bw.path.clone();
    let cache_bytes = usize::try_from(config.storage.cache_mb << 20).unwrap_or(usize::MAX);
    let store = Store::open_with_cache(&data_dir, config.storage.history, cache_bytes)
        .with_context(|| format!("storage.bw.path = {}", data_dir.display()))?;
    let store = Arc::new(store);
    tracing::info!(
        node_id = store.node_id(),
        revision = store.revision(),
        path = %data_dir.display(),
        "store opened"
    );
    let listen = format!("{}:{}", config.listen_host(), config.server.port);
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.host, server.port)"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let tls = crate::tls::server_tls(&config)?;
    let scheme = crate::tls::scheme(&config.server.tls);

    let membership = if config.cluster.enabled {
        Some(Arc::new(
            crate::cluster::start(&config, &store, addr).await?,
        ))
    } else {
        None
    };

    // Standalone: the local committer. Clustered: the replica, whose
    // committer only takes writes while this node leads.
    let (writes, committer, replica_tasks) = match &membership {
        None => {
            let (queue, committer) = WriteQueue::start(store.clone(), BatchLimits::default())
                .context("starting the committer thread")?;
            (Writes::Local(queue), Some(committer), None)
        }
        Some(m) => {
            let (replica, tasks) =
                crate::cluster::start_replica(&config, store.clone(), m.clone(), addr)?;
            (Writes::Replicated(Arc::new(replica)), None, Some(tasks))
        }
    };

    let meta_updates = membership.as_ref().map(|m| {
        crate::cluster::keep_meta_current(
            m.clone(),
            store.clone(),
            writes.replica().cloned(),
            config.cluster.heartbeat_interval.0,
        )
    });

    let admin = admin_token(&config, &data_dir)?;
    let auth = crate::auth::Auth::new(
        config.auth.enabled,
        admin.token.as_deref(),
        &config.cluster.prefix,
        store.clone(),
        writes.replica().cloned(),
    );

    let ready = Arc::new(AtomicBool::new(true));
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let state = AppState::new(Handlers {
        store: store.clone(),
        writes,
        config: Arc::new(config),
        ready: ready.clone(),
        started: Instant::now(),
        request_ids: api::RequestIds::new(),
        http_addr: addr,
        membership: membership.clone(),
        stopping: stopping_rx,
        auth,
    });
    // Present from the start, not only after the first write.
    metrics::gauge!("pika_revision").set(store.revision() as f64);
    let app = api::router(state);
    if let Some(tls) = &tls {
        tracing::info!(
            cert = %tls.cert_file.display(),
            sha256 = tls.fingerprint,
            "serving HTTPS"
        );
    }
    let local = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    if addr.ip().is_unspecified() {
        tracing::info!("pika listening on {scheme}://{addr} (open {scheme}://{local})");
    } else {
        tracing::info!("pika listening on {scheme}://{addr}");
    }
    if let (Some(path), Some(token)) = (&admin.file, &admin.token) {
        // The fragment never reaches a server or its logs; the page reads
        // it and clears it from the address bar. The token itself is shown
        // only on a terminal, never in a log that is shipped somewhere.
        use std::io::IsTerminal as _;
        if std::io::stderr().is_terminal() {
            tracing::info!("open the UI: {scheme}://{local}/#token={token}");
        } else {
            tracing::info!(
                "admin token in {}; the UI takes it at {scheme}://{local}/#token=<its content>",
                path.display()
            );
        }
    }
    if let Some(bound) = bound {
        let _ = bound.send(addr);
    }

    let upkeep = tokio::spawn(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            crate::telemetry::prometheus().run_upkeep();
        }
    });
    let graceful = async move {
        shutdown.await;
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        stopping.send_replace(true);
        tracing::info!("shutting down: finishing in-flight requests");
    };
    // The client's address reaches handlers (auth failure logs) either way.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = match tls {
        None => axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
            .context("HTTP server failed"),
        Some(tls) => {
            use axum::serve::ListenerExt as _;
            let listener = crate::tls::TlsListener::new(listener, tls.config)
                .context("starting the TLS listener")?
                .tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
                .context("HTTPS server failed")
        }
    };
    upkeep.abort();
    if let Some(task) = meta_updates {
        task.abort();
        let _ = task.await;
    }

    // The router (and with it every write handle) is gone once serve
    // returns, so the committer sees its queue close, answers what is left
    // and exits. Only then is the database closed.
    match (replica_tasks, committer) {
        (Some(tasks), _) => tasks.stop().await,
        (None, Some(committer)) => tokio::task::spawn_blocking(move || committer.join())
            .await
            .context("joining the committer")?
            .map_err(|_| anyhow::anyhow!("the committer thread panicked"))?,
        (None, None) => {}
    }
    if let Some(membership) = membership {
        membership.shutdown().await;
    }
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().context("closing the store")?,
        Err(_) => tracing::warn!("store still referenced at shutdown; it closes when dropped"),
    }
    tracing::info!("stopped");
    result
}

/// The admin token a node runs with, and the file it came from when it
/// was not configured.
struct AdminToken {
    token: Option<String>,
    file: Option<std::path::PathBuf>,
}

/// `auth.admin_token`, else (standalone) the data directory's
/// `admin.token`, created at first start. A cluster node without one never
/// gets here: the configuration is refused first.
fn admin_token(config: &Config, data_dir: &std::path::Path) -> anyhow::Result<AdminToken> {
    if !config.auth.enabled {
        tracing::warn!(
            "auth.enabled is false: every route is open to anyone who can reach {}:{}",
            config.listen_host(),
            config.server.port
        );
        return Ok(AdminToken {
            token: None,
            file: None,
        });
    }
    if !config.auth.admin_token.is_empty() {
        return Ok(AdminToken {
            token: Some(config.auth.admin_token.clone()),
            file: None,
        });
    }
    let (token, created) = crate::auth::admin_file::load_or_create(data_dir)?;
    let path = crate::auth::admin_file::path_in(data_dir);
    if created {
        tracing::info!(path = %path.display(), "generated an admin token (mode 0600)");
    }
    Ok(AdminToken {
        token: Some(token),
        file: Some(path),
    })
}
