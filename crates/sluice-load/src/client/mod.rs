//! The HTTP/1.1 client: one [`Connection`] per worker and target, driven inside the worker's
//! own task (no connection task, no pool lock), and [`exchange`], which sends one request and
//! times every token of the answer.

mod connection;
mod exchange;

pub use connection::{ConnectError, Connection, TlsSettings};
pub use exchange::{exchange, ExchangeRequest, ExchangeResult};
