//! Prometheus counters of one proxy, served at `/_sluice/metrics`. One registry per proxy,
//! so several proxies in one process (tests) count separately.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::drift::DriftVerdict;
use crate::headers::ReplayOutcome;

/// Why the proxy could not do what its mode asked for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The answer (or request) contained a secret, so it was not recorded.
    Secret,
    /// A recording could not be read, parsed or written.
    StoreError,
    /// A live event stream broke before its end, so it was not recorded.
    IncompleteStream,
    /// The request body was over the size limit or unreadable.
    RequestTooLarge,
    /// A live event stream grew past `max_response_bytes`: relayed in full, not recorded.
    ResponseTooLarge,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 5] = [
        RefusalReason::Secret,
        RefusalReason::StoreError,
        RefusalReason::IncompleteStream,
        RefusalReason::RequestTooLarge,
        RefusalReason::ResponseTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Secret => "secret",
            RefusalReason::StoreError => "store_error",
            RefusalReason::IncompleteStream => "incomplete_stream",
            RefusalReason::RequestTooLarge => "request_too_large",
            RefusalReason::ResponseTooLarge => "response_too_large",
        }
    }
}

const OUTCOMES: [ReplayOutcome; 5] = [
    ReplayOutcome::Hit,
    ReplayOutcome::Miss,
    ReplayOutcome::Recorded,
    ReplayOutcome::Refused,
    ReplayOutcome::Passthrough,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Debug)]
pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<OutcomeLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    drift: Family<VerdictLabels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice_proxy");
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by final outcome (the x-sluice-replay value; for recorded streams, decided when the stream ends)",
            requests.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests the proxy could not record or replay as its mode asked, by reason",
            refusals.clone(),
        );
        let drift = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "drift",
            "Comparisons of a recording with a live answer (diff mode) or a new recording (overwrites), by verdict",
            drift.clone(),
        );
        // Every series exists from the start at 0, so rates and alerts work before the
        // first event of a kind.
        for o in OUTCOMES {
            let _ = requests.get_or_create(&OutcomeLabels {
                outcome: o.as_str(),
            });
        }
        for r in RefusalReason::ALL {
            let _ = refusals.get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        for v in DriftVerdict::ALL {
            let _ = drift.get_or_create(&VerdictLabels {
                verdict: v.as_str(),
            });
        }
        ProxyMetrics {
            registry,
            requests,
            refusals,
            drift,
        }
    }

    pub fn request(&self, outcome: ReplayOutcome) {
        self.requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn refusal(&self, reason: RefusalReason) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn drift(&self, verdict: DriftVerdict) {
        self.drift
            .get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
