//! Whether an answer's tool calls are fit to be served again: each names a tool the request
//! offered, and its arguments are JSON that the tool's `parameters` schema accepts. A model
//! that hallucinated a tool or broke its arguments once must be asked again next time, not
//! replayed.

use serde_json::Value;

/// Why an answer is not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unstorable {
    #[error("a tool call names `{0}`, which the request did not offer")]
    UnknownTool(String),
    #[error("the arguments of a call to `{0}` are not valid JSON")]
    ArgumentsNotJson(String),
    #[error("the arguments of a call to `{tool}` do not match its schema: {detail}")]
    SchemaViolation { tool: String, detail: String },
    #[error("the schema of `{tool}` cannot be used to check its calls: {detail}")]
    SchemaUnusable { tool: String, detail: String },
}

impl Unstorable {
    /// The `reason` label of the skipped-writes metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Unstorable::UnknownTool(_) => "unknown_tool",
            Unstorable::ArgumentsNotJson(_) => "tool_arguments_not_json",
            Unstorable::SchemaViolation { .. } => "tool_arguments_invalid",
            Unstorable::SchemaUnusable { .. } => "tool_schema_unusable",
        }
    }
}

/// Checks every tool call of every choice of `completion` against the tools `request`
/// offered.
pub fn check_tool_calls(request: &Value, completion: &Value) -> Result<(), Unstorable> {
    let calls = completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/message/tool_calls").and_then(Value::as_array))
        .flatten();
    for call in calls {
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let tool = offered(request, name).ok_or_else(|| Unstorable::UnknownTool(name.into()))?;
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let arguments: Value = serde_json::from_str(arguments)
            .map_err(|_| Unstorable::ArgumentsNotJson(name.into()))?;
        let Some(schema) = tool.get("parameters") else {
            // No schema: any JSON is acceptable.
            continue;
        };
        let validator =
            jsonschema::validator_for(schema).map_err(|e| Unstorable::SchemaUnusable {
                tool: name.into(),
                detail: e.to_string(),
            })?;
        let violation = validator
            .iter_errors(&arguments)
            .next()
            .map(|e| e.to_string());
        if let Some(detail) = violation {
            return Err(Unstorable::SchemaViolation {
                tool: name.into(),
                detail,
            });
        }
    }
    Ok(())
}

/// The `function` object of the tool named `name` in the request's `tools`.
fn offered<'a>(request: &'a Value, name: &str) -> Option<&'a Value> {
    request
        .get("tools")?
        .as_array()?
        .iter()
        .filter_map(|t| t.get("function"))
        .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn request() -> Value {
        json!({"model": "m", "messages": [], "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
                "required": ["city"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "ping"}}
        ]})
    }

    fn answer(name: &str, arguments: &str) -> Value {
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}]},
            "finish_reason": "tool_calls"}]})
    }

    #[test]
    fn calls_that_fit_the_offered_tools_are_storable() {
        assert_eq!(
            check_tool_calls(
                &request(),
                &answer("get_weather", r#"{"city":"Oslo","days":2}"#)
            ),
            Ok(())
        );
        assert_eq!(check_tool_calls(&request(), &answer("ping", "{}")), Ok(()));
        assert_eq!(
            check_tool_calls(
                &request(),
                &json!({"choices": [{"message": {"content": "hi"}}]})
            ),
            Ok(())
        );
    }

    #[test]
    fn what_a_model_got_wrong_is_not() {
        let check =
            |name: &str, args: &str| check_tool_calls(&request(), &answer(name, args)).unwrap_err();
        assert_eq!(check("get_wether", "{}").reason(), "unknown_tool");
        assert_eq!(
            check("get_weather", r#"{"city": "Oslo""#).reason(),
            "tool_arguments_not_json"
        );
        assert_eq!(
            check("get_weather", r#"{"days": 2}"#).reason(),
            "tool_arguments_invalid"
        );
        assert_eq!(
            check("get_weather", r#"{"city": "Oslo", "days": 0}"#).reason(),
            "tool_arguments_invalid"
        );
        assert_eq!(
            check("get_weather", r#"{"city": "Oslo", "mood": "sunny"}"#).reason(),
            "tool_arguments_invalid"
        );
        let no_tools = json!({"model": "m", "messages": []});
        assert_eq!(
            check_tool_calls(&no_tools, &answer("ping", "{}"))
                .unwrap_err()
                .reason(),
            "unknown_tool"
        );
        let broken_schema = json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 12}}}]});
        assert_eq!(
            check_tool_calls(&broken_schema, &answer("f", "{}"))
                .unwrap_err()
                .reason(),
            "tool_schema_unusable"
        );
    }
}
