//! The KV-event reader against a reference: `rmpv`, a general MessagePack implementation,
//! on generated input. The MessagePack reader must read every value as rmpv does and give
//! the same verdict on any bytes; `decode_batch` must give the same batch (or the same
//! refusal) as a plain reading of rmpv's value tree by the rules in `kv_events`' docs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rmpv::Value;
use sluice_api::kv_events::msgpack::{Item, MsgpackError, Reader};
use sluice_api::kv_events::{
    decode_batch, encode_batch, BlockRemoved, BlockStored, EventBatch, HashForm, KvEncoding,
    KvEvent, KvEventError,
};

// ---- the MessagePack reader ------------------------------------------------------------

/// Reads one whole value with our reader, as an rmpv value (floats as f64).
fn ours(r: &mut Reader<'_>) -> Option<Value> {
    Some(match r.item().ok()? {
        Item::Nil => Value::Nil,
        Item::Bool(b) => Value::Boolean(b),
        Item::Uint(v) => Value::from(v),
        Item::Int(v) => Value::from(v),
        Item::Float(v) => Value::F64(v),
        Item::Str(s) => Value::String(match std::str::from_utf8(s) {
            Ok(s) => s.into(),
            Err(_) => return ours_invalid_utf8(s),
        }),
        Item::Bin(b) => Value::Binary(b.to_vec()),
        Item::Array(n) => Value::Array((0..n).map(|_| ours(r)).collect::<Option<_>>()?),
        Item::Map(n) => Value::Map(
            (0..n)
                .map(|_| Some((ours(r)?, ours(r)?)))
                .collect::<Option<_>>()?,
        ),
        Item::Ext(k, b) => Value::Ext(k, b.to_vec()),
    })
}

fn ours_invalid_utf8(bytes: &[u8]) -> Option<Value> {
    // rmpv keeps the bytes of a string that is not UTF-8; compare on the bytes.
    Some(Value::Binary([b"<not utf-8>".as_slice(), bytes].concat()))
}

/// rmpv's reading, with f32 widened and non-UTF-8 strings marked as `ours` marks them.
fn normalised(v: Value) -> Value {
    match v {
        Value::F32(f) => Value::F64(f as f64),
        Value::String(s) if s.as_str().is_none() => {
            Value::Binary([b"<not utf-8>".as_slice(), s.as_bytes()].concat())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalised).collect()),
        Value::Map(pairs) => Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (normalised(k), normalised(v)))
                .collect(),
        ),
        other => other,
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Map(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| depth(k).max(depth(v)))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Boolean),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::F64),
        ".{0,40}".prop_map(|s: String| Value::String(s.into())),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::Binary),
        (any::<i8>(), prop::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(k, b)| Value::Ext(k, b)),
    ];
    leaf.prop_recursive(5, 64, 20, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            prop::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_value_reads_as_rmpv_wrote_it(v in value()) {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).unwrap();
        let mut r = Reader::new(&bytes);
        prop_assert_eq!(ours(&mut r), Some(normalised(v.clone())));
        prop_assert_eq!(r.remaining(), 0);
        let mut r = Reader::new(&bytes);
        prop_assert!(r.skip().is_ok());
        prop_assert_eq!(r.remaining(), 0, "skip ends where the value ends");
    }

    #[test]
    fn any_bytes_get_rmpvs_verdict(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let mut rest = &bytes[..];
        let reference = rmpv::decode::read_value(&mut rest).map(|v| (normalised(v), rest.len()));
        let mut r = Reader::new(&bytes);
        let read = ours(&mut r).map(|v| (v, r.remaining()));
        let mut s = Reader::new(&bytes);
        let skipped = s.skip().map(|()| s.remaining());
        // rmpv reads 0xc1, which the format reserves ("never used"), as nil; msgpack-python,
        // what engines publish with, refuses it, and so does ours.
        if matches!(skipped, Err(MsgpackError::Reserved { .. })) {
            return Ok(());
        }
        match reference {
            Ok((v, left)) if depth(&v) < 32 => {
                // Compared as printed: a NaN (e.g. the f32 0x7f800001) is not equal to
                // itself, but prints the same.
                prop_assert_eq!(format!("{read:?}"), format!("{:?}", Some((v, left))));
                prop_assert_eq!(skipped, Ok(left));
            }
            Ok(_) => {} // deeper than our bound: ours refuses, by design
            Err(_) => {
                prop_assert_eq!(read, None);
                prop_assert!(skipped.is_err());
            }
        }
    }
}

