//! Authorisation of the routed paths, and the admin API's key routes.
//!
//! [`authorize`] runs before every route but the chat path (which authenticates in its own
//! first phase): it names the scope the path needs, authenticates the caller when the path
//! needs one, refuses a missing scope with 403, and hands the [`Principal`] to the handler.
//! `/health`, `/ready` and `/metrics` need none: probes and scrapers carry no keys.
//!
//! `/v1/admin/keys` lists, shows, creates and revokes keys. A tenant's admin key sees its own
//! tenant only; another tenant's key is answered exactly as a key that does not exist (404),
//! so no tenant learns what another has. An admin key of the global tenant (`*`) sees all.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{
    bearer_token, now_unix, parse_lifetime, KeyError, KeyRecord, KeyTable, NewKey, Scope, ScopeSet,
    GLOBAL_TENANT,
};
use crate::error::GatewayError;
use crate::services::Principal;
use crate::state::WorkerState;

use crate::openapi::scope_for;

/// Middleware: the caller's identity and scope, checked before the handler runs.
pub async fn authorize(
    State(w): State<Arc<WorkerState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(scope) = scope_for(req.uri().path()) else {
        return next.run(req).await;
    };
    let principal = match &w.shared.services.keys {
        None => Principal::Anonymous,
        Some(keys) => {
            let token = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes()));
            match keys.authenticate(token) {
                Ok(p) => p,
                Err(e) => return GatewayError::from(e).into_response(),
            }
        }
    };
    if !principal.has(scope) {
        return GatewayError::ScopeMissing { scope }.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// A key as the admin API shows it: everything but its digest.
fn key_view(k: &KeyRecord, now: i64) -> Value {
    let status = if k.revoked_unix.is_some() {
        "revoked"
    } else if k.expires_unix.is_some_and(|e| now >= e) {
        "expired"
    } else {
        "active"
    };
    json!({
        "object": "api_key",
        "name": k.name,
        "tenant": k.tenant,
        "subject": k.subject,
        "scopes": k.scopes.iter().map(Scope::name).collect::<Vec<_>>(),
        "models": k.models,
        "created_at": k.created_unix,
        "expires_at": k.expires_unix,
        "revoked_at": k.revoked_unix,
        "requests_per_minute": k.requests_per_minute,
        "tokens_per_minute": k.tokens_per_minute,
        "status": status,
    })
}

/// The key table, or the answer for a gateway that keeps no keys.
fn table(w: &WorkerState) -> Result<KeyTable, GatewayError> {
    w.shared
        .services
        .key_table
        .clone()
        .ok_or(GatewayError::NotFound {
            what: "key store on this gateway (auth.mode = \"keys\" keeps one)",
            name: "keys".into(),
        })
}

/// Runs a store call off the worker's event loop (SQLite blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, GatewayError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(KeyError::NameTaken(name))) => Err(GatewayError::InvalidRequest {
            message: format!("a key named `{name}` exists already; names are unique"),
            param: Some("name".into()),
        }),
        Ok(Err(KeyError::Invalid(message))) => Err(GatewayError::InvalidRequest {
            message,
            param: None,
        }),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "admin API: the key store failed");
            Err(GatewayError::StoreFailed)
        }
        Err(e) => {
            tracing::error!(error = %e, "admin API: the key store call panicked");
            Err(GatewayError::StoreFailed)
        }
    }
}

