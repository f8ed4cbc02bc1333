//! Errors of the serving path, and the one place that maps them to HTTP statuses.

use std::sync::Arc;

use http::StatusCode;
use origin_client::{Hash, StoreError, TreeError};

/// Why a request could not be answered from a deploy. Shared (`Arc`) because coalesced
/// fetches hand one error to every waiter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    #[error("origin store failed")]
    Store(#[source] StoreError),
    #[error("origin sent tree node {hash} that does not decode")]
    BadTree {
        hash: Hash,
        #[source]
        source: TreeError,
    },
    #[error("origin has no object {hash}")]
    MissingObject { hash: Hash },
    #[error("object {hash} is {got} bytes but its tree entry says {want}")]
    SizeMismatch { hash: Hash, got: u64, want: u64 },
    #[error("object {hash} failed verification")]
    Corrupt { hash: Hash },
    #[error("disk cache i/o")]
    Disk(#[source] std::io::Error),
    #[error("site {site} has too many origin requests waiting")]
    SiteShed { site: String },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type EdgeResult<T> = Result<T, Arc<EdgeError>>;

impl From<StoreError> for EdgeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { hash } => EdgeError::Corrupt { hash },
            e => EdgeError::Store(e),
        }
    }
}

impl EdgeError {
    /// The status a client gets: the origin timed out -> 504; the origin failed or sent
    /// something wrong -> 502; our own failure -> 500.
    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::Store(StoreError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            EdgeError::Store(StoreError::CircuitOpen { .. } | StoreError::Shed { .. })
            | EdgeError::SiteShed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EdgeError::Internal(_) | EdgeError::Disk(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// When to try again, for 503s: the breaker's remaining open time, or a second.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EdgeError::Store(StoreError::CircuitOpen { retry_after, .. }) => {
                Some((*retry_after).max(std::time::Duration::from_secs(1)))
            }
            EdgeError::Store(StoreError::Shed { .. }) | EdgeError::SiteShed { .. } => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// A short, safe reason for the response body (no paths of this machine).
    pub fn reason(&self) -> &'static str {
        match self {
            EdgeError::Store(StoreError::Timeout { .. }) => "origin timed out",
            EdgeError::Store(StoreError::CircuitOpen { .. }) => {
                "origin is failing; not asking it for a while"
            }
            EdgeError::Store(StoreError::Shed { .. }) | EdgeError::SiteShed { .. } => {
                "too many requests waiting for the origin"
            }
            EdgeError::Store(_) => "origin unavailable",
            EdgeError::BadTree { .. } => "origin sent a malformed tree",
            EdgeError::MissingObject { .. } => "origin is missing an object of this deploy",
            EdgeError::SizeMismatch { .. } | EdgeError::Corrupt { .. } => {
                "origin sent bytes that fail verification"
            }
            EdgeError::Disk(_) | EdgeError::Internal(_) => "internal error",
        }
    }
}
