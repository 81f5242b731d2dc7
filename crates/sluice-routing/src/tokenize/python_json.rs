//! `tojson` as the engines' chat templates see it: Python's `json.dumps`.
//!
//! Hugging Face renders chat templates with its own `tojson` (`json.dumps(x,
//! ensure_ascii=False, indent=…, separators=…, sort_keys=…)`), not Jinja's HTML-safe one,
//! and templates put tool schemas and call arguments into the prompt through it. Every byte
//! of that text becomes prompt tokens, so ours must write what Python writes: `", "` and
//! `": "` between items, `1.0` for a whole float, `1e-05` for a small one, non-ASCII kept
//! as is, keys in their given order.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};
use std::fmt::Write;

/// How `json.dumps` was asked to write.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: everything on one line. `Some(s)`: one item a line, each level indented by `s`.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

impl DumpOptions {
    /// From the filter's keyword arguments, defaulting as `json.dumps` does (an indent makes
    /// the item separator `","`: the newline follows it).
    pub fn from_kwargs(kwargs: &minijinja::value::Kwargs) -> Result<Self, Error> {
        let mut o = DumpOptions::default();
        if let Some(v) = kwargs.get::<Option<bool>>("ensure_ascii")? {
            o.ensure_ascii = v;
        }
        if let Some(indent) = kwargs.get::<Option<Value>>("indent")? {
            o.indent = match indent.kind() {
                ValueKind::None | ValueKind::Undefined => None,
                ValueKind::Number => {
                    let n = i64::try_from(indent.clone()).map_err(|_| {
                        Error::new(ErrorKind::InvalidOperation, "tojson: indent must be whole")
                    })?;
                    Some(" ".repeat(n.clamp(0, 64) as usize))
                }
                _ => Some(indent.to_string()),
            };
            if o.indent.is_some() {
                o.item_separator = ",".into();
            }
        }
        if let Some(seps) = kwargs.get::<Option<Vec<String>>>("separators")? {
            match <[String; 2]>::try_from(seps) {
                Ok([item, key]) => {
                    o.item_separator = item;
                    o.key_separator = key;
                }
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be (item_separator, key_separator)",
                    ))
                }
            }
        }
        if let Some(v) = kwargs.get::<Option<bool>>("sort_keys")? {
            o.sort_keys = v;
        }
        kwargs.assert_all_used()?;
        Ok(o)
    }
}

/// Writes `value` as `json.dumps` would with `options`.
pub fn dumps(value: &Value, options: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, options, 0)?;
    Ok(out)
}

/// Templates are the operator's and values the client's; a value nested deeper than this is
/// refused rather than followed down the stack.
const MAX_DEPTH: usize = 128;

fn write_value(out: &mut String, v: &Value, o: &DumpOptions, depth: usize) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String | ValueKind::Bytes => {
            write_string(out, v.as_str().unwrap_or_default(), o.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Plain => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_items(out, o, depth, items.len(), '[', ']', |out, i| {
                write_value(out, &items[i], o, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            write_items(out, o, depth, keys.len(), '{', '}', |out, i| {
                let key = &keys[i];
                match key.as_str() {
                    Some(s) => write_string(out, s, o.ensure_ascii),
                    // Python turns number and boolean keys into strings.
                    None => write_string(out, &key_text(key), o.ensure_ascii),
                }
                out.push_str(&o.key_separator);
                write_value(out, &v.get_item(key)?, o, depth + 1)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot write a {} as JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

fn key_text(key: &Value) -> String {
    match key.kind() {
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
        ValueKind::None | ValueKind::Undefined => "null".into(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            s
        }
        _ => key.to_string(),
    }
}

fn write_items(
    out: &mut String,
    o: &DumpOptions,
    depth: usize,
    len: usize,
    open: char,
    close: char,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&o.item_separator);
        }
        if let Some(indent) = &o.indent {
            out.push('\n');
            for _ in 0..=depth {
                out.push_str(indent);
            }
        }
        item(out, i)?;
    }
    if let Some(indent) = &o.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
    out.push(close);
    Ok(())
}

fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        // Integers of any size print in full, as Python's do.
        let _ = write!(out, "{v}");
        return;
    }
    match f64::try_from(v.clone()) {
        Ok(f) => write_float(out, f),
        Err(_) => out.push_str(&v.to_string()),
    }
}

/// Python's `repr(float)`: the shortest digits that read back the same, positional from
/// 1e-4 up to 1e16, scientific outside it with a signed exponent of at least two digits.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.5e-5", "-1e16", "0e0".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..-point {
                out.push('0');
            }
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            for _ in digits.len()..point as usize {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn float(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    #[test]
    fn floats_read_as_python_writes_them() {
        // Each right-hand side is what CPython's repr() prints.
        let cases = [
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.5, "0.5"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-300, "1e-300"),
            (-2.5e100, "-2.5e+100"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
        ];
        for (f, want) in cases {
            assert_eq!(float(f), want, "{f:?}");
        }
    }

    fn dump_json(json: &str, o: &DumpOptions) -> String {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        dumps(&Value::from(minijinja::value::Serde(&v)), o).unwrap()
    }

    #[test]
    fn objects_keep_their_order_and_python_separators() {
        let o = DumpOptions::default();
        assert_eq!(
            dump_json(r#"{"b":1,"a":[true,null,2.0,"x"],"c":{}}"#, &o),
            r#"{"b": 1, "a": [true, null, 2.0, "x"], "c": {}}"#
        );
        let sorted = DumpOptions {
            sort_keys: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dump_json(r#"{"b":1,"a":2}"#, &sorted),
            r#"{"a": 2, "b": 1}"#
        );
    }

    #[test]
    fn strings_escape_as_python_does() {
        let o = DumpOptions::default();
        assert_eq!(
            dump_json(r#"["<a & 'b'>", "é\n\t\u0001\"\\", "\u007f"]"#, &o),
            "[\"<a & 'b'>\", \"é\\n\\t\\u0001\\\"\\\\\", \"\u{7f}\"]"
        );
        let ascii = DumpOptions {
            ensure_ascii: true,
            ..DumpOptions::default()
        };
        assert_eq!(dump_json(r#"["é😀"]"#, &ascii), r#"["\u00e9\ud83d\ude00"]"#);
    }

    #[test]
    fn indent_puts_one_item_a_line() {
        let o = DumpOptions {
            indent: Some("  ".into()),
            item_separator: ",".into(),
            ..DumpOptions::default()
        };
        assert_eq!(
            dump_json(r#"{"a":[1,2],"b":{}}"#, &o),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"
        );
    }
}
