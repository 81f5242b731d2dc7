//! Errors that stop a load test before or while it runs. Failed *requests* are not errors
//! of the tool: they are measured and reported.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::run::RunError;
use crate::target::TargetError;
use crate::workload::DatasetError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A combination of settings that cannot work; the message says which.
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot connect to {url} ({addr}): {reason}. Is the server running and listening there?"
    )]
    Unreachable {
        url: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("sweep: {0}")]
    Sweep(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("--ca-file {}: {message}", path.display())]
    CaFile { path: PathBuf, message: String },
}

/// Reading or writing a report file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a sluice load JSON report: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("cannot draw the chart {}: {message}", path.display())]
    Chart { path: PathBuf, message: String },
}
