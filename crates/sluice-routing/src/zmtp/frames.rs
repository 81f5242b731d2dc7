//! ZMTP frames, decoded incrementally from whatever the socket delivered (sans I/O, so the
//! decoder is tested on any split of any bytes).
//!
//! A frame is a flags byte (bit 0 MORE, bit 1 LONG, bit 2 COMMAND; the other bits must be
//! zero), a size (one byte, or eight big-endian with LONG), then the body.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// The largest frame accepted; a larger size is refused before anything is allocated.
    pub max_frame_bytes: usize,
    pub max_frames_per_message: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            // A vLLM batch of a thousand 16-token blocks is about 60 KB.
            max_frame_bytes: 16 << 20,
            // Live batches are 3 frames, replayed ones 4.
            max_frames_per_message: 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub more: bool,
    pub command: bool,
    pub body: Bytes,
}

pub struct FrameDecoder {
    buf: BytesMut,
    limits: FrameLimits,
}

impl FrameDecoder {
    pub fn new(limits: FrameLimits) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            limits,
        }
    }

    /// Bytes received and not yet decoded. At most one frame's worth plus what one read
    /// brought: [`FrameDecoder::next`] takes frames as soon as they are whole.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` while more bytes are needed, or why the stream is broken
    /// (after which the connection must be dropped).
    #[allow(clippy::should_implement_trait)] // fallible, unlike Iterator::next
    pub fn next(&mut self) -> Result<Option<Frame>, String> {
        let Some(&flags) = self.buf.first() else {
            return Ok(None);
        };
        if flags & !0b111 != 0 {
            return Err(format!("frame flags 0x{flags:02x} set reserved bits"));
        }
        let (more, long, command) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
        if more && command {
            return Err("a command frame marked MORE".into());
        }
        let header = if long { 9 } else { 2 };
        if self.buf.len() < header {
            return Ok(None);
        }
        let size = if long {
            u64::from_be_bytes(self.buf[1..9].try_into().unwrap_or([0xff; 8]))
        } else {
            self.buf[1] as u64
        };
        if size > self.limits.max_frame_bytes as u64 {
            return Err(format!(
                "a frame of {size} bytes, more than the {} allowed",
                self.limits.max_frame_bytes
            ));
        }
        let size = size as usize;
        if self.buf.len() < header + size {
            // Room for the rest of this frame only (bounded above).
            self.buf.reserve(header + size - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(header);
        Ok(Some(Frame {
            more,
            command,
            body: self.buf.split_to(size).freeze(),
        }))
    }
}

/// One frame's bytes.
pub fn encode(body: &[u8], more: bool, command: bool) -> Vec<u8> {
    let long = body.len() > 255;
    let flags = more as u8 | (long as u8) << 1 | (command as u8) << 2;
    let mut out = Vec::with_capacity(body.len() + 9);
    out.push(flags);
    if long {
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_frame_bytes: 1_000,
        max_frames_per_message: 8,
    };

    /// The specification read plainly over the whole input: the frames it holds, and whether
    /// it ends in a refusal (`Err`) or mid-frame / cleanly (`Ok`).
    fn reference(bytes: &[u8]) -> (Vec<Frame>, Result<(), ()>) {
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let flags = bytes[at];
            if flags > 7 || flags & 5 == 5 {
                return (frames, Err(()));
            }
            let long = flags & 2 != 0;
            let header = if long { 9 } else { 2 };
            if bytes.len() < at + header {
                break;
            }
            let size = if long {
                let mut s = 0u64;
                for b in &bytes[at + 1..at + 9] {
                    s = s << 8 | *b as u64;
                }
                s
            } else {
                bytes[at + 1] as u64
            };
            if size > 1_000 {
                return (frames, Err(()));
            }
            let end = at + header + size as usize;
            if bytes.len() < end {
                break;
            }
            frames.push(Frame {
                more: flags & 1 != 0,
                command: flags & 4 != 0,
                body: Bytes::copy_from_slice(&bytes[at + header..end]),
            });
            at = end;
        }
        (frames, Ok(()))
    }

    fn decode_in_pieces(bytes: &[u8], cuts: &[usize]) -> (Vec<Frame>, Result<(), ()>) {
        let mut d = FrameDecoder::new(LIMITS);
        let mut frames = Vec::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        for w in points.windows(2) {
            d.feed(&bytes[w[0]..w[1]]);
            loop {
                match d.next() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => return (frames, Err(())),
                }
            }
            assert!(d.buffered() <= 1_009 + bytes.len().min(w[1] - w[0]));
        }
        (frames, Ok(()))
    }

    fn frame() -> impl Strategy<Value = (Vec<u8>, bool, bool)> {
        (
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..10),
                prop::collection::vec(any::<u8>(), 250..400)
            ],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(body, more, command)| (body, more && !command, command))
    }

    proptest! {
        #[test]
        fn frames_in_any_pieces_decode_as_encoded(
            frames in prop::collection::vec(frame(), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let bytes: Vec<u8> = frames.iter().flat_map(|(b, m, c)| encode(b, *m, *c)).collect();
            let want: Vec<Frame> = frames
                .iter()
                .map(|(b, m, c)| Frame { more: *m, command: *c, body: Bytes::copy_from_slice(b) })
                .collect();
            prop_assert_eq!(decode_in_pieces(&bytes, &cuts), (want, Ok(())));
        }

        #[test]
        fn any_bytes_get_the_references_verdict(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            prop_assert_eq!(decode_in_pieces(&bytes, &cuts), reference(&bytes));
        }
    }

    #[test]
    fn a_huge_size_is_refused_before_any_allocation() {
        let mut d = FrameDecoder::new(LIMITS);
        d.feed(&[0x02, 0x40, 0, 0, 0, 0, 0, 0, 0]);
        let e = d.next().unwrap_err();
        assert!(e.contains("more than the 1000 allowed"), "{e}");
        assert!(d.buf.capacity() < 1_000);
    }
}
