//! A restarted peer ends the connections of its former process at once.
//!
//! QUIC keeps a connection's state in the two processes only. When a node
//! is killed and started again on the same address, its peers' connections
//! to the old process look alive to them: what they send reaches the new
//! process, which knows none of those connection ids and drops it. Until
//! the idle timeout (about the heartbeat timeout) nothing they send the
//! node arrives: not the leader's heartbeats, not the `Diff`s. The node
//! hears no leader through its quiet time after boot and campaigns, and the
//! promise of its campaign fences the leader off; a rolling restart of one
//! follower moved the leadership in two restarts of three.
//!
//! QUIC's answer is the stateless reset: an endpoint that gets a packet for
//! a connection it does not know answers with a token that only the issuer
//! of that connection id can compute, and the peer closes the connection on
//! seeing it. With quinn's defaults the key behind those tokens, and the
//! key that tells this endpoint's connection ids from noise, are random per
//! process, so a new process cannot speak for the old one. Here both are
//! derived from the cluster's key, its prefix and the address the node's
//! peers dial (its advertised address). The new process resets the old
//! process's connections at the first packet each sends it (within a
//! heartbeat), and its peers dial again.
//!
//! The address, not the node id: a node whose data directory was wiped
//! comes back under a new node id, and a replaced pod may come back with
//! another's address. Either way the process now at the address is the
//! one the old connections' packets reach, and only it can end them. Keyed
//! by node id, a wiped node left its peers writing into the void until the
//! idle timeout, as before any of this.
//!
//! The tokens stay secret from anyone without the cluster's key: they are
//! HMACs under a key derived from it, and are only ever sent encrypted.
//! Without a key (no admission) they are derivable, as everything else then.

use std::sync::Arc;

use quinn_proto::HashedConnectionIdGenerator;
use ring::{hkdf, hmac};

use crate::admission::AdmissionError;

/// What the reset key and the connection id key are derived for, so that
/// no other use of the cluster's key shares them.
const PURPOSE: &[u8] = b"pika quic stateless reset v1";

/// The endpoint configuration of the node its peers dial at `address`:
/// the same keys in every process there.
pub(crate) fn endpoint_config(
    security_key: &[u8],
    prefix: &str,
    address: std::net::SocketAddr,
) -> Result<quinn::EndpointConfig, AdmissionError> {
    let keys = derive(security_key, prefix, &address.to_string())?;
    let reset_key = hmac::Key::new(hmac::HMAC_SHA256, &keys[..32]);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&keys[32..40]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(config)
}

/// HKDF-SHA256(ikm = key, info = purpose, prefix, address) → 40 bytes: the
/// reset key, then the connection id key.
fn derive(security_key: &[u8], prefix: &str, address: &str) -> Result<[u8; 40], AdmissionError> {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            40
        }
    }
    // Lengths first, so that ("ab", "c") and ("a", "bc") differ.
    let prefix_len = (prefix.len() as u64).to_le_bytes();
    let info = [PURPOSE, &prefix_len, prefix.as_bytes(), address.as_bytes()];
    let mut out = [0u8; 40];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(security_key)
        .expand(&info, Len)
        .map_err(|_| AdmissionError::Derive("HKDF expand"))?
        .fill(&mut out)
        .map_err(|_| AdmissionError::Derive("HKDF fill"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::derive;

    #[test]
    fn the_keys_are_the_addresss_own_and_the_same_in_each_process()
    -> Result<(), super::AdmissionError> {
        let a = derive(b"0123456789abcdef", "pika", "10.0.0.1:7946")?;
        assert_eq!(a, derive(b"0123456789abcdef", "pika", "10.0.0.1:7946")?);
        assert_ne!(a, derive(b"0123456789abcdef", "pika", "10.0.0.2:7946")?);
        assert_ne!(a, derive(b"0123456789abcdef", "pika", "10.0.0.1:7947")?);
        assert_ne!(a, derive(b"0123456789abcdeg", "pika", "10.0.0.1:7946")?);
        assert_ne!(a, derive(b"0123456789abcdef", "pikb", "10.0.0.1:7946")?);
        assert_ne!(
            derive(b"k", "ab", "c")?,
            derive(b"k", "a", "bc")?,
            "prefix and address are told apart"
        );
        Ok(())
    }
}
