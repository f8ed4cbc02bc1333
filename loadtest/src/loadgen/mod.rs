//! `loadtest run`: an HTTP load generator that does not flatter the server.
//!
//! Two modes:
//! - **closed loop**: `connections × streams` workers, each sending its next request when the
//!   previous one completes. Measures throughput; its latencies are service times, and a
//!   server that stalls simply gets fewer requests (coordinated omission).
//! - **open loop** (`--rate`): requests are due at a constant rate, `start + i / rate`, whether
//!   or not earlier ones have completed. A pacing thread releases each request at its due time;
//!   an idle worker sends it; when every worker is busy the backlog grows, and each request's
//!   latency is measured **from its intended send time**, so a stall shows in the percentiles
//!   of every request that should have been sent during it.
//!
//! Both have a warm-up phase (sent, not measured) and a measured phase, and both are bounded
//! by the measured duration and a request count. Connections are opened before the clock
//! starts; a connection that breaks is reopened and counted.
//!
//! Code map:
//! - `zipf`, `site`, `workload`: what to request (pure, no I/O).
//! - `conn`: TCP, TLS, QUIC; HTTP/1.1, HTTP/2 and HTTP/3 client connections; failure kinds.
//! - `engine`: workers, pacing, phases (the only module that keeps time).
//! - `report`: histograms to percentiles, JSON and text.
//! - `cli`: the `loadtest run` and `loadtest gen-site` subcommands.

use std::path::PathBuf;
use std::time::Duration;

pub mod cli;
pub mod conn;
mod engine;
pub mod report;
pub mod site;
pub mod workload;
pub mod zipf;

pub use self::conn::{ConnectError, ErrorKind, TlsOptions};
pub use self::engine::run;
pub use self::report::{CurvePoint, Latency, Report};
pub use self::workload::{Synthetic, Target, Workload};

/// The most connections (times streams) a run may open.
pub const MAX_WORKERS: usize = 100_000;

/// The HTTP version to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Proto {
    /// HTTP/1.1 (keep-alive, no pipelining).
    H1,
    /// HTTP/2: prior knowledge (h2c) for http://, ALPN h2 for https://.
    H2,
    /// HTTP/3 over QUIC (https:// only).
    H3,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every worker as fast as it goes.
    Closed,
    /// A constant arrival rate, requests per second.
    Open { rate: f64 },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `http://HOST:PORT` or `https://HOST:PORT`: where connections go.
    pub target: http::Uri,
    pub proto: Proto,
    pub mode: Mode,
    pub connections: usize,
    /// Concurrent streams per connection (HTTP/2 and HTTP/3; 1 for HTTP/1.1).
    pub streams: usize,
    pub warmup: Duration,
    /// The measured phase's length.
    pub duration: Duration,
    /// The most requests the measured phase sends.
    pub max_requests: u64,
    /// Per request, from when it is sent to its last body byte.
    pub timeout: Duration,
    pub tls: TlsOptions,
    pub seed: u64,
    /// Draw a live progress line on standard error.
    pub progress: bool,
}

impl RunOptions {
    /// Defaults for everything but the target: closed loop, HTTP/1.1, 16 connections, 1 s
    /// warm-up, 10 s measured, 10 s timeout.
    pub fn new(target: http::Uri) -> RunOptions {
        RunOptions {
            target,
            proto: Proto::H1,
            mode: Mode::Closed,
            connections: 16,
            streams: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            max_requests: 10_000_000,
            timeout: Duration::from_secs(10),
            tls: TlsOptions::default(),
            seed: 1,
            progress: false,
        }
    }

    /// Checks the settings that do not need the network.
    pub fn validate(&self) -> Result<(), GenError> {
        let workers = self.connections.saturating_mul(self.streams);
        if self.connections == 0 || self.streams == 0 || workers > MAX_WORKERS {
            return Err(GenError::Options(
                "connections and streams must be at least 1, and their product at most 100000",
            ));
        }
        if self.streams > 1 && self.proto == Proto::H1 {
            return Err(GenError::Options(
                "--streams above 1 needs --proto h2 or h3 (HTTP/1.1 has no multiplexing)",
            ));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            return Err(GenError::Options(
                "the measured duration must be between 1 ms and 24 h",
            ));
        }
        if self.warmup > Duration::from_secs(3600) {
            return Err(GenError::Options("the warm-up may be at most 1 h"));
        }
        if self.max_requests == 0 {
            return Err(GenError::Options("--max-requests must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(GenError::Options("the request timeout must be above 0"));
        }
        if let Mode::Open { rate } = self.mode
            && !(rate.is_finite() && (0.001..=10_000_000.0).contains(&rate))
        {
            return Err(GenError::Options(
                "--rate must be between 0.001 and 10000000 requests per second",
            ));
        }
        Ok(())
    }
}

/// Why a run could not start. Failures of single requests are not errors: they are counted
/// in the [`Report`] by [`ErrorKind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenError {
    #[error("--proto h3 needs an https:// target (HTTP/3 runs over QUIC, which is always TLS)")]
    H3NeedsHttps,
    #[error("cannot set up QUIC: {0}")]
    QuicConfig(String),
    #[error("invalid target {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Target(String),
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid options: {0}")]
    Options(&'static str),
    #[error("cannot set up TLS")]
    TlsConfig(#[source] rustls::Error),
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot open connection {index} to {addr}: {kind}: {reason}")]
    Connect {
        index: usize,
        addr: std::net::SocketAddr,
        kind: ErrorKind,
        reason: String,
    },
    #[error("invalid workload")]
    Workload(#[from] workload::WorkloadError),
    #[error("cannot read the URL file {path}")]
    UrlFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Site(#[from] site::SiteError),
}
