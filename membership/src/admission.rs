//! Admission: who may talk to this node at all.
//!
//! Every node derives the same certificate authority from the cluster's
//! `security_key`: HKDF-SHA256(key, info = prefix) gives a 32-byte Ed25519
//! seed, and the CA certificate is built from it with fixed parameters, so
//! every node holding the key builds the same trust anchor without ever
//! exchanging it. Each node then makes a fresh leaf key at boot and signs its
//! leaf with the derived CA. Both sides of every QUIC handshake present their
//! leaf and verify the other's against the CA (mutual TLS 1.3), so a peer
//! without the key cannot complete a handshake and nothing it sends is read.
//!
//! `prefix` goes into the HKDF info and into the ALPN, so two clusters that
//! share a key but not a prefix still never talk.
//!
//! An empty key still runs this machinery (QUIC needs TLS), but the CA is then
//! derivable by anyone: that is "no admission", and the caller warns loudly.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519,
};
use ring::hkdf;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// The name every leaf certificate carries and every client asks for. Peers
/// are told apart by their address and node id, not by certificate names;
/// the certificate only proves membership.
pub const PEER_SERVER_NAME: &str = "peer.pika.internal";

/// Keys shorter than this are accepted with a warning.
pub const RECOMMENDED_KEY_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("deriving the cluster CA from security_key: {0}")]
    Derive(&'static str),
    #[error("building certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("building the peer certificate verifier: {0}")]
    Verifier(String),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

/// How strong the admission of a given key is; the node logs and reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStrength {
    /// No key: anyone who runs pika can join.
    None,
    /// A key shorter than [`RECOMMENDED_KEY_LEN`] bytes.
    Weak,
    Strong,
}

impl KeyStrength {
    pub fn of(key: &[u8]) -> KeyStrength {
        match key.len() {
            0 => KeyStrength::None,
            n if n < RECOMMENDED_KEY_LEN => KeyStrength::Weak,
            _ => KeyStrength::Strong,
        }
    }
}

/// The TLS side of a node's QUIC endpoint: what it presents and what it
/// accepts, as a server and as a client.
pub struct Admission {
    pub server: quinn::ServerConfig,
    pub client: quinn::ClientConfig,
}

/// ALPN protocol id: pika, the wire protocol version and the cluster prefix.
pub fn alpn(prefix: &str) -> Vec<u8> {
    format!("pika/{}/{prefix}", crate::frame::PROTOCOL_VERSION).into_bytes()
}

impl Admission {
    /// Builds both TLS configurations for node `node_id` of the cluster
    /// identified by `security_key` and `prefix`. The leaf key is fresh on
    /// every call; the leaf names the node (see [`node_id_of`]).
    pub fn new(
        security_key: &[u8],
        prefix: &str,
        node_id: &str,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<Admission, AdmissionError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = derive_ca_key(security_key, prefix)?;
        let ca_params = ca_params(prefix);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ED25519)?;
        let leaf_cert = leaf_params(node_id)?.signed_by(&leaf_key, &issuer)?;
        let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
        let key_der = || -> PrivateKeyDer<'static> {
            PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into()
        };

        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .map_err(|e| AdmissionError::Verifier(e.to_string()))?;
        let roots = Arc::new(roots);
        let alpn = alpn(prefix);

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| AdmissionError::Verifier(e.to_string()))?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key_der())?;
        server_tls.alpn_protocols = vec![alpn.clone()];
        // Peers never resume: a fresh handshake proves the key every time.
        server_tls.max_early_data_size = 0;
        server_tls.send_tls13_tickets = 0;

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der())?;
        client_tls.alpn_protocols = vec![alpn];
        client_tls.enable_early_data = false;

        let server_quic = QuicServerConfig::try_from(server_tls)
            .map_err(|e| AdmissionError::Quic(e.to_string()))?;
        let client_quic = QuicClientConfig::try_from(client_tls)
            .map_err(|e| AdmissionError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(client_quic));
        client.transport_config(transport);
        Ok(Admission { server, client })
    }
}

/// HKDF-SHA256(ikm = key, salt = none, info = prefix) → Ed25519 seed, wrapped
/// in the fixed PKCS#8 v1 envelope rcgen and ring read.
fn derive_ca_key(security_key: &[u8], prefix: &str) -> Result<KeyPair, AdmissionError> {
    let info = [prefix.as_bytes()];
    let mut seed = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(security_key)
        .expand(&info, hkdf::HKDF_SHA256)
        .map_err(|_| AdmissionError::Derive("HKDF expand"))?
        .fill(&mut seed)
        .map_err(|_| AdmissionError::Derive("HKDF fill"))?;
    // RFC 8410 PrivateKeyInfo: version 0, algorithm id-Ed25519, the seed as
    // an OCTET STRING inside the privateKey OCTET STRING.
    const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut pkcs8 = Vec::with_capacity(48);
    pkcs8.extend_from_slice(&PKCS8_V1_ED25519_PREFIX);
    pkcs8.extend_from_slice(&seed);
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8),
        &PKCS_ED25519,
    )?)
}

/// Fixed CA parameters: every node must build the same subject so that the
/// issuer name in a peer's leaf matches the local trust anchor.
fn ca_params(prefix: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("pika cluster CA ({prefix})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The DNS name under which a leaf certificate names its node:
/// `{node_id}` + this. `.invalid` never resolves (RFC 6761).
pub const NODE_ID_SUFFIX: &str = ".node.pika.invalid";

fn leaf_params(node_id: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(vec![
        PEER_SERVER_NAME.to_string(),
        format!("{node_id}{NODE_ID_SUFFIX}"),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pika peer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// The node id a peer's leaf certificate names: what its handshake proved,
/// signed by the cluster's CA. A `Hello` claiming another id is refused.
pub fn node_id_of(leaf: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    cert.valid_dns_names()
        .find_map(|name| name.strip_suffix(NODE_ID_SUFFIX))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// The node id proven by `conn`'s handshake (the peer's leaf certificate).
pub fn proven_node_id(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().and_then(node_id_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_names_its_node() {
        let transport = Arc::new(quinn::TransportConfig::default());
        let ca_key = derive_ca_key(b"key", "pika").expect("a CA key");
        let issuer = Issuer::new(ca_params("pika"), ca_key);
        let leaf_key = KeyPair::generate_for(&PKCS_ED25519).expect("a key");
        let leaf = leaf_params("0123456789abcdef")
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("signed");
        assert_eq!(node_id_of(leaf.der()).as_deref(), Some("0123456789abcdef"));
        Admission::new(b"key", "pika", "0123456789abcdef", transport).expect("configs");
    }

    #[test]
    fn same_key_and_prefix_derive_the_same_ca() -> Result<(), AdmissionError> {
        let a = derive_ca_key(b"0123456789abcdef", "pika")?;
        let b = derive_ca_key(b"0123456789abcdef", "pika")?;
        let other_key = derive_ca_key(b"0123456789abcdeg", "pika")?;
        let other_prefix = derive_ca_key(b"0123456789abcdef", "pikb")?;
        assert_eq!(a.public_key_raw(), b.public_key_raw());
        assert_ne!(a.public_key_raw(), other_key.public_key_raw());
        assert_ne!(a.public_key_raw(), other_prefix.public_key_raw());
        Ok(())
    }

    #[test]
    fn key_strength_thresholds() {
        assert_eq!(KeyStrength::of(b""), KeyStrength::None);
        assert_eq!(KeyStrength::of(b"short"), KeyStrength::Weak);
        assert_eq!(KeyStrength::of(&[7u8; 16]), KeyStrength::Strong);
    }
}
