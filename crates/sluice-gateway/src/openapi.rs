//! The gateway's API contract: the route table ([`ROUTES`]) that names every route's scope —
//! the authorisation middleware reads it — and the OpenAPI 3.1 document generated from it,
//! served at `/openapi.json` and checked in as `docs/openapi.json` (a test fails when the two
//! differ).
//!
//! The request schema states what the gateway itself enforces (the type rules of
//! `sluice_api::ChatCompletionRequest`: `model` a string, `messages` a non-empty array of
//! objects with a `role`, the numeric fields' ranges); every other field is passed on to the
//! model's endpoint as the client sent it.

use serde_json::{json, Map, Value};

use crate::auth::Scope;

/// One route of the public or admin API.
pub struct RouteDoc {
    pub method: &'static str,
    /// OpenAPI path template (`/v1/admin/keys/{name}`).
    pub path: &'static str,
    /// The scope a key needs (`None`: anyone, as probes and scrapers are).
    pub scope: Option<Scope>,
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// Component schema of the JSON body, when the route takes one.
    pub request: Option<&'static str>,
    /// Query parameters: name, JSON schema type, description.
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Status → (description, media type and component schema of the body).
    pub responses: &'static [(&'static str, &'static str, Body)],
}

/// What a response carries.
#[derive(Clone, Copy)]
pub enum Body {
    Json(&'static str),
    /// A chat completion as JSON, or as an event stream when the request asked for one.
    CompletionOrStream,
    Text(&'static str),
}

const ERR: Body = Body::Json("Error");

/// Refusals every authenticated route can answer.
macro_rules! auth_refusals {
    () => {
        [
            (
                "401",
                "No API key, or an unknown, revoked or expired one",
                ERR,
            ),
            ("403", "The key lacks the route's scope", ERR),
        ]
    };
}

const CHAT_RESPONSES: &[(&str, &str, Body)] = &[
    (
        "200",
        "The completion (an event stream when `stream` is true)",
        Body::CompletionOrStream,
    ),
    (
        "400",
        "The request breaks a type rule; `param` names the field",
        ERR,
    ),
    auth_refusals!()[0],
    (
        "403",
        "The key lacks `chat:write`, or may not use the model",
        ERR,
    ),
    ("404", "The model is not configured on this gateway", ERR),
    ("408", "The request body did not arrive in time", ERR),
    ("413", "The body is larger than 32 MiB", ERR),
    ("429", "Rate limited (with `Retry-After`)", ERR),
    (
        "502",
        "The upstream failed, was unreachable, or answered something else than a completion",
        ERR,
    ),
    ("504", "The upstream did not answer in time", ERR),
    (
        "default",
        "An upstream's own refusal (4xx), passed on unchanged",
        ERR,
    ),
];

/// Every route but the fallback. The router in `server.rs` serves exactly these (a test
/// holds the two together).
pub const ROUTES: &[RouteDoc] = &[
    RouteDoc {
        method: "post",
        path: "/v1/chat/completions",
        scope: Some(Scope::ChatWrite),
        operation_id: "createChatCompletion",
        summary:
            "Create a chat completion (OpenAI-compatible), routed to one of the model's endpoints",
        request: Some("ChatCompletionRequest"),
        query: &[],
        responses: CHAT_RESPONSES,
    },
    RouteDoc {
        method: "get",
        path: "/v1/models",
        scope: Some(Scope::ModelsRead),
        operation_id: "listModels",
        summary: "The models this key may use",
        request: None,
        query: &[],
        responses: &[
            ("200", "The model list", Body::Json("ModelList")),
            auth_refusals!()[0],
            auth_refusals!()[1],
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/keys",
        scope: Some(Scope::Admin),
        operation_id: "listKeys",
        summary: "The API keys of the caller's tenant (every tenant's for the global admin)",
        request: None,
        query: &[],
        responses: &[
            (
                "200",
                "The keys, without secrets or digests",
                Body::Json("ApiKeyList"),
            ),
            auth_refusals!()[0],
            auth_refusals!()[1],
            (
                "404",
                "This gateway keeps no keys (auth.mode is not \"keys\")",
                ERR,
            ),
            ("500", "The key store failed", ERR),
        ],
    },
    RouteDoc {
        method: "post",
        path: "/v1/admin/keys",
        scope: Some(Scope::Admin),
        operation_id: "createKey",
        summary: "Create an API key; the answer holds the key, once",
        request: Some("CreateApiKey"),
        query: &[],
        responses: &[
            (
                "201",
                "The key, with its secret as `key`",
                Body::Json("CreatedApiKey"),
            ),
            ("400", "A field is invalid, or the name is taken", ERR),
            auth_refusals!()[0],
            auth_refusals!()[1],
            (
                "404",
                "This gateway keeps no keys (auth.mode is not \"keys\")",
                ERR,
            ),
            ("500", "The key store failed", ERR),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/keys/{name}",
        scope: Some(Scope::Admin),
        operation_id: "getKey",
        summary: "One API key",
        request: None,
        query: &[],
        responses: &[
            ("200", "The key", Body::Json("ApiKey")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "No such key in the caller's tenant", ERR),
            ("500", "The key store failed", ERR),
        ],
    },
    RouteDoc {
        method: "delete",
        path: "/v1/admin/keys/{name}",
        scope: Some(Scope::Admin),
        operation_id: "revokeKey",
        summary: "Revoke an API key; gateways on the store refuse it within a second",
        request: None,
        query: &[],
        responses: &[
            ("200", "The key, revoked", Body::Json("ApiKey")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "No such key in the caller's tenant", ERR),
            ("500", "The key store failed", ERR),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/cache",
        scope: Some(Scope::Admin),
        operation_id: "getCache",
        summary: "The inference cache as the caller's tenant sees it (every tenant's for the global admin): entries, bytes, lookups, hit ratio",
        request: None,
        query: &[],
        responses: &[
            ("200", "The cache's numbers", Body::Json("CacheStats")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "This gateway has no cache", ERR),
            ("500", "The cache's store failed", ERR),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/limits",
        scope: Some(Scope::Admin),
        operation_id: "getLimits",
        summary: "The admission pools now (the global admin): per limited model, this instance's share of each limit, the pool, usage in the current windows, and each job type's ratio, slots, in flight and waiting",
        request: None,
        query: &[],
        responses: &[
            ("200", "The pools", Body::Json("LimitsView")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "Asked by a tenant's admin: the pools are shared by every tenant", ERR),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/prefix-index",
        scope: Some(Scope::Admin),
        operation_id: "getPrefixIndex",
        summary: "Routing now (the global admin): per model its policy, decisions by reason and the prefix index's size; per endpoint the load the router counts, the blocks indexed for it and its KV-event stream (last sequence, lag, gaps, replays, purges)",
        request: None,
        query: &[],
        responses: &[
            ("200", "Every model's routing", Body::Json("PrefixIndexView")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "Asked by a tenant's admin: endpoints are shared by every tenant", ERR),
        ],
    },
    RouteDoc {
        method: "patch",
        path: "/v1/admin/routing/{model}",
        scope: Some(Scope::Admin),
        operation_id: "changeRouting",
        summary: "Change a model's session TTL at runtime (for sessions already pinned too; until the gateway restarts)",
        request: Some("RoutingChange"),
        query: &[],
        responses: &[
            ("200", "The model's routing, changed", Body::Json("ModelRouting")),
            ("400", "The body is not {\"session_ttl\": DURATION or null}", ERR),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "No such model, or asked by a tenant's admin", ERR),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/v1/admin/endpoints",
        scope: Some(Scope::Admin),
        operation_id: "listEndpoints",
        summary: "Every model's endpoints as routing holds them now (the global admin): name, URL, KV events, standing, requests in flight",
        request: None,
        query: &[],
        responses: &[
            ("200", "The endpoints", Body::Json("EndpointList")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "Asked by a tenant's admin: endpoints are shared by every tenant", ERR),
        ],
    },
    RouteDoc {
        method: "post",
        path: "/v1/admin/endpoints",
        scope: Some(Scope::Admin),
        operation_id: "addEndpoint",
        summary: "Add an endpoint to a model at runtime (a pod came up); written as a [[models.NAME.endpoints]] table, with a name; until the gateway restarts",
        request: Some("NewEndpoint"),
        query: &[],
        responses: &[
            ("201", "The endpoint, added", Body::Json("Endpoint")),
            ("400", "A field is invalid, or the model has an endpoint of that name", ERR),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "No such model, or asked by a tenant's admin", ERR),
        ],
    },
    RouteDoc {
        method: "delete",
        path: "/v1/admin/endpoints/{model}/{name}",
        scope: Some(Scope::Admin),
        operation_id: "removeEndpoint",
        summary: "Remove an endpoint (a pod went away): requests already there finish, no new one goes there, what the prefix index held for it is dropped",
        request: None,
        query: &[],
        responses: &[
            ("200", "Removed", Body::Json("EndpointRemoved")),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "No such model or endpoint, or asked by a tenant's admin", ERR),
        ],
    },
    RouteDoc {
        method: "delete",
        path: "/v1/admin/cache",
        scope: Some(Scope::Admin),
        operation_id: "purgeCache",
        summary: "Drop the caller's tenant's entries (any tenant's for the global admin) that match every filter given",
        request: None,
        query: &[
            ("model", "string", "Only this model's entries (as clients name it)"),
            ("older_than", "string", "Only entries stored at least this long ago: 30d, 12h, 90m or 3600s"),
            ("tenant", "string", "Only this tenant's entries (the global admin; a tenant's admin may name only its own)"),
        ],
        responses: &[
            ("200", "How many entries were dropped", Body::Json("CachePurge")),
            ("400", "A filter is invalid", ERR),
            auth_refusals!()[0],
            auth_refusals!()[1],
            ("404", "This gateway has no cache, or the tenant is not the caller's", ERR),
            ("500", "The cache's store failed", ERR),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/health",
        scope: None,
        operation_id: "health",
        summary: "The process is up",
        request: None,
        query: &[],
        responses: &[("200", "Up", Body::Json("Status"))],
    },
    RouteDoc {
        method: "get",
        path: "/ready",
        scope: None,
        operation_id: "ready",
        summary: "Every model has an endpoint that accepts connections",
        request: None,
        query: &[],
        responses: &[
            ("200", "Ready", Body::Json("Status")),
            (
                "503",
                "A model has no reachable endpoint",
                Body::Json("NotReady"),
            ),
        ],
    },
    RouteDoc {
        method: "get",
        path: "/metrics",
        scope: None,
        operation_id: "metrics",
        summary: "Prometheus metrics (OpenMetrics text)",
        request: None,
        query: &[],
        responses: &[(
            "200",
            "The metrics",
            Body::Text("application/openmetrics-text"),
        )],
    },
    RouteDoc {
        method: "get",
        path: "/openapi.json",
        scope: None,
        operation_id: "openapi",
        summary: "This document",
        request: None,
        query: &[],
        responses: &[("200", "The OpenAPI document", Body::Json("OpenApiDocument"))],
    },
];

/// Whether a concrete path matches a template (`{x}` matches one non-empty segment).
fn matches(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return false;
                }
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

/// The scope a path needs: that of its route; anything else under `/v1/admin` needs `admin`
/// (so an unknown admin path says nothing to a caller without it); other paths none.
pub fn scope_for(path: &str) -> Option<Scope> {
    if let Some(route) = ROUTES.iter().find(|r| matches(r.path, path)) {
        return route.scope;
    }
    (path == "/v1/admin" || path.starts_with("/v1/admin/")).then_some(Scope::Admin)
}

fn body_content(body: Body) -> Value {
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    match body {
        Body::Json(name) => json!({"application/json": {"schema": schema(name)}}),
        Body::CompletionOrStream => json!({
            "application/json": {"schema": schema("ChatCompletion")},
            "text/event-stream": {"schema": {"type": "string", "description": "`data: {chunk}` events, then `data: [DONE]`"}}
        }),
        Body::Text(media) => json!({media: {"schema": {"type": "string"}}}),
    }
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut op = json!({
            "operationId": route.operation_id,
            "summary": route.summary,
            "responses": route.responses.iter().map(|(status, description, body)| {
                (status.to_string(), json!({"description": description, "content": body_content(*body)}))
            }).collect::<Map<String, Value>>(),
        });
        if let Some(scope) = route.scope {
            op["security"] = json!([{"bearer": []}]);
            op["x-sluice-scope"] = json!(scope.name());
            op["description"] = json!(format!(
                "Needs an API key with the `{}` scope when `auth.mode = \"keys\"`; open otherwise{}.",
                scope.name(),
                if scope == Scope::Admin { " (but admin routes need a key: without auth they answer 403)" } else { "" }
            ));
        }
        if let Some(request) = route.request {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{request}")}}}
            });
        }
        // Each `{param}` of the path template, as a required string.
        let params: Vec<Value> = route
            .path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}'))
            .map(|(name, _)| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if !route.query.is_empty() {
            op["parameters"] = route
                .query
                .iter()
                .map(|(name, ty, description)| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": ty}}))
                .collect();
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sluice gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The OpenAI-compatible API of `sluice serve`, its admin API and its operational endpoints.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "`sk-sluice-…` API keys (auth.mode = \"keys\")"}},
            "schemas": schemas(),
        }
    })
}

/// Key names and tenants (`auth::check_label`).
const LABEL: &str = "^[A-Za-z0-9._@*-]{1,64}$";

/// `GET /v1/admin/limits`'s answer (apart: one `json!` for every schema is beyond the
/// macro's recursion limit).
fn limits_view_schema() -> Value {
    json!({
        "type": "object",
        "required": ["object", "instances", "coordinator", "degraded", "models", "unlimited_models"],
        "properties": {
            "object": {"const": "limits"},
            "instances": {"type": "integer", "minimum": 1, "description": "Live gateway instances sharing the pools"},
            "coordinator": {"enum": ["local", "redis"]},
            "unlimited_models": {"type": "array", "items": {"type": "string"}, "description": "Models without [models.NAME.limits]"},
            "models": {"type": "array", "items": {
                "type": "object",
                "required": ["model", "shares", "pool", "in_flight", "windows", "job_types"],
                "properties": {
                    "model": {"type": "string"},
                    "shares": {"type": "object", "description": "This instance's share of each set limit, by its config key", "additionalProperties": {"type": "integer"}},
                    "pool": {"type": "integer", "minimum": 0, "description": "Jobs of average size the tightest limit allows"},
                    "in_flight": {"type": "integer", "minimum": 0},
                    "windows": {"type": "array", "items": {
                        "type": "object",
                        "required": ["limit", "share", "used", "remaining", "resets_in_ms"],
                        "properties": {
                            "limit": {"type": "string"},
                            "share": {"type": "integer"},
                            "used": {"type": "integer"},
                            "remaining": {"type": "integer"},
                            "resets_in_ms": {"type": "integer", "description": "Until everything now in the window has left it"}
                        }
                    }},
                    "job_types": {"type": "array", "items": {
                        "type": "object",
                        "required": ["name", "ratio", "slots", "in_flight", "waiting"],
                        "properties": {
                            "name": {"type": "string"},
                            "ratio": {"type": "number"},
                            "slots": {"type": "integer"},
                            "in_flight": {"type": "integer"},
                            "waiting": {"type": "integer"}
                        }
                    }}
                }
            }}
        }
    })
}

/// One model's routing (`GET /v1/admin/prefix-index`, `PATCH /v1/admin/routing/{model}`).
fn model_routing_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "type": "object",
        "required": ["model", "policy", "block_size", "session_ttl_ms", "blocks", "memory_bytes", "decisions", "pods"],
        "properties": {
            "model": {"type": "string"},
            "policy": {"enum": ["round_robin", "least_loaded", "prefix_aware"]},
            "block_size": count,
            "session_ttl_ms": {"type": ["integer", "null"], "description": "null: no session affinity"},
            "blocks": {"type": ["integer", "null"], "description": "Distinct blocks in the prefix index (prefix_aware only)"},
            "memory_bytes": {"type": ["integer", "null"]},
            "decisions": {"type": "object", "additionalProperties": count, "description": "Routing decisions since start, by reason"},
            "pods": {"type": "array", "items": {
                "type": "object",
                "required": ["pod", "standing", "ejections", "in_flight", "prefill_tokens", "decoding", "stored_blocks", "routed_blocks", "events"],
                "properties": {
                    "pod": {"type": "string", "description": "The endpoint's name"},
                    "standing": {"enum": ["healthy", "returning", "cooling", "ejected"]},
                    "ejections": count,
                    "in_flight": count,
                    "prefill_tokens": count,
                    "decoding": count,
                    "stored_blocks": count,
                    "routed_blocks": count,
                    "events": {"type": ["object", "null"], "description": "null: the endpoint publishes no KV events"}
                }
            }}
        }
    })
}

