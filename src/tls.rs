//! HTTPS on the API listener (`server.tls`).
//!
//! The certificate is either the operator's (`cert_file` + `key_file`, PEM)
//! or, with `self_signed: true`, one generated at first start and kept in
//! `{storage.bw.path}/tls/` so that clients can pin it across restarts. Its
//! SHA-256 fingerprint is logged at every start.
//!
//! Handshakes run on their own tasks, at most `HANDSHAKES` at a time and
//! each bounded by `HANDSHAKE_TIMEOUT`, so a slow or silent client never
//! holds up the accept loop. One address (an IPv6 /64) has at most
//! `HANDSHAKES_PER_ADDRESS` of them in progress; a connection past that is
//! closed at once, so that idle connections from one place cannot take
//! every slot and hold off everyone else. A plain-HTTP request to the TLS
//! port is answered with a 400 that says to use https, then closed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, TlsConfig};

/// Handshakes in progress at once; more connections wait in the kernel's
/// accept queue.
const HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one address. A client's handshake
/// takes a round trip or two, so only a flood or idle connections come
/// near it, even from many clients behind one NAT.
const HANDSHAKES_PER_ADDRESS: usize = 16;
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of `server.tls`: its rustls config and the certificate's
/// fingerprint.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate (DER), as colon-separated hex.
    pub fingerprint: String,
    /// Where the certificate came from.
    pub cert_file: PathBuf,
}

/// Loads (or, with `self_signed`, creates) the certificate `config` names;
/// `None` when TLS is off.
pub fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTls>> {
    let tls = &config.server.tls;
    if !tls.enabled() {
        return Ok(None);
    }
    let (cert_file, key_file) = if tls.self_signed {
        self_signed(config)?
    } else {
        (tls.cert_file.clone(), tls.key_file.clone())
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("server.tls.cert_file {}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "server.tls.cert_file {} holds no certificate",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .with_context(|| format!("server.tls.key_file {}", key_file.display()))?;
    let fingerprint = fingerprint(&certs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "server.tls: the key in {} does not fit the certificate in {}",
                key_file.display(),
                cert_file.display()
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(ServerTls {
        config: Arc::new(server),
        fingerprint,
        cert_file,
    }))
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `{data}/tls/cert.pem` and `key.pem`, generated on first use. The names
/// in the certificate: `localhost`, the loopback addresses, and
/// `server.host` when it is a specific address.
fn self_signed(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = config.storage.bw.path.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let host = config.server.host.trim_matches(|c| c == '[' || c == ']');
    let unspecified = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    if !unspecified && !names.iter().any(|n| n == host) {
        names.push(host.to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names.clone())
        .context("generating a self-signed certificate")?;
    write_file(
        &key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(&cert, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), ?names, "generated a self-signed certificate (server.tls.self_signed)");
    Ok((cert, key))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Accepted TLS connections, for `axum::serve`.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (ready, incoming) = mpsc::channel(HANDSHAKES);
        let acceptor = TlsAcceptor::from(tls);
        let permits = Arc::new(Semaphore::new(HANDSHAKES));
        let by_address = HandshakesByAddress::default();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, client) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = by_address.take(client.ip()) else {
                    metrics::counter!("pika_http_handshakes_refused_total").increment(1);
                    tracing::debug!(%client, "too many TLS handshakes from one address: closed");
                    continue;
                };
                let (acceptor, ready) = (acceptor.clone(), ready.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, stream))
                        .await
                    {
                        Ok(Ok(Some(tls))) => {
                            let _ = ready.send((tls, client)).await;
                        }
                        Ok(Ok(None)) => {
                            tracing::debug!(%client, "plain HTTP on the TLS port: told to use https");
                        }
                        Ok(Err(e)) => tracing::debug!(%client, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            incoming,
            local,
            accept_loop,
        })
    }
}

/// A TLS session, or `None` when the client spoke plain HTTP (it got a 400
/// naming the scheme to use).
async fn handshake(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
) -> io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    stream.peek(&mut first).await?;
    // A TLS record starts with its content type (22, handshake); an HTTP
    // request with a method name in capitals.
    if first[0].is_ascii_uppercase() {
        let body =
            r#"{"message":"this port serves HTTPS (server.tls): use https://","request_id":null}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

/// Handshakes in progress by client address (IPv6 by /64, the block one
/// host is usually given).
#[derive(Clone, Default)]
struct HandshakesByAddress(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One handshake's place in [`HandshakesByAddress`], given back on drop.
struct AddressSlot {
    all: HandshakesByAddress,
    address: IpAddr,
}

impl HandshakesByAddress {
    /// A slot for a handshake from `ip`, unless its address has
    /// `HANDSHAKES_PER_ADDRESS` in progress already.
    fn take(&self, ip: IpAddr) -> Option<AddressSlot> {
        let address = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let block = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(block.into())
            }
            v4 => v4,
        };
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_default();
        if *count >= HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            all: self.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.all.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (runtime shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The scheme clients use: `https` when `server.tls` is on.
pub fn scheme(tls: &TlsConfig) -> &'static str {
    if tls.enabled() { "https" } else { "http" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = Config::default();
        config.storage.bw.path = dir.path().to_path_buf();
        config.server.tls.self_signed = true;
        let first = server_tls(&config).expect("made").expect("TLS on");
        let again = server_tls(&config).expect("loaded").expect("TLS on");
        assert_eq!(first.fingerprint, again.fingerprint, "kept across starts");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join("tls/key.pem");
            let mode = std::fs::metadata(key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key is private");
        }
    }

    /// Idle connections from one address took every handshake slot for
    /// the 10 s of their timeout, and a client elsewhere waited that long
    /// for its own. Past `HANDSHAKES_PER_ADDRESS` they are closed at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_from_one_address_do_not_hold_off_another() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut config = Config::default();
        config.storage.bw.path = dir.path().to_path_buf();
        config.server.tls.self_signed = true;
        let tls = server_tls(&config).expect("made").expect("TLS on");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = tcp.local_addr().expect("its address");
        let mut listener = TlsListener::new(tcp, tls.config.clone()).expect("listening");

        let connect_from = |local: &'static str| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("{local}:0").parse().expect("an address"))?;
            socket.connect(addr).await
        };
        let mut idle = Vec::new();
        for _ in 0..HANDSHAKES + 8 {
            idle.push(connect_from("127.0.0.2").await.expect("connected"));
        }
        // Let the accept loop take them all (and, without the bound, every
        // slot) before the client below arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let pem = std::fs::read(&tls.cert_file).expect("the certificate");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("a certificate")).expect("trusted");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        let handshake = async {
            let stream = connect_from("127.0.0.3").await?;
            connector.connect(name, stream).await
        };
        // Half the handshake timeout: without the bound it takes all of it.
        let done = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, handshake).await;
        assert!(
            matches!(done, Ok(Ok(_))),
            "the handshake from another address did not complete: {done:?}"
        );
        use axum::serve::Listener as _;
        let (_, client) = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, listener.accept())
            .await
            .expect("the connection is served");
        assert_eq!(client.ip().to_string(), "127.0.0.3");
        drop(idle);
    }

    #[test]
    fn a_missing_certificate_names_the_key_and_the_file() {
        let mut config = Config::default();
        config.server.tls.cert_file = "/nonexistent/cert.pem".into();
        config.server.tls.key_file = "/nonexistent/key.pem".into();
        let e = server_tls(&config).err().expect("refused");
        let text = format!("{e:#}");
        assert!(
            text.contains("server.tls.cert_file") && text.contains("/nonexistent/cert.pem"),
            "{text}"
        );
    }
}
