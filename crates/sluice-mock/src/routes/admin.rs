//! `/admin/*`: fault settings, counters, prefix-cache reset. Meant for tests and operators;
//! not authenticated.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use crate::engine::MockEngine;
use crate::faults::Faults;
use crate::request_log::LoggedRequest;
use crate::stats::MockStats;

pub(super) async fn get_faults(State(engine): State<Arc<MockEngine>>) -> Json<Faults> {
    Json(engine.faults())
}

/// Replaces every setting; fields the body leaves out take their defaults.
pub(super) async fn put_faults(
    State(engine): State<Arc<MockEngine>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Faults>, ApiError> {
    let faults: Faults = serde_json::from_slice(&body?).map_err(settings_error)?;
    checked(&faults)?;
    engine.set_faults(faults.clone());
    Ok(Json(faults))
}

/// Changes only the fields the body names.
pub(super) async fn patch_faults(
    State(engine): State<Arc<MockEngine>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Faults>, ApiError> {
    let patch = match serde_json::from_slice::<Value>(&body?).map_err(settings_error)? {
        Value::Object(fields) => fields,
        _ => {
            return Err(ApiError::invalid_request(
                "fault settings must be a JSON object",
                None,
            ))
        }
    };
    let updated = engine.update_faults(|current| {
        let mut merged = match serde_json::to_value(current) {
            Ok(Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        };
        merged.extend(patch);
        let next: Faults = serde_json::from_value(Value::Object(merged)).map_err(settings_error)?;
        checked(&next)?;
        Ok::<_, ApiError>(next)
    })?;
    Ok(Json(updated))
}

pub(super) async fn stats(State(engine): State<Arc<MockEngine>>) -> Json<MockStats> {
    Json(engine.stats())
}

/// The last chat requests received, oldest first.
pub(super) async fn requests(State(engine): State<Arc<MockEngine>>) -> Json<Vec<LoggedRequest>> {
    Json(engine.request_log().snapshot())
}

pub(super) async fn reset_kv_cache(State(engine): State<Arc<MockEngine>>) -> Json<Value> {
    Json(json!({"removed_blocks": engine.reset_prefix_cache()}))
}

/// Where the KV events are published and the next batch's sequence number.
pub(super) async fn kv_events(
    State(engine): State<Arc<MockEngine>>,
) -> Result<Json<Value>, ApiError> {
    let kv = publisher(&engine)?;
    Ok(Json(json!({
        "publish": kv.publish_endpoint,
        "replay": kv.replay_endpoint,
        "next_seq": kv.next_seq(),
    })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DropBatches {
    batches: u32,
}

/// `{"batches": N}`: the next N batches reach no subscriber (replay still has them), as
/// when a full publisher queue drops them.
pub(super) async fn drop_kv_batches(
    State(engine): State<Arc<MockEngine>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let kv = publisher(&engine)?;
    let d: DropBatches = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(format!("expected {{\"batches\": N}}: {e}"), None)
    })?;
    kv.drop_next(d.batches);
    Ok(Json(json!({"dropping": d.batches})))
}

/// As if the engine restarted: empty cache, new block hashes, sequence numbers from 0.
pub(super) async fn restart_kv(
    State(engine): State<Arc<MockEngine>>,
) -> Result<Json<Value>, ApiError> {
    publisher(&engine)?;
    engine.restart_kv();
    Ok(Json(json!({"restarted": true})))
}

fn publisher(engine: &MockEngine) -> Result<&crate::KvPublisher, ApiError> {
    engine.kv_events().ok_or_else(|| {
        ApiError::invalid_request(
            "this mock publishes no KV events (start it with --kv-events)",
            None,
        )
    })
}

fn settings_error(e: serde_json::Error) -> ApiError {
    ApiError::invalid_request(format!("invalid fault settings: {e}"), None)
}

fn checked(faults: &Faults) -> Result<(), ApiError> {
    faults
        .validate()
        .map_err(|e| ApiError::invalid_request(e.message, Some(e.field)))
}
