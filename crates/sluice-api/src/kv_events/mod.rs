//! vLLM's KV-cache events: what an engine publishes as its prefix cache changes, as plain
//! types, with the MessagePack both encodings in use are decoded from ([`decode_batch`]) and
//! encoded to ([`encode_batch`]), and the ZMQ frames around them ([`frames`]).
//!
//! A batch is `[ts, [event, ...], data_parallel_rank]` (older engines leave the rank out; a
//! future one may send a map `{ts, events, data_parallel_rank}`: both are read). An event is
//! either an array — its type name, then its fields in declaration order, trailing defaults
//! left out (the legacy form) — or a map with `"type"` and named fields (the current form).
//! Unknown keys, unknown trailing elements and unknown event types are skipped: the schema
//! has grown often and will again.
//!
//! Block hashes arrive as unsigned 64-bit integers, as signed ones (the same bits), or as a
//! 32-byte digest whose last 8 bytes, big-endian, are the integer form.

pub mod frames;
pub mod msgpack;

use msgpack::{Item, MsgpackError, Reader, Writer};
use thiserror::Error;

/// An engine's name for a block (the integer form of its hash).
pub type BlockHash = u64;

/// One published batch.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// When the engine made the batch (seconds since the epoch).
    pub ts: f64,
    pub events: Vec<KvEvent>,
    pub data_parallel_rank: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    BlockStored(BlockStored),
    BlockRemoved(BlockRemoved),
    /// The engine dropped its whole prefix cache (e.g. after a weight update).
    AllBlocksCleared,
    /// An event type this version does not know, by name: skipped, and counted.
    Other(String),
}

/// Full blocks entered the cache: a chain, the first block's parent `parent_block_hash`,
/// each next block's parent the one before it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    pub block_hashes: Vec<BlockHash>,
    /// `None`: the first block starts a sequence.
    pub parent_block_hash: Option<BlockHash>,
    /// The blocks' tokens, `block_hashes.len() × block_size` of them.
    pub token_ids: Vec<u32>,
    pub block_size: u32,
    pub lora_id: Option<i64>,
    /// Where the blocks live (`"GPU"`, `"CPU"`, ...); `None` from engines that do not say.
    pub medium: Option<String>,
    pub lora_name: Option<String>,
    /// The KV-cache group (hybrid models publish one stream of events per group).
    pub group_idx: Option<u64>,
    /// `"full_attention"`, `"sliding_window"`, ...; `None` from engines that do not say.
    pub kv_cache_spec_kind: Option<String>,
}

