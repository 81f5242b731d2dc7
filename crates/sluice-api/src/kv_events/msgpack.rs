//! Just enough MessagePack for KV events: a reader over a borrowed slice that never
//! allocates by what a length field claims (a hostile peer's `array 32: 4 294 967 295`
//! costs nothing until that many values actually arrive), nests only so deep, and a writer.
//!
//! The reader is checked against `rmpv` (a general MessagePack implementation) on generated
//! input: same values, same verdict (`tests/kv_events_oracle.rs`).

use thiserror::Error;

/// Containers nest at most this deep (vLLM's deepest is 4: batch, events, event, extra keys).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MsgpackError {
    #[error("the payload ends inside a value (at byte {0})")]
    Truncated(usize),
    #[error("byte 0x{byte:02x} at {at} is not a MessagePack type")]
    Reserved { byte: u8, at: usize },
    #[error("values nest deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// One MessagePack item: a scalar, or the head of a container whose elements follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    Nil,
    Bool(bool),
    /// A non-negative integer (any width).
    Uint(u64),
    /// A negative integer (any width).
    Int(i64),
    Float(f64),
    /// String bytes, not checked to be UTF-8 (the caller decides whether it cares).
    Str(&'a [u8]),
    Bin(&'a [u8]),
    /// An array of this many values (which follow).
    Array(u32),
    /// A map of this many key-value pairs (which follow).
    Map(u32),
    Ext(i8, &'a [u8]),
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgpackError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(MsgpackError::Truncated(self.buf.len()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], MsgpackError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len8(&mut self) -> Result<usize, MsgpackError> {
        Ok(self.be::<1>()?[0] as usize)
    }
    fn len16(&mut self) -> Result<usize, MsgpackError> {
        Ok(u16::from_be_bytes(self.be()?) as usize)
    }
    fn len32(&mut self) -> Result<usize, MsgpackError> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    fn ext(&mut self, len: usize) -> Result<Item<'a>, MsgpackError> {
        let kind = self.be::<1>()?[0] as i8;
        Ok(Item::Ext(kind, self.take(len)?))
    }

    /// The next item. A container's elements are the items after it.
    pub fn item(&mut self) -> Result<Item<'a>, MsgpackError> {
        let at = self.pos;
        let byte = self.be::<1>()?[0];
        Ok(match byte {
            0x00..=0x7f => Item::Uint(byte as u64),
            0x80..=0x8f => Item::Map((byte & 0x0f) as u32),
            0x90..=0x9f => Item::Array((byte & 0x0f) as u32),
            0xa0..=0xbf => Item::Str(self.take((byte & 0x1f) as usize)?),
            0xc0 => Item::Nil,
            0xc1 => return Err(MsgpackError::Reserved { byte, at }),
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xc4 => {
                let n = self.len8()?;
                Item::Bin(self.take(n)?)
            }
            0xc5 => {
                let n = self.len16()?;
                Item::Bin(self.take(n)?)
            }
            0xc6 => {
                let n = self.len32()?;
                Item::Bin(self.take(n)?)
            }
            0xc7 => {
                let n = self.len8()?;
                self.ext(n)?
            }
            0xc8 => {
                let n = self.len16()?;
                self.ext(n)?
            }
            0xc9 => {
                let n = self.len32()?;
                self.ext(n)?
            }
            0xca => Item::Float(f32::from_be_bytes(self.be()?) as f64),
            0xcb => Item::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Item::Uint(u8::from_be_bytes(self.be()?) as u64),
            0xcd => Item::Uint(u16::from_be_bytes(self.be()?) as u64),
            0xce => Item::Uint(u32::from_be_bytes(self.be()?) as u64),
            0xcf => Item::Uint(u64::from_be_bytes(self.be()?)),
            0xd0 => int(i8::from_be_bytes(self.be()?) as i64),
            0xd1 => int(i16::from_be_bytes(self.be()?) as i64),
            0xd2 => int(i32::from_be_bytes(self.be()?) as i64),
            0xd3 => int(i64::from_be_bytes(self.be()?)),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.len8()?;
                Item::Str(self.take(n)?)
            }
            0xda => {
                let n = self.len16()?;
                Item::Str(self.take(n)?)
            }
            0xdb => {
                let n = self.len32()?;
                Item::Str(self.take(n)?)
            }
            0xdc => Item::Array(self.len16()? as u32),
            0xdd => Item::Array(self.len32()? as u32),
            0xde => Item::Map(self.len16()? as u32),
            0xdf => Item::Map(self.len32()? as u32),
            0xe0..=0xff => Item::Int(byte as i8 as i64),
        })
    }

    /// Skips one whole value (a container with everything in it), at most `MAX_DEPTH` deep.
    /// Iterative: a pending count per open container, so hostile nesting costs no stack.
    pub fn skip(&mut self) -> Result<(), MsgpackError> {
        let first = self.item()?;
        self.skip_rest(first)
    }

    /// Skips what follows `item` (already read) to the end of its value.
    pub fn skip_rest(&mut self, item: Item<'a>) -> Result<(), MsgpackError> {
        // Values still to read in each open container, innermost last.
        let mut pending = [0u64; MAX_DEPTH];
        let mut depth = 0;
        let mut item = item;
        loop {
            let children = match item {
                Item::Array(n) => n as u64,
                Item::Map(n) => 2 * n as u64,
                _ => 0,
            };
            if children > 0 {
                if depth == MAX_DEPTH {
                    return Err(MsgpackError::TooDeep);
                }
                pending[depth] = children;
                depth += 1;
            }
            while depth > 0 && pending[depth - 1] == 0 {
                depth -= 1;
            }
            if depth == 0 {
                return Ok(());
            }
            pending[depth - 1] -= 1;
            item = self.item()?;
        }
    }
}