fn answer(result: Result<Response, GatewayError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn list_keys(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
) -> Response {
    answer(
        async {
            let table = table(&w)?;
            let tenant = p.administered_tenant().map(str::to_owned);
            let keys = blocking(move || table.list(tenant.as_deref())).await?;
            let now = now_unix();
            let data: Vec<Value> = keys.iter().map(|k| key_view(k, now)).collect();
            Ok(Json(json!({"object": "list", "data": data})).into_response())
        }
        .await,
    )
}

pub async fn get_key(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    one_key(&w, &p, name, |table, name, tenant| table.get(name, tenant)).await
}

pub async fn revoke_key(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    one_key(&w, &p, name, |table, name, tenant| {
        if !table.revoke(name, tenant)? {
            return Ok(None);
        }
        table.get(name, tenant)
    })
    .await
}

/// Runs `op` on the key `name` within the caller's tenant and answers with the key it
/// returns, or 404 (no such key, or another tenant's).
async fn one_key(
    w: &WorkerState,
    p: &Principal,
    name: String,
    op: impl FnOnce(&KeyTable, &str, Option<&str>) -> Result<Option<KeyRecord>, KeyError>
        + Send
        + 'static,
) -> Response {
    answer(
        async {
            let table = table(w)?;
            let tenant = p.administered_tenant().map(str::to_owned);
            let wanted = name.clone();
            match blocking(move || op(&table, &wanted, tenant.as_deref())).await? {
                Some(k) => Ok(Json(key_view(&k, now_unix())).into_response()),
                None => Err(GatewayError::NotFound { what: "key", name }),
            }
        }
        .await,
    )
}

/// `POST /v1/admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    /// Required for the global admin; a tenant's admin may only name its own.
    tenant: Option<String>,
    subject: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    models: Vec<String>,
    /// `30d`, `12h`, `90m`, `3600s`.
    expires_in: Option<String>,
    /// The key's own limits, over every model it uses.
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

pub async fn create_key(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Response {
    answer(async {
        let table = table(&w)?;
        let invalid = |message: String, param: &str| GatewayError::InvalidRequest {
            message,
            param: Some(param.into()),
        };
        let req: CreateKey = serde_json::from_slice(&body).map_err(|e| {
            invalid(
                format!("the body is not a key request ({e}); send {{\"name\", \"scopes\": [...], \"models\"?, \"expires_in\"?, \"tenant\"?}}"),
                "body",
            )
        })?;
        let tenant = match (p.administered_tenant(), req.tenant) {
            (Some(own), None) => own.to_owned(),
            (Some(own), Some(t)) if t == own => t,
            (Some(_), Some(_)) => {
                return Err(GatewayError::InvalidRequest {
                    message: "a tenant's admin key creates keys in its own tenant only; leave `tenant` out".into(),
                    param: Some("tenant".into()),
                })
            }
            (None, Some(t)) => t,
            (None, None) => {
                return Err(invalid(
                    format!("the global admin ({GLOBAL_TENANT}) must name the key's `tenant`"),
                    "tenant",
                ))
            }
        };
        let scopes = ScopeSet::parse_list(&req.scopes.join(",")).map_err(|e| invalid(e, "scopes"))?;
        if let Some(m) = req.models.iter().find(|m| !w.shared.models.contains_key(*m)) {
            return Err(invalid(
                format!("model `{m}` is not configured on this gateway"),
                "models",
            ));
        }
        let expires_unix = match req.expires_in.as_deref() {
            None => None,
            Some(text) => {
                let life = parse_lifetime(text).map_err(|e| invalid(e, "expires_in"))?;
                Some(now_unix().saturating_add(i64::try_from(life.as_secs()).unwrap_or(i64::MAX)))
            }
        };
        let new = NewKey {
            name: req.name,
            tenant,
            subject: req.subject,
            scopes,
            models: req.models,
            expires_unix,
            requests_per_minute: req.requests_per_minute,
            tokens_per_minute: req.tokens_per_minute,
        };
        for (param, v) in [
            ("requests_per_minute", new.requests_per_minute),
            ("tokens_per_minute", new.tokens_per_minute),
        ] {
            if v == Some(0) {
                return Err(invalid(
                    "0 would refuse every request; give a positive limit or leave it out".into(),
                    param,
                ));
            }
        }
        let (record, secret) = blocking(move || table.create(new)).await?;
        let mut view = key_view(&record, now_unix());
        view["key"] = Value::String(secret);
        Ok((StatusCode::CREATED, Json(view)).into_response())
    }
    .await)
}
