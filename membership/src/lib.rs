//! pika's cluster membership: who my peers are and how to reach them.
//!
//! Built so far: [`frame`], the length-prefixed, versioned framing that peer
//! RPCs and replication will use on QUIC streams. Not built yet: the QUIC
//! endpoint with pre-shared-key admission, DNS discovery and SWIM gossip
//! (foca); see DESIGN.md, "Peer transport". Until then a node with
//! `cluster.enabled: true` runs standalone and says so in its log.

pub mod frame;
