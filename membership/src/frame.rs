//! Framing for peer streams: `[u32 length, big-endian][u8 version][postcard]`.
//!
//! The length counts the version byte and the payload. The version lets two
//! pika releases refuse each other's frames cleanly instead of misreading
//! them. A maximum frame size bounds what a peer can make us buffer: a
//! length over it is an error as soon as the 4-byte header arrives, before
//! any of the body is read.
//!
//! [`FrameDecoder`] is sans-IO: feed it bytes as they arrive, take whole
//! messages out. Any error leaves the stream unusable (the caller resets it):
//! after a bad frame there is no trustworthy place to resume.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The wire protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default largest frame: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

const HEADER: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame has length 0 (no version byte)")]
    Empty,
    #[error("frame has protocol version {got}; this node speaks {PROTOCOL_VERSION}")]
    UnknownVersion { got: u8 },
    #[error("malformed frame payload: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(message: &T, max_frame: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER];
    out.push(PROTOCOL_VERSION);
    let mut out = postcard::to_extend(message, out)?;
    let len = out.len() - HEADER;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: max_frame,
    })?;
    out[..HEADER].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Bytes received; those before `start` are consumed.
    buffer: Vec<u8>,
    /// Where the next frame begins. Consumed bytes are dropped when the
    /// buffer empties or before a push once they are half of it: dropping
    /// each frame as it was decoded moved the rest of the buffer every
    /// time, quadratic in the frames one read brings (a 64 KiB read of
    /// 10-byte frames moved about 200 MB).
    start: usize,
    max_frame: usize,
}

/// A buffer this large is given back once it empties: one large frame
/// would otherwise keep its capacity for the stream's life.
const KEEP_CAPACITY: usize = 1 << 20;

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buffer: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed as whole frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn decode<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let rest = &self.buffer[self.start..];
        let Some(header) = rest.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if rest.len() < HEADER + len {
            return Ok(None);
        }
        // Decode in place: copying the frame out first cost a third of
        // decoding a large diff.
        let message = Self::message(&rest[HEADER..HEADER + len]);
        self.start += HEADER + len;
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
            if self.buffer.capacity() > KEEP_CAPACITY {
                self.buffer.shrink_to(KEEP_CAPACITY / 16);
            }
        }
        message.map(Some)
    }

    fn message<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
        let (&version, payload) = frame.split_first().ok_or(FrameError::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnknownVersion { got: version });
        }
        // A payload with trailing bytes is as suspect as a short one.
        let (message, rest) = postcard::take_from_bytes(payload)?;
        if !rest.is_empty() {
            return Err(FrameError::Malformed(
                postcard::Error::DeserializeBadEncoding,
            ));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Message {
        Ping(u64),
        Data { key: String, bytes: Vec<u8> },
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            any::<u64>().prop_map(Message::Ping),
            (".{0,20}", prop::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(key, bytes)| Message::Data { key, bytes }),
        ]
    }

    #[test]
    fn oversized_frames_are_refused_on_both_sides() {
        let big = Message::Data {
            key: "k".into(),
            bytes: vec![7; 1000],
        };
        assert!(matches!(
            encode(&big, 100),
            Err(FrameError::TooLarge { max: 100, .. })
        ));
        let frame = encode(&big, DEFAULT_MAX_FRAME).unwrap();
        let mut d = FrameDecoder::new(100);
        // The header alone is enough to refuse it: nothing more is buffered.
        d.push(&frame[..HEADER]);
        assert!(matches!(
            d.decode::<Message>(),
            Err(FrameError::TooLarge { max: 100, .. })
        ));
    }

    #[test]
    fn unknown_versions_and_empty_frames_are_refused() {
        let mut frame = encode(&Message::Ping(1), DEFAULT_MAX_FRAME).unwrap();
        frame[HEADER] = PROTOCOL_VERSION + 1;
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&frame);
        assert!(matches!(
            d.decode::<Message>(),
            Err(FrameError::UnknownVersion { got: 2 })
        ));
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&[0, 0, 0, 0]);
        assert!(matches!(d.decode::<Message>(), Err(FrameError::Empty)));
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_malformed() {
        let mut frame = encode(&Message::Ping(1), DEFAULT_MAX_FRAME).unwrap();
        frame.push(0);
        let len = (frame.len() - HEADER) as u32;
        frame[..HEADER].copy_from_slice(&len.to_be_bytes());
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&frame);
        assert!(matches!(
            d.decode::<Message>(),
            Err(FrameError::Malformed(_))
        ));
    }

    /// Many small frames in one push decode in order, and what is left
    /// over is kept for the next push.
    #[test]
    fn many_frames_in_one_push_then_a_split_one() {
        let frames: Vec<u8> = (0..10_000u64)
            .flat_map(|i| encode(&Message::Ping(i), DEFAULT_MAX_FRAME).unwrap())
            .collect();
        let last = encode(&Message::Ping(u64::MAX), DEFAULT_MAX_FRAME).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
        d.push(&frames);
        d.push(&last[..2]);
        for i in 0..10_000u64 {
            assert_eq!(d.decode::<Message>().unwrap(), Some(Message::Ping(i)));
        }
        assert_eq!(d.decode::<Message>().unwrap(), None);
        assert_eq!(d.buffered(), 2);
        d.push(&last[2..]);
        assert_eq!(
            d.decode::<Message>().unwrap(),
            Some(Message::Ping(u64::MAX))
        );
        assert_eq!(d.buffered(), 0);
    }

    proptest! {
        /// Messages survive any split of the byte stream into chunks.
        #[test]
        fn round_trip_across_arbitrary_chunking(
            messages in prop::collection::vec(message(), 1..8),
            cuts in prop::collection::vec(1usize..64, 1..40),
        ) {
            let stream: Vec<u8> = messages
                .iter()
                .flat_map(|m| encode(m, DEFAULT_MAX_FRAME).unwrap())
                .collect();
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut out = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= stream.len() {
                    break;
                }
                let end = (at + cut).min(stream.len());
                d.push(&stream[at..end]);
                at = end;
                while let Some(m) = d.decode::<Message>().unwrap() {
                    out.push(m);
                }
            }
            prop_assert_eq!(out, messages);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// Arbitrary bytes never panic the decoder: each call yields a message, asks for more, or errors.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new(256);
            d.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                match d.decode::<Message>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// A truncated frame is never mistaken for a whole one.
        #[test]
        fn truncated_frames_wait_for_more(m in message(), keep in 0usize..1000) {
            let frame = encode(&m, DEFAULT_MAX_FRAME).unwrap();
            let keep = keep % frame.len();
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            d.push(&frame[..keep]);
            prop_assert!(d.decode::<Message>().unwrap().is_none());
            d.push(&frame[keep..]);
            prop_assert_eq!(d.decode::<Message>().unwrap(), Some(m));
        }
    }
}
