//! Errors of the serving path, and the one place that maps them to HTTP statuses.
//!
//! `EdgeError` is cheap to clone (sources sit behind `Arc`), so a coalesced fetch hands the
//! same error, with its kind, to every waiter: a timeout seen by fifty waiters is fifty 504s.

use std::sync::Arc;

use http::StatusCode;
use origin_client::store::parents::{Classify, Failure};
use origin_client::{Hash, StoreError, TreeError};

/// Why a request could not be answered from a deploy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    #[error("origin store failed")]
    Store(#[source] Arc<StoreError>),
    #[error("origin sent tree node {hash} that does not decode")]
    BadTree {
        hash: Hash,
        #[source]
        source: TreeError,
    },
    #[error("origin sent site rules {hash} that do not decode: {why}")]
    BadRules { hash: Hash, why: Arc<str> },
    #[error("origin has no object {hash}")]
    MissingObject { hash: Hash },
    #[error("object {hash} is {got} bytes but its tree entry says {want}")]
    SizeMismatch { hash: Hash, got: u64, want: u64 },
    #[error("object {hash} failed verification")]
    Corrupt { hash: Hash },
    #[error("disk cache i/o")]
    Disk(#[source] Arc<std::io::Error>),
    #[error("site {site} has too many origin requests waiting")]
    SiteShed { site: Arc<str> },
    #[error("internal error: {0}")]
    Internal(Arc<str>),
}

pub type EdgeResult<T> = Result<T, EdgeError>;

impl From<StoreError> for EdgeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { hash } => EdgeError::Corrupt { hash },
            e => EdgeError::Store(Arc::new(e)),
        }
    }
}

impl EdgeError {
    pub fn internal(why: impl Into<Arc<str>>) -> EdgeError {
        EdgeError::Internal(why.into())
    }

    pub fn disk(e: std::io::Error) -> EdgeError {
        EdgeError::Disk(Arc::new(e))
    }

    fn store(&self) -> Option<&StoreError> {
        match self {
            EdgeError::Store(e) => Some(e),
            _ => None,
        }
    }

    /// The status a client gets: the origin timed out -> 504; the origin failed or sent
    /// something wrong -> 502; the origin (or this site's share of it) is not being asked
    /// right now -> 503; our own failure -> 500. Exhaustive, so a new kind must be placed.
    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::Store(e) => match &**e {
                StoreError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                StoreError::CircuitOpen { .. } | StoreError::Shed { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_GATEWAY,
            },
            EdgeError::SiteShed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EdgeError::BadTree { .. }
            | EdgeError::BadRules { .. }
            | EdgeError::MissingObject { .. }
            | EdgeError::SizeMismatch { .. }
            | EdgeError::Corrupt { .. } => StatusCode::BAD_GATEWAY,
            EdgeError::Internal(_) | EdgeError::Disk(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// When to try again, for 503s: the breaker's remaining open time, or a second.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match (self, self.store()) {
            (_, Some(StoreError::CircuitOpen { retry_after, .. })) => {
                Some((*retry_after).max(std::time::Duration::from_secs(1)))
            }
            (_, Some(StoreError::Shed { .. })) | (EdgeError::SiteShed { .. }, _) => {
                Some(std::time::Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// A short, safe reason for the response body (no paths of this machine).
    pub fn reason(&self) -> &'static str {
        match self {
            EdgeError::Store(e) => match &**e {
                StoreError::Timeout { .. } => "origin timed out",
                StoreError::CircuitOpen { .. } => "origin is failing; not asking it for a while",
                StoreError::Shed { .. } => "too many requests waiting for the origin",
                _ => "origin unavailable",
            },
            EdgeError::SiteShed { .. } => "too many requests waiting for the origin",
            EdgeError::BadTree { .. } => "origin sent a malformed tree",
            EdgeError::BadRules { .. } => "origin sent malformed site rules",
            EdgeError::MissingObject { .. } => "origin is missing an object of this deploy",
            EdgeError::SizeMismatch { .. } | EdgeError::Corrupt { .. } => {
                "origin sent bytes that fail verification"
            }
            EdgeError::Disk(_) | EdgeError::Internal(_) => "internal error",
        }
    }
}

/// How a fill's failure counts against the parent it read from: bytes that fail their hash or
/// size are wrong bytes; this node's own troubles (its disk, a bulkhead, a bug) stop the
/// walk over the sources, since another source would not help.
impl Classify for EdgeError {
    fn failure(&self) -> Failure {
        match self {
            EdgeError::Store(e) => e.failure(),
            EdgeError::Corrupt { .. }
            | EdgeError::SizeMismatch { .. }
            | EdgeError::BadTree { .. }
            | EdgeError::BadRules { .. } => Failure::WrongBytes,
            EdgeError::MissingObject { .. } => Failure::NotFound,
            EdgeError::Disk(_) | EdgeError::SiteShed { .. } | EdgeError::Internal(_) => {
                Failure::Local
            }
        }
    }

    fn size_mismatch(&self) -> bool {
        matches!(self, EdgeError::SizeMismatch { .. })
    }
}

impl From<crate::coalesce::Abandoned> for EdgeError {
    fn from(e: crate::coalesce::Abandoned) -> Self {
        EdgeError::internal(e.to_string())
    }
}

/// An error and its causes on one line, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Clones keep the kind (and so the status): the reason a shared timeout is a 504.
    #[test]
    fn clones_keep_status_and_cause() {
        let e = EdgeError::from(StoreError::Timeout {
            url: "x".into(),
            after: Some(Duration::from_secs(1)),
        });
        let clones: Vec<EdgeError> = (0..50).map(|_| e.clone()).collect();
        assert!(
            clones
                .iter()
                .all(|c| c.status() == StatusCode::GATEWAY_TIMEOUT)
        );
        assert!(
            chain(&clones[7]).contains("timed out"),
            "{}",
            chain(&clones[7])
        );
        let shed = EdgeError::SiteShed { site: "s".into() };
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(
            EdgeError::internal("x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
