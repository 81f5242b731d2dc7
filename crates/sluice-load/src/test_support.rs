//! Fixtures shared by unit tests.

use std::collections::BTreeMap;

use crate::record::{ErrorClass, RequestRecord, TokenSource};
use crate::run::{LoadPoint, RunOutput};
use crate::stats::LatencyHistogram;

/// `n` streamed requests with TTFT = `ttft_ms`, 10 tokens 10 ms apart, sent 100 ms
/// apart; the first `failed` of them failed with a 503.
pub(crate) fn output(n: u64, failed: u64, ttft_ms: u64) -> RunOutput {
    let mut itl = LatencyHistogram::new();
    let records = (0..n)
        .map(|i| {
            let start = i * 100_000;
            let ok = i >= failed;
            if ok {
                for _ in 0..9 {
                    itl.record(10_000);
                }
            }
            RequestRecord {
                index: i,
                target: 0,
                warmup: false,
                stream: true,
                scheduled_us: start,
                dispatched_us: start,
                waited_for_connection: false,
                token_gaps_us: None,
                sent_us: start,
                first_token_us: ok.then_some(start + ttft_ms * 1000),
                second_token_us: ok.then_some(start + ttft_ms * 1000 + 10_000),
                end_us: start + ttft_ms * 1000 + 90_000,
                token_chunks: if ok { 10 } else { 0 },
                max_itl_us: ok.then_some(10_000),
                output_tokens: Some(10),
                token_source: TokenSource::Usage,
                prompt_tokens: Some(20),
                cached_prompt_tokens: None,
                requested_output_tokens: Some(10),
                approx_input_tokens: Some(20),
                session_id: None,
                status: Some(if ok { 200 } else { 503 }),
                error: (!ok).then_some(ErrorClass::Http(503)),
            }
        })
        .collect();
    RunOutput {
        label: "test".into(),
        load: LoadPoint::Concurrency { concurrency: 1 },
        records,
        itl,
        token_timeline: Vec::new(),
        error_examples: BTreeMap::new(),
        warmup_end_us: None,
        start_us: 0,
        window_end_us: None,
        receive_lag: LatencyHistogram::new(),
        interrupted: false,
        grace: crate::config::DEFAULT_GRACE,
        open_loop: false,
        target_rate: None,
        wall_s: 1.0,
        cpu_seconds: None,
        steal_percent: None,
        cores: 2,
        connections_opened: 1,
        peak_connections: 1,
        max_connections: 10,
        connection_cap_hit: false,
        distinct_requests: None,
        tokenizer: false,
        scheduling_delay: LatencyHistogram::new(),
    }
}
