use super::*;

fn stored(hashes: &[u64], parent: Option<u64>, block_size: u32) -> BlockStored {
    BlockStored {
        block_hashes: hashes.to_vec(),
        parent_block_hash: parent,
        token_ids: (0..hashes.len() as u32 * block_size).collect(),
        block_size,
        medium: Some("GPU".into()),
        ..BlockStored::default()
    }
}

/// `[1.5, [["BlockStored", [1, 2], nil, [1, 2, 3, 4], 2, nil, "GPU"]], 0]`, byte by byte.
const LEGACY: &[u8] = &[
    0x93, // array of 3: the batch
    0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,    // ts, float 64
    0x91, // events: array of 1
    0x97, // the event: array of 7
    0xab, b'B', b'l', b'o', b'c', b'k', b'S', b't', b'o', b'r', b'e', b'd', //
    0x92, 0x01, 0x02, // block_hashes
    0xc0, // parent_block_hash: nil
    0x94, 0x01, 0x02, 0x03, 0x04, // token_ids
    0x02, // block_size
    0xc0, // lora_id: nil
    0xa3, b'G', b'P', b'U', // medium
    0x00, // data_parallel_rank
];

#[test]
fn a_hand_built_legacy_batch_decodes() {
    let batch = decode_batch(LEGACY).unwrap();
    assert_eq!(batch.ts, 1.5);
    assert_eq!(batch.data_parallel_rank, Some(0));
    assert_eq!(
        batch.events,
        vec![KvEvent::BlockStored(BlockStored {
            token_ids: vec![1, 2, 3, 4],
            ..stored(&[1, 2], None, 2)
        })]
    );
}

/// `{"ts": 2, "events": [{"future": {"a": [1]}, "block_hashes": [u64::MAX, -1],
/// "type": "BlockRemoved", "medium": "CPU"}, {"type": "AllBlocksCleared"},
/// {"type": "Evicted"}], "extra": nil}`: a map batch, a map event whose type comes last,
/// an unknown key holding a container, a hash as a signed integer, an unknown event type.
const MAP: &[u8] = &[
    0x83, // map of 3
    0xa2, b't', b's', 0x02, //
    0xa6, b'e', b'v', b'e', b'n', b't', b's', 0x93, //
    0x84, // the first event: map of 4
    0xa6, b'f', b'u', b't', b'u', b'r', b'e', 0x81, 0xa1, b'a', 0x91, 0x01, //
    0xac, b'b', b'l', b'o', b'c', b'k', b'_', b'h', b'a', b's', b'h', b'e', b's', //
    0x92, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, //
    0xa4, b't', b'y', b'p', b'e', //
    0xac, b'B', b'l', b'o', b'c', b'k', b'R', b'e', b'm', b'o', b'v', b'e', b'd', //
    0xa6, b'm', b'e', b'd', b'i', b'u', b'm', 0xa3, b'C', b'P', b'U', //
    0x81, 0xa4, b't', b'y', b'p', b'e', // the second: map of 1
    0xb0, b'A', b'l', b'l', b'B', b'l', b'o', b'c', b'k', b's', b'C', b'l', b'e', b'a', b'r', b'e',
    b'd', //
    0x81, 0xa4, b't', b'y', b'p', b'e', 0xa7, b'E', b'v', b'i', b'c', b't', b'e', b'd', //
    0xa5, b'e', b'x', b't', b'r', b'a', 0xc0,
];

#[test]
fn a_hand_built_map_batch_decodes_skipping_what_it_does_not_know() {
    let batch = decode_batch(MAP).unwrap();
    assert_eq!(batch.ts, 2.0);
    assert_eq!(batch.data_parallel_rank, None);
    assert_eq!(
        batch.events,
        vec![
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![u64::MAX, u64::MAX],
                medium: Some("CPU".into()),
                group_idx: None,
            }),
            KvEvent::AllBlocksCleared,
            KvEvent::Other("Evicted".into()),
        ]
    );
}