/// Blocks left the cache.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockRemoved {
    pub block_hashes: Vec<BlockHash>,
    pub medium: Option<String>,
    pub group_idx: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum KvEventError {
    #[error("not MessagePack: {0}")]
    Msgpack(#[from] MsgpackError),
    #[error("the batch is {0}, not an array or a map")]
    NotABatch(&'static str),
    #[error("the batch's `{field}` is not {expected}")]
    BatchField {
        field: &'static str,
        expected: &'static str,
    },
    #[error("the batch has no `{0}`")]
    MissingBatchField(&'static str),
    #[error("event {index}: {problem}")]
    Event { index: usize, problem: String },
    #[error("{0} bytes follow the batch")]
    Trailing(usize),
}

/// Which form events are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvEncoding {
    /// Each event an array: type name, then fields in order, trailing defaults left out.
    Legacy,
    /// Each event a map with `"type"` and named fields (vLLM since 2025).
    Current,
}

/// How block hashes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashForm {
    /// Unsigned 64-bit integers (vLLM's default).
    Int,
    /// 32-byte digests whose last 8 bytes are the hash
    /// (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`).
    Digest,
}

/// Positional fields of the legacy array form, after the type name.
const BLOCK_STORED_FIELDS: &[&str] = &[
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
const BLOCK_REMOVED_FIELDS: &[&str] = &["block_hashes", "medium", "group_idx"];

/// Decodes one batch's payload (the third frame of a live message).
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, KvEventError> {
    let mut r = Reader::new(payload);
    let mut ts = None;
    let mut events = None;
    let mut rank = None;
    match r.item()? {
        Item::Array(n) => {
            for i in 0..n {
                match i {
                    0 => ts = Some(read_ts(&mut r)?),
                    1 => events = Some(read_events(&mut r)?),
                    2 => rank = read_rank(&mut r)?,
                    _ => r.skip()?,
                }
            }
        }
        Item::Map(n) => {
            for _ in 0..n {
                match r.item()? {
                    Item::Str(b"ts") => ts = Some(read_ts(&mut r)?),
                    Item::Str(b"events") => events = Some(read_events(&mut r)?),
                    Item::Str(b"data_parallel_rank") => rank = read_rank(&mut r)?,
                    key => {
                        r.skip_rest(key)?;
                        r.skip()?;
                    }
                }
            }
        }
        other => return Err(KvEventError::NotABatch(kind(&other))),
    }
    if r.remaining() > 0 {
        return Err(KvEventError::Trailing(r.remaining()));
    }
    Ok(EventBatch {
        ts: ts.ok_or(KvEventError::MissingBatchField("ts"))?,
        events: events.ok_or(KvEventError::MissingBatchField("events"))?,
        data_parallel_rank: rank,
    })
}

fn kind(item: &Item<'_>) -> &'static str {
    match item {
        Item::Nil => "nil",
        Item::Bool(_) => "a boolean",
        Item::Uint(_) | Item::Int(_) => "an integer",
        Item::Float(_) => "a float",
        Item::Str(_) => "a string",
        Item::Bin(_) => "binary",
        Item::Array(_) => "an array",
        Item::Map(_) => "a map",
        Item::Ext(..) => "an extension",
    }
}

fn read_ts(r: &mut Reader<'_>) -> Result<f64, KvEventError> {
    match r.item()? {
        Item::Float(v) => Ok(v),
        Item::Uint(v) => Ok(v as f64),
        Item::Int(v) => Ok(v as f64),
        _ => Err(KvEventError::BatchField {
            field: "ts",
            expected: "a number",
        }),
    }
}

fn read_rank(r: &mut Reader<'_>) -> Result<Option<i64>, KvEventError> {
    match r.item()? {
        Item::Nil => Ok(None),
        Item::Uint(v) => Ok(Some(v.min(i64::MAX as u64) as i64)),
        Item::Int(v) => Ok(Some(v)),
        _ => Err(KvEventError::BatchField {
            field: "data_parallel_rank",
            expected: "an integer or nil",
        }),
    }
}

fn read_events(r: &mut Reader<'_>) -> Result<Vec<KvEvent>, KvEventError> {
    let n = match r.item()? {
        Item::Array(n) => n,
        _ => {
            return Err(KvEventError::BatchField {
                field: "events",
                expected: "an array",
            })
        }
    };
    // Never reserve by what the header claims: each event takes at least a byte.
    let mut events = Vec::with_capacity((n as usize).min(r.remaining()));
    for index in 0..n as usize {
        let event = read_event(r).map_err(|problem| match problem {
            EventProblem::Msgpack(e) => KvEventError::Msgpack(e),
            EventProblem::Shape(problem) => KvEventError::Event { index, problem },
        })?;
        events.push(event);
    }
    Ok(events)
}

enum EventProblem {
    Msgpack(MsgpackError),
    Shape(String),
}

impl From<MsgpackError> for EventProblem {
    fn from(e: MsgpackError) -> Self {
        EventProblem::Msgpack(e)
    }
}

fn shape(problem: impl Into<String>) -> EventProblem {
    EventProblem::Shape(problem.into())
}

/// An event's fields, whichever form they came in.
#[derive(Default)]
struct Fields {
    block_hashes: Option<Vec<BlockHash>>,
    parent_block_hash: Option<BlockHash>,
    token_ids: Option<Vec<u32>>,
    block_size: Option<u32>,
    lora_id: Option<i64>,
    medium: Option<String>,
    lora_name: Option<String>,
    group_idx: Option<u64>,
    kv_cache_spec_kind: Option<String>,
}

fn read_event(r: &mut Reader<'_>) -> Result<KvEvent, EventProblem> {
    let mut fields = Fields::default();
    let type_name = match r.item()? {
        Item::Array(0) => return Err(shape("an empty array")),
        Item::Array(n) => {
            let name = match r.item()? {
                Item::Str(s) => String::from_utf8_lossy(s).into_owned(),
                _ => {
                    return Err(shape(
                        "an array event whose first element is not its type name",
                    ))
                }
            };
            let names = match name.as_str() {
                "BlockStored" => BLOCK_STORED_FIELDS,
                "BlockRemoved" => BLOCK_REMOVED_FIELDS,
                _ => &[],
            };
            for i in 1..n as usize {
                match names.get(i - 1) {
                    Some(field) => read_field(r, field, &mut fields)?,
                    None => r.skip()?,
                }
            }
            name
        }
        Item::Map(n) => {
            let mut name = None;
            for _ in 0..n {
                match r.item()? {
                    Item::Str(b"type") => match r.item()? {
                        Item::Str(s) => name = Some(String::from_utf8_lossy(s).into_owned()),
                        _ => return Err(shape("`type` is not a string")),
                    },
                    Item::Str(key) => match std::str::from_utf8(key) {
                        Ok(key) => read_field(r, key, &mut fields)?,
                        Err(_) => r.skip()?,
                    },
                    other => {
                        r.skip_rest(other)?;
                        r.skip()?;
                    }
                }
            }
            name.ok_or_else(|| shape("a map event without `type`"))?
        }
        other => {
            return Err(shape(format!("{}, not an array or a map", kind(&other))));
        }
    };
    Ok(match type_name.as_str() {
        "BlockStored" => KvEvent::BlockStored(BlockStored {
            block_hashes: fields
                .block_hashes
                .ok_or_else(|| shape("BlockStored without block_hashes"))?,
            parent_block_hash: fields.parent_block_hash,
            token_ids: fields
                .token_ids
                .ok_or_else(|| shape("BlockStored without token_ids"))?,
            block_size: fields
                .block_size
                .ok_or_else(|| shape("BlockStored without block_size"))?,
            lora_id: fields.lora_id,
            medium: fields.medium,
            lora_name: fields.lora_name,
            group_idx: fields.group_idx,
            kv_cache_spec_kind: fields.kv_cache_spec_kind,
        }),
        "BlockRemoved" => KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: fields
                .block_hashes
                .ok_or_else(|| shape("BlockRemoved without block_hashes"))?,
            medium: fields.medium,
            group_idx: fields.group_idx,
        }),
        "AllBlocksCleared" => KvEvent::AllBlocksCleared,
        _ => KvEvent::Other(type_name),
    })
}

/// Reads the value of the field `name` into `fields` (or skips it, when it is not one the
/// consumer needs).
fn read_field(r: &mut Reader<'_>, name: &str, fields: &mut Fields) -> Result<(), EventProblem> {
    let wrong = |expected: &str, got: &Item<'_>| {
        shape(format!("`{name}` is {}, not {expected}", kind(got)))
    };
    match name {
        "block_hashes" => {
            let n = match r.item()? {
                Item::Array(n) => n,
                other => {
                    return Err(wrong("an array of hashes", &other));
                }
            };
            let mut hashes = Vec::with_capacity((n as usize).min(r.remaining()));
            for _ in 0..n {
                let item = r.item()?;
                hashes.push(hash(&item).ok_or_else(|| wrong("a list of hashes", &item))?);
            }
            fields.block_hashes = Some(hashes);
        }
        "parent_block_hash" => match r.item()? {
            Item::Nil => fields.parent_block_hash = None,
            item => {
                fields.parent_block_hash = Some(hash(&item).ok_or_else(|| wrong("a hash", &item))?)
            }
        },
        "token_ids" => {
            let n = match r.item()? {
                Item::Array(n) => n,
                other => {
                    return Err(wrong("an array of token ids", &other));
                }
            };
            let mut tokens = Vec::with_capacity((n as usize).min(r.remaining()));
            for _ in 0..n {
                match r.item()? {
                    Item::Uint(t) if t <= u32::MAX as u64 => tokens.push(t as u32),
                    other => {
                        return Err(shape(format!(
                            "`token_ids` holds {}, not a token id",
                            match other {
                                Item::Uint(_) | Item::Int(_) => "an integer out of range",
                                _ => kind(&other),
                            }
                        )));
                    }
                }
            }
            fields.token_ids = Some(tokens);
        }
        "block_size" => match r.item()? {
            Item::Uint(v) if v > 0 && v <= u32::MAX as u64 => fields.block_size = Some(v as u32),
            other => {
                return Err(wrong("a positive integer", &other));
            }
        },
        "lora_id" => match r.item()? {
            Item::Nil => fields.lora_id = None,
            Item::Uint(v) => fields.lora_id = Some(v.min(i64::MAX as u64) as i64),
            Item::Int(v) => fields.lora_id = Some(v),
            other => {
                return Err(wrong("an integer", &other));
            }
        },
        "group_idx" => match r.item()? {
            Item::Nil => fields.group_idx = None,
            Item::Uint(v) => fields.group_idx = Some(v),
            other => {
                return Err(wrong("a non-negative integer", &other));
            }
        },
        "medium" | "lora_name" | "kv_cache_spec_kind" => {
            let value = match r.item()? {
                Item::Nil => None,
                Item::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
                other => {
                    return Err(wrong("a string", &other));
                }
            };
            match name {
                "medium" => fields.medium = value,
                "lora_name" => fields.lora_name = value,
                _ => fields.kv_cache_spec_kind = value,
            }
        }
        _ => r.skip()?,
    }
    Ok(())
}

