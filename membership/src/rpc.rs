//! The typed RPC surface replication builds on: an ordered bidirectional
//! QUIC stream carrying [`frame`]s.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{self, FrameDecoder, FrameError};
use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(SocketAddr, String),
    #[error("connection to {0} lost: {1}")]
    Connection(SocketAddr, quinn::ConnectionError),
    #[error("writing to {0}: {1}")]
    Write(SocketAddr, quinn::WriteError),
    #[error("reading from {0}: {1}")]
    Read(SocketAddr, quinn::ReadError),
    #[error("stream from {peer} ended inside a frame ({buffered} bytes buffered)")]
    Truncated { peer: SocketAddr, buffered: usize },
    #[error("membership is shut down")]
    Closed,
}

/// [`FramedStream::send_all`] writes once this much is encoded: enough for
/// hundreds of small messages, little next to a catch-up frame.
pub const COALESCE_BYTES: usize = 256 << 10;

/// One ordered, reliable, bidirectional stream to a member. Messages are
/// length-prefixed postcard frames with a protocol version; a frame above
/// the configured maximum is refused on both the sending and receiving side.
pub struct FramedStream {
    peer: SocketAddr,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    max_frame: usize,
    stats: Arc<Stats>,
    chunk: Vec<u8>,
    /// The node id the peer's certificate proves, if it names one.
    peer_node_id: Option<String>,
}

/// A stream a member opened to this node.
pub struct IncomingStream {
    pub peer: SocketAddr,
    pub stream: FramedStream,
}

impl FramedStream {
    pub(crate) fn new(
        peer: SocketAddr,
        (send, recv): (quinn::SendStream, quinn::RecvStream),
        max_frame: usize,
        stats: Arc<Stats>,
        peer_node_id: Option<String>,
    ) -> FramedStream {
        FramedStream {
            peer,
            send,
            recv,
            decoder: FrameDecoder::new(max_frame),
            max_frame,
            stats,
            chunk: vec![0; 64 * 1024],
            peer_node_id,
        }
    }

    /// The node id the peer proved in its handshake (its leaf certificate,
    /// signed by the cluster's CA). A node id the peer merely claims, in a
    /// message, must equal this one.
    pub fn peer_node_id(&self) -> Option<&str> {
        self.peer_node_id.as_deref()
    }

    /// The peer address of the member at the other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), RpcError> {
        let bytes = frame::encode(message, self.max_frame)?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| RpcError::Write(self.peer, e))?;
        Stats::bump(&self.stats.frames_out);
        Stats::add(&self.stats.frame_bytes_out, bytes.len());
        Ok(())
    }

    /// Sends several messages with as few stream writes as fit them in
    /// [`COALESCE_BYTES`]: each is its own frame (refused above the maximum
    /// like [`Self::send`]), but a burst of small messages costs one wake-up
    /// of the connection and as few packets as hold them.
    pub async fn send_all<T: Serialize>(&mut self, messages: &[T]) -> Result<(), RpcError> {
        let mut bytes = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            bytes.extend_from_slice(&frame::encode(message, self.max_frame)?);
            if bytes.len() >= COALESCE_BYTES || i + 1 == messages.len() {
                self.send
                    .write_all(&bytes)
                    .await
                    .map_err(|e| RpcError::Write(self.peer, e))?;
                Stats::add(&self.stats.frame_bytes_out, bytes.len());
                bytes.clear();
            }
        }
        Stats::add(&self.stats.frames_out, messages.len());
        Ok(())
    }

    /// The next message, or `None` when the peer finished the stream cleanly
    /// between two frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RpcError> {
        loop {
            if let Some(message) = self.decoder.decode()? {
                Stats::bump(&self.stats.frames_in);
                return Ok(Some(message));
            }
            match self
                .recv
                .read(&mut self.chunk)
                .await
                .map_err(|e| RpcError::Read(self.peer, e))?
            {
                Some(n) => {
                    Stats::add(&self.stats.frame_bytes_in, n);
                    self.decoder.push(&self.chunk[..n]);
                }
                None if self.decoder.buffered() == 0 => return Ok(None),
                None => {
                    return Err(RpcError::Truncated {
                        peer: self.peer,
                        buffered: self.decoder.buffered(),
                    });
                }
            }
        }
    }

    /// No more messages from this side; the peer's `recv` returns `None`.
    pub fn finish(&mut self) {
        // Finishing twice, or after the peer reset the stream, is harmless.
        let _ = self.send.finish();
    }
}