// ---- decode_batch against a plain reading of rmpv's tree ----------------------------------

const STORED: &[&str] = &[
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
];
const REMOVED: &[&str] = &["block_hashes", "medium", "group_idx"];

#[derive(Default)]
struct Fields {
    hashes: Option<Vec<u64>>,
    parent: Option<u64>,
    tokens: Option<Vec<u32>>,
    block_size: Option<u32>,
    lora_id: Option<i64>,
    medium: Option<String>,
    lora_name: Option<String>,
    group_idx: Option<u64>,
    kind: Option<String>,
}

fn hash(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => i.as_u64().or(i.as_i64().map(|x| x as u64)),
        Value::Binary(b) if b.len() >= 8 => {
            Some(u64::from_be_bytes(b[b.len() - 8..].try_into().unwrap()))
        }
        _ => None,
    }
}

fn text(v: &Value) -> Result<Option<String>, ()> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(String::from_utf8_lossy(s.as_bytes()).into_owned())),
        _ => Err(()),
    }
}

fn field(name: &str, v: &Value, f: &mut Fields) -> Result<(), ()> {
    match name {
        "block_hashes" => {
            f.hashes = Some(
                v.as_array()
                    .ok_or(())?
                    .iter()
                    .map(hash)
                    .collect::<Option<_>>()
                    .ok_or(())?,
            )
        }
        "parent_block_hash" => {
            f.parent = if v.is_nil() {
                None
            } else {
                Some(hash(v).ok_or(())?)
            }
        }
        "token_ids" => {
            f.tokens = Some(
                v.as_array()
                    .ok_or(())?
                    .iter()
                    .map(|t| {
                        t.as_u64()
                            .filter(|&t| t <= u32::MAX as u64)
                            .map(|t| t as u32)
                    })
                    .collect::<Option<_>>()
                    .ok_or(())?,
            )
        }
        "block_size" => {
            f.block_size = Some(
                v.as_u64()
                    .filter(|&s| s > 0 && s <= u32::MAX as u64)
                    .ok_or(())? as u32,
            )
        }
        "lora_id" => {
            f.lora_id = match v {
                Value::Nil => None,
                Value::Integer(i) => Some(i.as_i64().unwrap_or(i64::MAX)),
                _ => return Err(()),
            }
        }
        "group_idx" => {
            f.group_idx = if v.is_nil() {
                None
            } else {
                Some(v.as_u64().ok_or(())?)
            }
        }
        "medium" => f.medium = text(v)?,
        "lora_name" => f.lora_name = text(v)?,
        "kv_cache_spec_kind" => f.kind = text(v)?,
        _ => {}
    }
    Ok(())
}

fn event(v: &Value) -> Result<KvEvent, ()> {
    let mut f = Fields::default();
    let name = match v {
        Value::Array(items) => {
            let Some(Value::String(name)) = items.first() else {
                return Err(());
            };
            let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
            let names = match name.as_str() {
                "BlockStored" => STORED,
                "BlockRemoved" => REMOVED,
                _ => &[],
            };
            for (n, item) in names.iter().zip(&items[1..]) {
                field(n, item, &mut f)?;
            }
            name
        }
        Value::Map(pairs) => {
            let mut name = None;
            for (k, v) in pairs {
                match k {
                    Value::String(k) if k.as_bytes() == b"type" => match v {
                        Value::String(s) => {
                            name = Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => return Err(()),
                    },
                    Value::String(k) => {
                        if let Some(k) = k.as_str() {
                            field(k, v, &mut f)?;
                        }
                    }
                    _ => {}
                }
            }
            name.ok_or(())?
        }
        _ => return Err(()),
    };
    Ok(match name.as_str() {
        "BlockStored" => KvEvent::BlockStored(BlockStored {
            block_hashes: f.hashes.ok_or(())?,
            parent_block_hash: f.parent,
            token_ids: f.tokens.ok_or(())?,
            block_size: f.block_size.ok_or(())?,
            lora_id: f.lora_id,
            medium: f.medium,
            lora_name: f.lora_name,
            group_idx: f.group_idx,
            kv_cache_spec_kind: f.kind,
        }),
        "BlockRemoved" => KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: f.hashes.ok_or(())?,
            medium: f.medium,
            group_idx: f.group_idx,
        }),
        "AllBlocksCleared" => KvEvent::AllBlocksCleared,
        _ => KvEvent::Other(name),
    })
}

