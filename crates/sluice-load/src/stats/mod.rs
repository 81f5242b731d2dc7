//! From per-request records to the numbers a report shows: latency distributions,
//! throughput, goodput, errors, the per-second time series, and the generator's own health.

mod histogram;
mod summary;
mod timeseries;

pub use histogram::{
    exact_quantile, samples_to_bound, BucketCounts, Interval, LatencyHistogram, LatencyStats,
};
pub use summary::{
    analyze, Distributions, ErrorSummary, GeneratorSummary, Latencies, MetricSet, PerMetric,
    PerUserRate, RequestCounts, RunAnalysis, RunSummary, Throughput, TokenSummary,
};
pub use timeseries::TimeBucket;
