//! The ZMQ messages KV events travel in.
//!
//! Live (PUB → SUB): three frames, `[topic, seq, payload]`; `seq` is 8 bytes big-endian,
//! from 0, one more per batch, per engine process.
//!
//! Replay (ROUTER on the engine, DEALER here): the request is `[empty, start_seq]`; the
//! answer is every buffered batch from `start_seq` on, then an end marker. Seen by the
//! DEALER (the ROUTER's identity frame removed):
//! - current engines: `[empty, topic, seq, payload]` per batch, end `[empty, empty, -1, empty]`;
//! - older engines: `[empty, seq, payload]` per batch, end `[empty, -1, empty]`;
//!
//! where `-1` is the sequence 0xFFFF_FFFF_FFFF_FFFF.

use thiserror::Error;

/// The sequence number that ends a replay.
pub const END_OF_REPLAY: u64 = u64::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("a live message has {0} frames, not 3 (topic, sequence, payload)")]
    LiveFrames(usize),
    #[error("a replay message has {0} frames, not 3 or 4")]
    ReplayFrames(usize),
    #[error("a replay message does not start with an empty frame")]
    ReplayDelimiter,
    #[error("the sequence frame is {0} bytes, not 8")]
    Sequence(usize),
}

/// One live batch, borrowed from its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveBatch<'a> {
    pub topic: &'a [u8],
    pub seq: u64,
    pub payload: &'a [u8],
}

/// One message of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMessage<'a> {
    Batch {
        seq: u64,
        payload: &'a [u8],
    },
    /// Everything buffered from the requested sequence on has been sent.
    End,
}

fn sequence(frame: &[u8]) -> Result<u64, FrameError> {
    let bytes: [u8; 8] = frame
        .try_into()
        .map_err(|_| FrameError::Sequence(frame.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Reads a live message's frames.
pub fn live<'a>(frames: &[&'a [u8]]) -> Result<LiveBatch<'a>, FrameError> {
    let [topic, seq, payload] = frames else {
        return Err(FrameError::LiveFrames(frames.len()));
    };
    Ok(LiveBatch {
        topic,
        seq: sequence(seq)?,
        payload,
    })
}

/// Reads a replay message's frames (either shape).
pub fn replay<'a>(frames: &[&'a [u8]]) -> Result<ReplayMessage<'a>, FrameError> {
    let (seq, payload) = match frames {
        [empty, _, seq, payload] | [empty, seq, payload] => {
            if !empty.is_empty() {
                return Err(FrameError::ReplayDelimiter);
            }
            (sequence(seq)?, *payload)
        }
        _ => return Err(FrameError::ReplayFrames(frames.len())),
    };
    Ok(if seq == END_OF_REPLAY {
        ReplayMessage::End
    } else {
        ReplayMessage::Batch { seq, payload }
    })
}

/// The frames that ask for a replay from `start_seq`.
pub fn replay_request(start_seq: u64) -> [Vec<u8>; 2] {
    [Vec::new(), start_seq.to_be_bytes().to_vec()]
}

/// The frames of a replayed batch, as a current engine sends them (for the mock engine).
pub fn replay_batch(topic: &[u8], seq: u64, payload: &[u8]) -> [Vec<u8>; 4] {
    [
        Vec::new(),
        topic.to_vec(),
        seq.to_be_bytes().to_vec(),
        payload.to_vec(),
    ]
}

/// The frames that end a replay, as a current engine sends them.
pub fn replay_end() -> [Vec<u8>; 4] {
    [
        Vec::new(),
        Vec::new(),
        END_OF_REPLAY.to_be_bytes().to_vec(),
        Vec::new(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_need_three_frames_and_an_eight_byte_sequence() {
        let seq = 7u64.to_be_bytes();
        let m = live(&[b"kv", &seq, b"\x93"]).unwrap();
        assert_eq!((m.topic, m.seq, m.payload), (&b"kv"[..], 7, &b"\x93"[..]));
        assert_eq!(live(&[b"kv", &seq]), Err(FrameError::LiveFrames(2)));
        assert_eq!(live(&[b"", b"\x01", b""]), Err(FrameError::Sequence(1)));
    }

    #[test]
    fn replays_are_read_in_both_shapes_with_their_end_marker() {
        let seq = 3u64.to_be_bytes();
        let end = END_OF_REPLAY.to_be_bytes();
        let current = replay_batch(b"kv", 3, b"P");
        let frames: Vec<&[u8]> = current.iter().map(Vec::as_slice).collect();
        assert_eq!(
            replay(&frames),
            Ok(ReplayMessage::Batch {
                seq: 3,
                payload: b"P"
            })
        );
        assert_eq!(
            replay(&[b"", &seq, b"P"]),
            Ok(ReplayMessage::Batch {
                seq: 3,
                payload: b"P"
            })
        );
        let current_end = replay_end();
        let frames: Vec<&[u8]> = current_end.iter().map(Vec::as_slice).collect();
        assert_eq!(replay(&frames), Ok(ReplayMessage::End));
        assert_eq!(replay(&[b"", &end, b""]), Ok(ReplayMessage::End));
        assert_eq!(
            replay(&[b"x", &seq, b"P"]),
            Err(FrameError::ReplayDelimiter)
        );
        assert_eq!(replay(&[b"", &seq]), Err(FrameError::ReplayFrames(2)));
        assert_eq!(replay_request(5), [vec![], 5u64.to_be_bytes().to_vec()]);
    }
}