/// A block hash in any of the forms engines send.
fn hash(item: &Item<'_>) -> Option<BlockHash> {
    match *item {
        Item::Uint(v) => Some(v),
        Item::Int(v) => Some(v as u64),
        Item::Bin(b) if b.len() >= 8 => {
            let mut last = [0u8; 8];
            last.copy_from_slice(&b[b.len() - 8..]);
            Some(u64::from_be_bytes(last))
        }
        _ => None,
    }
}

/// Encodes a batch as an engine would publish it: `[ts, events, rank]`.
pub fn encode_batch(batch: &EventBatch, encoding: KvEncoding, hashes: HashForm) -> Vec<u8> {
    let mut w = Writer::default();
    w.array(3);
    w.f64(batch.ts);
    w.array(batch.events.len());
    for event in &batch.events {
        encode_event(&mut w, event, encoding, hashes);
    }
    match batch.data_parallel_rank {
        Some(rank) => w.int(rank),
        None => w.nil(),
    }
    w.buf
}

/// One field's value, written by the encoder.
enum Value<'a> {
    Hashes(&'a [BlockHash]),
    Hash(Option<BlockHash>),
    Tokens(&'a [u32]),
    Uint(Option<u64>),
    Int(Option<i64>),
    Str(Option<&'a str>),
}

impl Value<'_> {
    fn is_default(&self) -> bool {
        matches!(
            self,
            Value::Hash(None) | Value::Uint(None) | Value::Int(None) | Value::Str(None)
        )
    }

    fn write(&self, w: &mut Writer, hashes: HashForm) {
        let hash = |w: &mut Writer, h: BlockHash| match hashes {
            HashForm::Int => w.uint(h),
            HashForm::Digest => {
                let mut digest = [0u8; 32];
                // The rest of a digest: anything; the hash is its last 8 bytes.
                digest[..8].copy_from_slice(&h.rotate_left(17).to_be_bytes());
                digest[24..].copy_from_slice(&h.to_be_bytes());
                w.bin(&digest);
            }
        };
        match self {
            Value::Hashes(hs) => {
                w.array(hs.len());
                for h in *hs {
                    hash(w, *h);
                }
            }
            Value::Hash(Some(h)) => hash(w, *h),
            Value::Tokens(ts) => {
                w.array(ts.len());
                for t in *ts {
                    w.uint(*t as u64);
                }
            }
            Value::Uint(Some(v)) => w.uint(*v),
            Value::Int(Some(v)) => w.int(*v),
            Value::Str(Some(s)) => w.str(s),
            Value::Hash(None) | Value::Uint(None) | Value::Int(None) | Value::Str(None) => w.nil(),
        }
    }
}

fn encode_event(w: &mut Writer, event: &KvEvent, encoding: KvEncoding, hashes: HashForm) {
    let (name, fields): (&str, Vec<(&str, Value<'_>)>) = match event {
        KvEvent::BlockStored(e) => (
            "BlockStored",
            vec![
                ("block_hashes", Value::Hashes(&e.block_hashes)),
                ("parent_block_hash", Value::Hash(e.parent_block_hash)),
                ("token_ids", Value::Tokens(&e.token_ids)),
                ("block_size", Value::Uint(Some(e.block_size as u64))),
                ("lora_id", Value::Int(e.lora_id)),
                ("medium", Value::Str(e.medium.as_deref())),
                ("lora_name", Value::Str(e.lora_name.as_deref())),
                ("extra_keys", Value::Str(None)),
                ("group_idx", Value::Uint(e.group_idx)),
                (
                    "kv_cache_spec_kind",
                    Value::Str(e.kv_cache_spec_kind.as_deref()),
                ),
            ],
        ),
        KvEvent::BlockRemoved(e) => (
            "BlockRemoved",
            vec![
                ("block_hashes", Value::Hashes(&e.block_hashes)),
                ("medium", Value::Str(e.medium.as_deref())),
                ("group_idx", Value::Uint(e.group_idx)),
            ],
        ),
        KvEvent::AllBlocksCleared => ("AllBlocksCleared", Vec::new()),
        KvEvent::Other(name) => (name.as_str(), Vec::new()),
    };
    match encoding {
        KvEncoding::Legacy => {
            // Trailing defaults are left out; a default before a set field is written nil.
            let kept = fields
                .iter()
                .rposition(|(_, v)| !v.is_default())
                .map_or(0, |i| i + 1);
            w.array(1 + kept);
            w.str(name);
            for (_, v) in &fields[..kept] {
                v.write(w, hashes);
            }
        }
        KvEncoding::Current => {
            let set: Vec<&(&str, Value<'_>)> =
                fields.iter().filter(|(_, v)| !v.is_default()).collect();
            w.map(1 + set.len());
            w.str("type");
            w.str(name);
            for (key, v) in set {
                w.str(key);
                v.write(w, hashes);
            }
        }
    }
}

#[cfg(test)]
mod tests;