#[test]
fn every_encoding_and_hash_form_round_trips() {
    let batch = EventBatch {
        ts: 1_795_312_682.8,
        events: vec![
            KvEvent::BlockStored(stored(&[1_349_911_977_148_170_700, u64::MAX - 3], None, 16)),
            KvEvent::BlockStored(BlockStored {
                lora_id: Some(3),
                lora_name: Some("sql".into()),
                group_idx: Some(1),
                kv_cache_spec_kind: Some("sliding_window".into()),
                ..stored(&[9], Some(u64::MAX - 3), 16)
            }),
            KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: vec![9],
                medium: None,
                group_idx: Some(2),
            }),
            KvEvent::AllBlocksCleared,
        ],
        data_parallel_rank: Some(1),
    };
    for encoding in [KvEncoding::Legacy, KvEncoding::Current] {
        for hashes in [HashForm::Int, HashForm::Digest] {
            let bytes = encode_batch(&batch, encoding, hashes);
            assert_eq!(
                decode_batch(&bytes).unwrap(),
                batch,
                "{encoding:?} {hashes:?}"
            );
        }
    }
}

#[test]
fn the_legacy_form_leaves_out_trailing_defaults_and_the_current_form_every_default() {
    let batch = EventBatch {
        ts: 0.0,
        events: vec![KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: vec![1],
            medium: None,
            group_idx: None,
        })],
        data_parallel_rank: None,
    };
    let legacy = encode_batch(&batch, KvEncoding::Legacy, HashForm::Int);
    // [ts, [["BlockRemoved", [1]]], nil]
    assert_eq!(&legacy[10..13], &[0x91, 0x92, 0xac]);
    let current = encode_batch(&batch, KvEncoding::Current, HashForm::Int);
    // [ts, [{"type": "BlockRemoved", "block_hashes": [1]}], nil]
    assert_eq!(&current[10..13], &[0x91, 0x82, 0xa4]);
}

#[test]
fn older_engines_two_element_batches_decode() {
    // [0, []]
    let batch = decode_batch(&[0x92, 0x00, 0x90]).unwrap();
    assert_eq!(batch.events, vec![]);
    assert_eq!(batch.data_parallel_rank, None);
}

#[test]
fn malformed_batches_say_what_is_wrong() {
    let err = |bytes: &[u8]| decode_batch(bytes).unwrap_err().to_string();
    assert_eq!(err(&[0xc0]), "the batch is nil, not an array or a map");
    assert_eq!(err(&[0x91, 0x00]), "the batch has no `events`");
    assert_eq!(
        err(&[0x92, 0xa1, b'x', 0x90]),
        "the batch's `ts` is not a number"
    );
    assert_eq!(err(&[0x92, 0x00, 0x90, 0x00]), "1 bytes follow the batch");
    assert!(err(&LEGACY[..LEGACY.len() - 1]).starts_with("not MessagePack: the payload ends"));
    assert_eq!(
        err(&[0xc1]),
        "not MessagePack: byte 0xc1 at 0 is not a MessagePack type"
    );
    // BlockStored whose block_size is a string.
    let mut bad = LEGACY.to_vec();
    let at = bad.len() - 7;
    assert_eq!(bad[at], 0x02);
    bad.splice(at..at + 1, [0xa1, b'2']);
    assert_eq!(
        err(&bad),
        "event 0: `block_size` is a string, not a positive integer"
    );
    // A 4-byte digest is not a hash.
    let removed = [
        0x92, 0x00, 0x91, 0x92, 0xac, b'B', b'l', b'o', b'c', b'k', b'R', b'e', b'm', b'o', b'v',
        b'e', b'd', 0x91, 0xc4, 0x04, 1, 2, 3, 4,
    ];
    assert_eq!(
        err(&removed),
        "event 0: `block_hashes` is binary, not a list of hashes"
    );
    // A header that claims four billion events costs nothing before it fails.
    assert!(err(&[0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff]).contains("ends"));
}

#[test]
fn nesting_is_bounded_without_recursion() {
    // An unknown key holding 100 000 nested arrays.
    let mut bytes = vec![0x82, 0xa2, b't', b's', 0x00, 0xa1, b'x'];
    bytes.extend(std::iter::repeat_n(0x91, 100_000));
    bytes.push(0xc0);
    assert_eq!(
        decode_batch(&bytes).unwrap_err(),
        KvEventError::Msgpack(MsgpackError::TooDeep)
    );
}
