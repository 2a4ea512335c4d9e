//! What rides QUIC datagrams between members: foca's SWIM packets and the
//! heartbeat that carries a member's metadata.
//!
//! `[u8 protocol version][u8 kind][payload]`. Anything else is dropped and
//! counted by the caller; decoding never panics (see the property test).

use serde::{Deserialize, Serialize};

use crate::frame::PROTOCOL_VERSION;
use crate::identity::{MemberMeta, PeerId};

const KIND_SWIM: u8 = 0;
const KIND_HEARTBEAT: u8 = 1;

/// Sent to every live member each heartbeat interval: proof of life that does
/// not depend on foca's probe order, and the sender's current metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: PeerId,
    pub meta: MemberMeta,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// A foca packet, handed to foca as is.
    Swim(&'a [u8]),
    Heartbeat(Heartbeat),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    #[error("datagram shorter than its 2-byte header")]
    Truncated,
    #[error("datagram of protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    UnknownVersion(u8),
    #[error("datagram of unknown kind {0}")]
    UnknownKind(u8),
    #[error("undecodable heartbeat: {0}")]
    Heartbeat(String),
}

pub fn encode_swim(packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packet.len() + 2);
    out.extend_from_slice(&[PROTOCOL_VERSION, KIND_SWIM]);
    out.extend_from_slice(packet);
    out
}

pub fn encode_heartbeat(heartbeat: &Heartbeat) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![PROTOCOL_VERSION, KIND_HEARTBEAT];
    postcard::to_io(heartbeat, &mut out)?;
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, DatagramError> {
    let [version, kind, payload @ ..] = bytes else {
        return Err(DatagramError::Truncated);
    };
    if *version != PROTOCOL_VERSION {
        return Err(DatagramError::UnknownVersion(*version));
    }
    match *kind {
        KIND_SWIM => Ok(Datagram::Swim(payload)),
        KIND_HEARTBEAT => {
            let (heartbeat, rest) = postcard::take_from_bytes::<Heartbeat>(payload)
                .map_err(|e| DatagramError::Heartbeat(e.to_string()))?;
            if !rest.is_empty() {
                return Err(DatagramError::Heartbeat(format!(
                    "{} trailing bytes",
                    rest.len()
                )));
            }
            Ok(Datagram::Heartbeat(heartbeat))
        }
        other => Err(DatagramError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            from: PeerId::new("n1", "127.0.1.1:5000".parse().expect("addr"), 3),
            meta: MemberMeta {
                http_addr: "127.0.1.1:8080".into(),
                role: "follower".into(),
                applied_revision: 42,
                epoch: 2,
            },
        }
    }

    #[test]
    fn heartbeat_round_trips() -> Result<(), postcard::Error> {
        let bytes = encode_heartbeat(&heartbeat())?;
        assert_eq!(decode(&bytes), Ok(Datagram::Heartbeat(heartbeat())));
        Ok(())
    }

    #[test]
    fn unknown_version_kind_and_truncation_are_errors() {
        assert_eq!(decode(&[PROTOCOL_VERSION]), Err(DatagramError::Truncated));
        assert_eq!(
            decode(&[PROTOCOL_VERSION + 1, KIND_SWIM, 0]),
            Err(DatagramError::UnknownVersion(PROTOCOL_VERSION + 1))
        );
        assert_eq!(
            decode(&[PROTOCOL_VERSION, 9]),
            Err(DatagramError::UnknownKind(9))
        );
    }

    #[test]
    fn truncated_heartbeat_is_an_error() -> Result<(), postcard::Error> {
        let bytes = encode_heartbeat(&heartbeat())?;
        for cut in 2..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }
    }
}
