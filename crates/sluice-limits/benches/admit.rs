//! The local admit/refuse decision: `ModelPool::admit` on a pool with a token, a request and
//! a concurrency limit and two job types, then the reservation settled, as the request path
//! does it. Criterion measures the mean; the p99 of single decisions (the target is
//! 50 µs) is printed from 200 000 timed calls, with a refusal path measured the same way.
//!
//! `cargo bench -p sluice-limits --bench admit`
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_limits::{
    Demand, Flexibility, JobType, Limits, ModelLimits, ModelPool, TokioClock, Used,
};

fn pool() -> Arc<ModelPool> {
    let job = |name: &str, ratio| JobType {
        name: name.into(),
        estimated_tokens: 1_000,
        estimated_requests: 1,
        ratio,
        flexibility: Flexibility::Flexible,
        max_wait: Duration::ZERO,
        memory_bytes: None,
    };
    let limits = ModelLimits {
        model: "m".into(),
        limits: Limits {
            tokens_per_minute: Some(u64::MAX / 4),
            requests_per_minute: Some(u64::MAX / 4),
            max_concurrent: Some(1_000),
            ..Limits::default()
        },
        job_types: vec![job("chat", 0.5), job("batch", 0.5)],
        default_job_type: "chat".into(),
        memory_budget_bytes: None,
    }
    .validate()
    .expect("valid limits");
    ModelPool::new(limits, Arc::new(TokioClock::new()))
}

fn p99(rt: &tokio::runtime::Runtime, pool: &Arc<ModelPool>, refused: bool) -> Duration {
    let n = 200_000;
    let demand = Demand {
        tokens: if refused { u64::MAX / 2 } else { 600 },
    };
    let mut samples = Vec::with_capacity(n);
    rt.block_on(async {
        for _ in 0..n {
            let t = Instant::now();
            let r = pool.admit(0, demand).await;
            if let Ok(r) = r {
                r.settle(Used {
                    tokens: 500,
                    requests: 1,
                });
            }
            samples.push(t.elapsed());
        }
    });
    samples.sort_unstable();
    samples[n * 99 / 100]
}

fn admit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let pool = pool();
    let admitted = p99(&rt, &pool, false);
    let refused = p99(&rt, &pool, true);
    println!("admit + settle: p99 {admitted:?}; a refusal: p99 {refused:?} (200 000 calls each)");
    c.bench_function("admit_and_settle", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = pool.admit(0, Demand { tokens: 600 }).await;
                if let Ok(r) = r {
                    r.settle(Used {
                        tokens: 500,
                        requests: 1,
                    });
                }
            })
        })
    });
}

criterion_group!(benches, admit);
criterion_main!(benches);
