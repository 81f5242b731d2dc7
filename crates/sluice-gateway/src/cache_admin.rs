//! `/v1/admin/cache`: the inference cache as an admin sees it, and purges. A tenant's admin
//! sees and purges its own tenant's entries only (naming another tenant is answered as a
//! tenant that does not exist); the global admin sees every tenant's.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::error::GatewayError;
use crate::services::{CacheStore, Principal};
use crate::state::WorkerState;

fn cache(w: &WorkerState) -> Result<Arc<dyn CacheStore>, GatewayError> {
    w.shared
        .services
        .cache
        .clone()
        .ok_or(GatewayError::NotFound {
            what: "cache on this gateway (a [models.NAME.cache] table turns it on)",
            name: "cache".into(),
        })
}

/// Runs a store call off the worker's event loop (SQLite blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, GatewayError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "admin API: the cache store failed");
            Err(GatewayError::StoreFailed)
        }
        Err(e) => {
            tracing::error!(error = %e, "admin API: the cache store call panicked");
            Err(GatewayError::StoreFailed)
        }
    }
}

/// `GET /v1/admin/cache`.
pub async fn stats(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
) -> Response {
    let answer = async {
        let cache = cache(&w)?;
        let tenant = p.administered_tenant().map(str::to_owned);
        let of = tenant.clone();
        let stats = blocking(move || cache.stats(of.as_deref())).await?;
        let [hit, miss, bypass] = w
            .shared
            .cache_metrics
            .as_ref()
            .map(|m| m.tenant_lookups(tenant.as_deref()))
            .unwrap_or_default();
        let hit_ratio = (hit + miss > 0).then(|| hit as f64 / (hit + miss) as f64);
        let mut body = json!({
            "object": "cache",
            "tenant": tenant,
            "entries": stats.entries,
            "bytes": stats.bytes,
            "lookups": {"hit": hit, "miss": miss, "bypass": bypass},
            "hit_ratio": hit_ratio,
        });
        if tenant.is_none() {
            body["memory"] = json!({"entries": stats.memory_entries, "bytes": stats.memory_bytes});
        }
        Ok::<_, GatewayError>(Json(body).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /v1/admin/cache?model=…&older_than=…&tenant=…`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeQuery {
    model: Option<String>,
    older_than: Option<String>,
    tenant: Option<String>,
}

pub async fn purge(
    State(w): State<Arc<WorkerState>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<PurgeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let answer = async {
        let cache = cache(&w)?;
        let Query(q) = query.map_err(|e| {
            GatewayError::invalid_request(
                format!(
                    "{}; the filters are model, older_than and tenant",
                    e.body_text()
                ),
                None,
            )
        })?;
        let tenant = match (p.administered_tenant(), q.tenant) {
            (None, named) => named,
            (Some(own), None) => Some(own.to_owned()),
            (Some(own), Some(named)) if named == own => Some(named),
            // Another tenant's: answered as a tenant that does not exist.
            (Some(_), Some(named)) => {
                return Err(GatewayError::NotFound {
                    what: "tenant",
                    name: named,
                })
            }
        };
        let older_than = match q.older_than {
            None => None,
            Some(text) => Some(
                crate::config::ConfigDuration::parse(&text)
                    .map_err(|message| {
                        GatewayError::invalid_request(
                            format!("older_than: {message}"),
                            Some("older_than".into()),
                        )
                    })?
                    .0,
            ),
        };
        let filter = sluice_cache::Purge {
            tenant,
            model: q.model,
            older_than,
        };
        let deleted = blocking(move || cache.purge(&filter)).await?;
        Ok(Json(json!({"object": "cache.purge", "deleted": deleted})).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}
