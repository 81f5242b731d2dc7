//! Helpers for the proxy's TLS tests; the HTTPS upstream itself is the testkit's.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

pub use sluice_testkit::tls::TlsUpstream;

/// The address of a mock engine (its base URL is `http://ADDR/v1`).
pub fn mock_addr(mock: &sluice_testkit::MockServer) -> SocketAddr {
    mock.base_url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .parse()
        .unwrap()
}

/// Every message in an error's source chain, joined.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(" | ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