fn schemas() -> Value {
    let u32_or_null =
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": 4_294_967_295u64});
    json!({
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "properties": {
                "model": {"type": "string", "description": "A model configured on this gateway", "examples": ["gpt-4o-mini"]},
                "messages": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/ChatMessage"}},
                "stream": {"type": ["boolean", "null"]},
                "stream_options": {
                    "type": ["object", "null"],
                    "properties": {"include_usage": {"type": ["boolean", "null"]}}
                },
                "max_tokens": u32_or_null,
                "max_completion_tokens": u32_or_null,
                "seed": {"type": ["integer", "null"], "minimum": i64::MIN, "maximum": i64::MAX},
                "tools": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Tool"}},
                "tool_choice": {}
            },
            "additionalProperties": true
        },
        "ChatMessage": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string"},
                "content": {"type": ["string", "array", "null"], "items": {"type": "object"}}
            },
            "additionalProperties": true
        },
        "Tool": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string"},
                "function": {
                    "type": ["object", "null"],
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {}},
                    "additionalProperties": true
                }
            },
            "additionalProperties": true
        },
        "ChatCompletion": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": {"type": ["object", "null"]}
            },
            "additionalProperties": true
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": ["string", "null"]},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]}
                    },
                    "additionalProperties": true
                }
            }
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"}, "object": {"const": "model"},
                        "created": {"type": "integer"}, "owned_by": {"type": "string"}
                    }
                }}
            }
        },
        "ApiKey": {
            "type": "object",
            "required": ["object", "name", "tenant", "subject", "scopes", "models", "created_at", "status"],
            "properties": {
                "object": {"const": "api_key"},
                "name": {"type": "string"},
                "tenant": {"type": "string"},
                "subject": {"type": "string"},
                "scopes": {"type": "array", "items": {"enum": Scope::ALL.map(Scope::name)}},
                "models": {"type": "array", "items": {"type": "string"}},
                "created_at": {"type": "integer"},
                "expires_at": {"type": ["integer", "null"]},
                "revoked_at": {"type": ["integer", "null"]},
                "requests_per_minute": {"type": ["integer", "null"], "description": "The key's own limit (null: none)"},
                "tokens_per_minute": {"type": ["integer", "null"], "description": "The key's own limit (null: none)"},
                "status": {"enum": ["active", "revoked", "expired"]}
            }
        },
        "CreatedApiKey": {
            "allOf": [{"$ref": "#/components/schemas/ApiKey"}],
            "required": ["key"],
            "properties": {"key": {"type": "string", "pattern": "^sk-sluice-"}}
        },
        "ApiKeyList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}
            }
        },
        "CreateApiKey": {
            "type": "object",
            "required": ["name", "scopes"],
            "properties": {
                "name": {"type": "string", "pattern": LABEL},
                "tenant": {"type": "string", "pattern": LABEL},
                "subject": {"type": "string"},
                "scopes": {"type": "array", "minItems": 1, "items": {"enum": Scope::ALL.map(Scope::name)}},
                "models": {"type": "array", "items": {"type": "string"}, "description": "Models configured on this gateway"},
                "expires_in": {"type": "string", "pattern": "^[0-9]{1,7}[dhms]$", "description": "30d, 12h, 90m or 3600s (at most 10 years)"},
                "requests_per_minute": {"type": "integer", "minimum": 1, "maximum": 9_007_199_254_740_991u64, "description": "The key's own limit over every model it uses"},
                "tokens_per_minute": {"type": "integer", "minimum": 1, "maximum": 9_007_199_254_740_991u64, "description": "The key's own limit over every model it uses"}
            },
            "additionalProperties": false
        },
        "CacheStats": {
            "type": "object",
            "required": ["object", "tenant", "entries", "bytes", "lookups", "hit_ratio"],
            "properties": {
                "object": {"const": "cache"},
                "tenant": {"type": ["string", "null"], "description": "null: every tenant (the global admin)"},
                "entries": {"type": "integer", "minimum": 0},
                "bytes": {"type": "integer", "minimum": 0},
                "memory": {"type": "object", "description": "The memory front (the global admin only)", "properties": {"entries": {"type": "integer"}, "bytes": {"type": "integer"}}},
                "lookups": {"type": "object", "required": ["hit", "miss", "bypass"], "properties": {"hit": {"type": "integer"}, "miss": {"type": "integer"}, "bypass": {"type": "integer"}}},
                "hit_ratio": {"type": ["number", "null"], "description": "hits ÷ (hits + misses) since the gateway started; null before any"}
            }
        },
        "CachePurge": {
            "type": "object",
            "required": ["object", "deleted"],
            "properties": {"object": {"const": "cache.purge"}, "deleted": {"type": "integer", "minimum": 0}}
        },
        "LimitsView": limits_view_schema(),
        "PrefixIndexView": {
            "type": "object",
            "required": ["object", "models"],
            "properties": {
                "object": {"const": "prefix_index"},
                "models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelRouting"}}
            }
        },
        "ModelRouting": model_routing_schema(),
        "RoutingChange": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "session_ttl": {"type": ["string", "null"], "description": "How long a session stays pinned: \"200ms\", \"10m\"; null or \"0s\": no affinity", "examples": ["10m"]}
            }
        },
        "Endpoint": {
            "type": "object",
            "required": ["object", "model", "name", "url", "standing", "in_flight", "ejections"],
            "properties": {
                "object": {"const": "endpoint"},
                "model": {"type": "string"},
                "name": {"type": "string"},
                "url": {"type": "string"},
                "upstream_model": {"type": ["string", "null"]},
                "kv_events": {"type": ["string", "null"]},
                "standing": {"enum": ["healthy", "returning", "cooling", "ejected"]},
                "in_flight": {"type": "integer", "minimum": 0},
                "ejections": {"type": "integer", "minimum": 0},
                "health_check": {"type": ["object", "null"], "description": "Its active health check (null: not checked) and what it found: check (GET http://host:port/health, or tcp host:port), passed, failed, last_failure (why the last check failed; null once one passes)"}
            }
        },
        "EndpointList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Endpoint"}}
            }
        },
        "NewEndpoint": {
            "type": "object",
            "required": ["model", "endpoint"],
            "additionalProperties": false,
            "properties": {
                "model": {"type": "string"},
                "endpoint": {
                    "type": "object",
                    "required": ["name", "url"],
                    "description": "The keys of a [[models.NAME.endpoints]] table (docs/configuration.md)",
                    "properties": {
                        "name": {"type": "string"},
                        "url": {"type": "string", "description": "e.g. http://10.0.0.7:8000/v1"},
                        "api_key_env": {"type": "string"},
                        "model": {"type": "string"},
                        "timeouts": {"type": "object"},
                        "connections": {"type": "object"},
                        "kv_events": {"type": "string"},
                        "kv_replay": {"type": "string"},
                        "kv_topic": {"type": "string"}
                    }
                }
            }
        },
        "EndpointRemoved": {
            "type": "object",
            "required": ["object", "model", "name", "deleted"],
            "properties": {
                "object": {"const": "endpoint"},
                "model": {"type": "string"},
                "name": {"type": "string"},
                "deleted": {"const": true}
            }
        },
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "NotReady": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"const": "not_ready"},
                "models_without_reachable_endpoint": {"type": "array", "items": {"type": "string"}}
            }
        },
        "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_one_segment_per_parameter() {
        assert!(matches("/v1/admin/keys/{name}", "/v1/admin/keys/ci"));
        assert!(!matches("/v1/admin/keys/{name}", "/v1/admin/keys/"));
        assert!(!matches("/v1/admin/keys/{name}", "/v1/admin/keys/a/b"));
        assert_eq!(scope_for("/v1/models"), Some(Scope::ModelsRead));
        assert_eq!(scope_for("/v1/admin/keys/x"), Some(Scope::Admin));
        assert_eq!(scope_for("/v1/admin/anything"), Some(Scope::Admin));
        assert_eq!(scope_for("/health"), None);
        assert_eq!(scope_for("/nowhere"), None);
    }
}