fn reference(bytes: &[u8]) -> Result<EventBatch, ()> {
    let mut rest = bytes;
    let v = rmpv::decode::read_value(&mut rest).map_err(|_| ())?;
    if !rest.is_empty() || depth(&v) >= 32 {
        return Err(());
    }
    let (mut ts, mut events, mut rank) = (None, None, None);
    let mut set = |key: &str, v: &Value| -> Result<(), ()> {
        match key {
            "ts" => {
                ts = Some(
                    v.as_f64()
                        .or(v.as_u64().map(|x| x as f64))
                        .or(v.as_i64().map(|x| x as f64))
                        .ok_or(())?,
                )
            }
            "events" => {
                events = Some(
                    v.as_array()
                        .ok_or(())?
                        .iter()
                        .map(event)
                        .collect::<Result<Vec<_>, ()>>()?,
                )
            }
            "data_parallel_rank" => {
                rank = match v {
                    Value::Nil => None,
                    Value::Integer(i) => Some(i.as_i64().unwrap_or(i64::MAX)),
                    _ => return Err(()),
                }
            }
            _ => {}
        }
        Ok(())
    };
    match &v {
        Value::Array(items) => {
            for (key, item) in ["ts", "events", "data_parallel_rank"].iter().zip(items) {
                set(key, item)?;
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Value::String(k) = k {
                    if let Ok(k) = std::str::from_utf8(k.as_bytes()) {
                        set(k, v)?;
                    }
                }
            }
        }
        _ => return Err(()),
    }
    Ok(EventBatch {
        ts: ts.ok_or(())?,
        events: events.ok_or(())?,
        data_parallel_rank: rank,
    })
}

fn batch() -> impl Strategy<Value = EventBatch> {
    let hashes = prop::collection::vec(any::<u64>(), 0..4);
    let stored = (
        hashes.clone(),
        any::<Option<u64>>(),
        1u32..4,
        any::<Option<i64>>(),
        any::<bool>(),
    )
        .prop_map(
            |(block_hashes, parent_block_hash, block_size, lora_id, gpu)| {
                KvEvent::BlockStored(BlockStored {
                    token_ids: (0..block_hashes.len() as u32 * block_size).collect(),
                    block_hashes,
                    parent_block_hash,
                    block_size,
                    lora_id,
                    medium: gpu.then(|| "GPU".to_owned()),
                    ..BlockStored::default()
                })
            },
        );
    let removed = (hashes, any::<Option<u64>>()).prop_map(|(block_hashes, group_idx)| {
        KvEvent::BlockRemoved(BlockRemoved {
            block_hashes,
            medium: None,
            group_idx,
        })
    });
    let event = prop_oneof![stored, removed, Just(KvEvent::AllBlocksCleared)];
    (
        prop::collection::vec(event, 0..4),
        any::<Option<i64>>(),
        0u32..2_000_000_000,
    )
        .prop_map(|(events, data_parallel_rank, ts)| EventBatch {
            ts: ts as f64 / 1000.0,
            events,
            data_parallel_rank,
        })
}

fn form() -> impl Strategy<Value = (KvEncoding, HashForm)> {
    (
        prop_oneof![Just(KvEncoding::Legacy), Just(KvEncoding::Current)],
        prop_oneof![Just(HashForm::Int), Just(HashForm::Digest)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn batches_round_trip_and_agree_with_the_reference(b in batch(), (e, h) in form()) {
        let bytes = encode_batch(&b, e, h);
        prop_assert_eq!(decode_batch(&bytes), Ok(b.clone()));
        prop_assert_eq!(reference(&bytes), Ok(b));
    }

    /// A batch with bytes changed, cut or inserted: never a panic, and the reference's verdict.
    #[test]
    fn damaged_batches_get_the_references_verdict(
        b in batch(),
        (e, h) in form(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = encode_batch(&b, e, h);
        for (at, byte, how) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        let ours = decode_batch(&bytes);
        if matches!(ours, Err(KvEventError::Msgpack(MsgpackError::Reserved { .. }))) {
            return Ok(()); // rmpv reads the reserved 0xc1 as nil (see above)
        }
        // Compared as printed: damage can make `ts` a NaN, equal to nothing, itself included.
        prop_assert_eq!(
            format!("{:?}", ours.clone().map_err(|_| ())),
            format!("{:?}", reference(&bytes)),
            "{:?}",
            ours
        );
    }
}
