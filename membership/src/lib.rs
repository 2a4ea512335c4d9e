//! pika's cluster membership: who my peers are and how to reach them.
//!
//! Not built yet. This crate will hold the QUIC endpoint with pre-shared-key
//! admission, DNS discovery and SWIM gossip (foca); see DESIGN.md, "Peer
//! transport". Until then a node with `cluster.enabled: true` runs standalone
//! and says so in its log.
