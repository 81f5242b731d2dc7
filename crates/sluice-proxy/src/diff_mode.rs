//! `diff` mode: the live answer is served, and compared with the recording the request
//! would replay; the verdict goes to the response (`x-sluice-drift`) and the drift report.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::HeaderValue;

use crate::compare::compare_responses;
use crate::drift::{ComparedRequest, DriftItem, DriftSource, DriftVerdict};
use crate::forward::{client_response, fetch_whole, RecordPlan};
use crate::handler::{lookup, ProxyState};
use crate::headers::{ReplayOutcome, DRIFT_HEADER};
use crate::metrics::RefusalReason;

/// Calls upstream, reads the whole answer (so the verdict can go in the response head;
/// streams therefore arrive at once), compares it with the recording `plan` points to,
/// and serves it with `x-sluice-replay: passthrough`.
pub async fn serve_diff(
    state: &ProxyState,
    url: &str,
    parts: &Parts,
    body: Bytes,
    plan: RecordPlan,
) -> Response {
    let live = match fetch_whole(&state.client, url, parts, body).await {
        Ok(live) => live,
        Err(resp) => {
            state.usage.outcome(ReplayOutcome::Passthrough, None);
            return resp;
        }
    };
    let recorded = lookup(state, &plan.request, &plan.key, plan.index, true).await;
    let (file, differences) = match recorded {
        Ok(Some((file, entry))) => {
            let differences =
                compare_responses(&entry.response, &live.response, &state.diff_ignore);
            state.usage.use_file(&file);
            (file, Some(differences))
        }
        Ok(None) => (plan.file_name(), None),
        Err(e) => {
            // A broken recording cannot be compared; the run's report says so.
            tracing::error!("{e}");
            state.usage.refusal(RefusalReason::StoreError);
            (plan.file_name(), None)
        }
    };
    let item = DriftItem::new(
        ComparedRequest {
            file: file.clone(),
            key: plan.key.as_str().to_owned(),
            method: plan.request.method.clone(),
            origin: plan.request.origin.clone(),
            path: plan.request.path.clone(),
            label: plan.request.label(),
            source: DriftSource::Live,
        },
        differences,
        &plan.scanner,
    );
    let verdict = item.verdict;
    if verdict == DriftVerdict::Drifted {
        tracing::warn!(
            "drift in {file}: {}",
            item.differences
                .iter()
                .map(|d| d.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    state.usage.drift(item);
    state.usage.outcome(ReplayOutcome::Passthrough, None);
    let served_file = (verdict != DriftVerdict::NoRecording).then_some(file);
    let mut resp = client_response(
        live.status,
        &live.headers,
        Body::from(live.bytes),
        ReplayOutcome::Passthrough,
        served_file,
    );
    resp.headers_mut()
        .insert(DRIFT_HEADER, HeaderValue::from_static(verdict.as_str()));
    resp
}