fn int(v: i64) -> Item<'static> {
    // Signed markers carrying a non-negative value read as the same number as an unsigned one.
    if v >= 0 {
        Item::Uint(v as u64)
    } else {
        Item::Int(v)
    }
}

/// Appends MessagePack to a `Vec`, always in the smallest form (as msgpack-python does).
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn nil(&mut self) {
        self.buf.push(0xc0);
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { 0xc3 } else { 0xc2 });
    }

    pub fn uint(&mut self, v: u64) {
        match v {
            0..=0x7f => self.buf.push(v as u8),
            0x80..=0xff => self.buf.extend_from_slice(&[0xcc, v as u8]),
            0x100..=0xffff => {
                self.buf.push(0xcd);
                self.buf.extend_from_slice(&(v as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.buf.push(0xce);
                self.buf.extend_from_slice(&(v as u32).to_be_bytes());
            }
            _ => {
                self.buf.push(0xcf);
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    pub fn int(&mut self, v: i64) {
        if v >= 0 {
            return self.uint(v as u64);
        }
        if v >= -32 {
            self.buf.push(v as i8 as u8);
        } else if v >= i8::MIN as i64 {
            self.buf.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i16::MIN as i64 {
            self.buf.push(0xd1);
            self.buf.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i32::MIN as i64 {
            self.buf.push(0xd2);
            self.buf.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            self.buf.push(0xd3);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn f64(&mut self, v: f64) {
        self.buf.push(0xcb);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn str(&mut self, v: &str) {
        let n = v.len();
        match n {
            0..=31 => self.buf.push(0xa0 | n as u8),
            32..=0xff => self.buf.extend_from_slice(&[0xd9, n as u8]),
            0x100..=0xffff => {
                self.buf.push(0xda);
                self.buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.buf.push(0xdb);
                self.buf.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        self.buf.extend_from_slice(v.as_bytes());
    }

    pub fn bin(&mut self, v: &[u8]) {
        let n = v.len();
        match n {
            0..=0xff => self.buf.extend_from_slice(&[0xc4, n as u8]),
            0x100..=0xffff => {
                self.buf.push(0xc5);
                self.buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.buf.push(0xc6);
                self.buf.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        self.buf.extend_from_slice(v);
    }

    pub fn array(&mut self, n: usize) {
        self.head(n, 0x90, 0xdc);
    }

    pub fn map(&mut self, n: usize) {
        self.head(n, 0x80, 0xde);
    }

    fn head(&mut self, n: usize, fix: u8, marker16: u8) {
        match n {
            0..=15 => self.buf.push(fix | n as u8),
            16..=0xffff => {
                self.buf.push(marker16);
                self.buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.buf.push(marker16 + 1);
                self.buf.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }
}
