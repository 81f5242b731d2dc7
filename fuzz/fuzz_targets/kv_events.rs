//! vLLM KV-event payloads and ZMQ frames from a hostile or broken engine: the decoder never
//! panics, and what it accepts survives our own encoder in every encoding and hash form
//! (decoded again, the same events: the router can trust its own round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_api::kv_events::{decode_batch, encode_batch, frames, HashForm, KvEncoding, KvEvent};

fuzz_target!(|data: &[u8]| {
    // The frames a subscriber reads: split the input at 0xff bytes into up to 4 frames.
    let parts: Vec<&[u8]> = data.splitn(4, |b| *b == 0xff).collect();
    let _ = frames::live(&parts);
    let _ = frames::replay(&parts);

    let Ok(batch) = decode_batch(data) else {
        return;
    };
    let known: Vec<&KvEvent> = batch
        .events
        .iter()
        .filter(|e| !matches!(e, KvEvent::Other(_)))
        .collect();
    for encoding in [KvEncoding::Legacy, KvEncoding::Current] {
        for hashes in [HashForm::Int, HashForm::Digest] {
            let again = decode_batch(&encode_batch(&batch, encoding, hashes)).unwrap_or_else(|e| {
                panic!("our own encoding ({encoding:?}, {hashes:?}) did not decode: {e}")
            });
            let again_known: Vec<&KvEvent> = again
                .events
                .iter()
                .filter(|e| !matches!(e, KvEvent::Other(_)))
                .collect();
            assert_eq!(known, again_known, "{encoding:?}, {hashes:?}");
            assert_eq!(batch.ts.to_bits(), again.ts.to_bits());
            assert_eq!(batch.data_parallel_rank, again.data_parallel_rank);
        }
    }
});
