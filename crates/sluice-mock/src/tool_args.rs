//! Tool-call arguments made up from the function's JSON schema, so that a client that
//! validates arguments against the schema accepts what the mock sends.

use serde_json::{Map, Number, Value};

use crate::prng::SplitMix64;
use crate::vocab::WORDS;

/// Schemas nest at most this deep before the generator gives up and writes `null`; a client
/// could otherwise send a schema deep enough to make the recursion costly.
const MAX_DEPTH: usize = 16;

/// Arguments object for a function whose `parameters` schema is `schema`. A missing or
/// non-object schema gives `{}`: the function takes no arguments.
pub(crate) fn arguments_for(schema: Option<&Value>, rng: &mut SplitMix64) -> Value {
    match schema {
        Some(s @ Value::Object(_)) => match value_for(s, rng, 0) {
            v @ Value::Object(_) => v,
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

fn value_for(schema: &Value, rng: &mut SplitMix64, depth: usize) -> Value {
    let Value::Object(s) = schema else {
        return word(rng);
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(v) = s.get("const") {
        return v.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = s.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
            return value_for(first, rng, depth + 1);
        }
    }
    match schema_type(s) {
        "object" => object_for(s, rng, depth),
        "array" => array_for(s, rng, depth),
        "integer" => integer_for(s, rng),
        "number" => number_for(s, rng),
        "boolean" => Value::Bool(rng.chance(0.5)),
        "null" => Value::Null,
        _ => word(rng),
    }
}

/// The schema's type; for a list of types the first that is not `null`; guessed from the
/// keywords present when absent.
fn schema_type(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if s.contains_key("properties") => "object",
        _ if s.contains_key("items") => "array",
        _ => "string",
    }
}

fn object_for(s: &Map<String, Value>, rng: &mut SplitMix64, depth: usize) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(props)) = s.get("properties") {
        for (name, prop) in props {
            out.insert(name.clone(), value_for(prop, rng, depth + 1));
        }
    }
    // A required key the schema forgot to describe still has to be present.
    if let Some(Value::Array(required)) = s.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !out.contains_key(name) {
                out.insert(name.to_owned(), word(rng));
            }
        }
    }
    Value::Object(out)
}

fn array_for(s: &Map<String, Value>, rng: &mut SplitMix64, depth: usize) -> Value {
    let count = s
        .get("minItems")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 8);
    let items = s.get("items");
    let list = (0..count)
        .map(|_| match items {
            Some(item) => value_for(item, rng, depth + 1),
            None => word(rng),
        })
        .collect();
    Value::Array(list)
}

fn integer_for(s: &Map<String, Value>, rng: &mut SplitMix64) -> Value {
    let lo = bound(s, "minimum", "exclusiveMinimum", 1.0)
        .unwrap_or(0.0)
        .ceil();
    let hi = bound(s, "maximum", "exclusiveMaximum", -1.0)
        .unwrap_or(lo + 100.0)
        .floor();
    // Bounds far outside i64 are clamped; the draw only has to be a plausible integer.
    let lo = lo.clamp(-1e15, 1e15) as i64;
    let hi = (hi.clamp(-1e15, 1e15) as i64).max(lo);
    let span = (hi - lo) as u64;
    Value::Number(Number::from(lo + rng.in_range(0, span) as i64))
}

fn number_for(s: &Map<String, Value>, rng: &mut SplitMix64) -> Value {
    let lo = bound(s, "minimum", "exclusiveMinimum", 0.0).unwrap_or(0.0);
    let hi = bound(s, "maximum", "exclusiveMaximum", 0.0)
        .unwrap_or(lo + 100.0)
        .max(lo);
    let v = ((lo + rng.unit() * (hi - lo)) * 100.0).round() / 100.0;
    // Huge bounds can overflow to infinity (or NaN); fall back to the lower bound.
    let v = if v.is_finite() { v.clamp(lo, hi) } else { lo };
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// An inclusive bound from `key`, or from `exclusive_key` nudged by `step`. Non-finite values
/// are ignored.
fn bound(s: &Map<String, Value>, key: &str, exclusive_key: &str, step: f64) -> Option<f64> {
    let inclusive = s.get(key).and_then(Value::as_f64);
    let exclusive = s
        .get(exclusive_key)
        .and_then(Value::as_f64)
        .map(|v| v + step);
    inclusive.or(exclusive).filter(|v| v.is_finite())
}

fn word(rng: &mut SplitMix64) -> Value {
    let i = rng.below(WORDS.len() as u64) as usize;
    Value::String(WORDS.get(i).copied().unwrap_or("value").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(schema: Value, seed: u64) -> Value {
        arguments_for(Some(&schema), &mut SplitMix64::new(seed))
    }

    #[test]
    fn objects_get_every_property_and_every_required_key() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "precise": {"type": "boolean"},
                "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.75},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
                "maybe": {"type": ["null", "integer"]}
            },
            "required": ["city", "unit", "extra_required"]
        });
        for seed in 0..200 {
            let v = args(schema.clone(), seed);
            let text = v.to_string();
            let back: Value = serde_json::from_str(&text).unwrap();
            let o = back.as_object().unwrap();
            for key in [
                "city",
                "unit",
                "days",
                "precise",
                "ratio",
                "tags",
                "where",
                "maybe",
                "extra_required",
            ] {
                assert!(o.contains_key(key), "{key} missing in {text}");
            }
            assert!(o["city"].is_string());
            assert_eq!(o["unit"], "celsius");
            let days = o["days"].as_i64().unwrap();
            assert!((1..=7).contains(&days), "{days}");
            assert!(o["precise"].is_boolean());
            let ratio = o["ratio"].as_f64().unwrap();
            assert!((0.5..=0.75).contains(&ratio), "{ratio}");
            assert_eq!(o["tags"].as_array().unwrap().len(), 1);
            assert!(o["where"]["lat"].is_number());
            assert!(o["maybe"].is_i64());
        }
    }

    #[test]
    fn missing_or_odd_schemas_give_an_object() {
        assert_eq!(arguments_for(None, &mut SplitMix64::new(1)), json!({}));
        assert_eq!(args(json!(true), 1), json!({}));
        assert_eq!(args(json!({"type": "string"}), 1), json!({}));
        assert_eq!(args(json!({"type": "object"}), 1), json!({}));
    }

    #[test]
    fn deep_schemas_are_cut_off() {
        let mut schema = json!({"type": "string"});
        for _ in 0..100 {
            schema = json!({"type": "object", "properties": {"x": schema}});
        }
        let v = args(schema, 3);
        assert!(v.is_object());
    }

    #[test]
    fn extreme_bounds_do_not_panic() {
        let v = args(
            json!({"properties": {
                "a": {"type": "integer", "minimum": -1e300, "maximum": 1e300},
                "b": {"type": "integer", "minimum": 10, "maximum": 1},
                "c": {"type": "number", "minimum": 1e308, "maximum": -1e308},
                "d": {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5}
            }}),
            9,
        );
        assert!(v["a"].is_i64());
        assert_eq!(v["b"], 10);
        assert_eq!(v["d"], 4);
    }

    #[test]
    fn same_seed_same_arguments() {
        let schema = json!({"properties": {"q": {"type": "string"}, "n": {"type": "integer"}}});
        assert_eq!(args(schema.clone(), 5), args(schema.clone(), 5));
        let distinct: std::collections::HashSet<String> = (0..20)
            .map(|s| args(schema.clone(), s).to_string())
            .collect();
        assert!(distinct.len() > 1);
    }
}
