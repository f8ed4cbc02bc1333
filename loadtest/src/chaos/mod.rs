//! `chaos-origin`: an HTTP/1.1 origin that serves a store's layout like a static file server
//! would, and breaks on purpose, by rule.
//!
//! Point [`origin_client::store::HttpStore`] (or an edge) at it and it reads the same data as
//! the store itself; then install [`Rule`]s to add latency, answer error statuses, reset
//! connections, hang, truncate or corrupt bodies, on a flapping schedule or at random, and
//! check with [`Counts`] how many requests reached the origin.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn origin_client::Store>) -> Result<(), Box<dyn std::error::Error>> {
//! use loadtest::chaos::{Action, ChaosOrigin, Kind, Rule};
//!
//! let (addr, origin) = ChaosOrigin::start(store, "127.0.0.1:0".parse()?).await?;
//! origin.set_rules(vec![
//!     Rule::new(Action::Status { code: 503, body: None }).path("sites/docs/current"),
//!     Rule::new(Action::Reset).kind(Kind::Tree).probability(0.5),
//! ])?;
//! // ... drive a client at http://{addr}/ ...
//! origin.heal();
//! assert_eq!(origin.counts().path("sites/docs/current"), 1);
//! origin.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Code map (each module states its invariants):
//! - `rules`: the rule types, their JSON, and the decision (pure, no I/O).
//! - `layout`: URL paths to store keys (pure).
//! - `counts`: bounded per-path request counters.
//! - `server`: the listener and connection lifecycle; `conn`: the socket wrapper through which
//!   resets and truncation reach TCP; `origin`: one request; `body`: streamed bodies and body
//!   faults; `control`: the `/_chaos/` endpoint.
//! - `cli`: the `loadtest chaos-origin` subcommand.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use origin_client::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod body;
pub mod cli;
mod conn;
mod control;
mod counts;
mod layout;
mod origin;
mod rules;
mod server;

pub use self::counts::{Counts, DEFAULT_MAX_PATHS, MAX_KEY_LEN};
pub use self::rules::{
    Action, Flap, Kind, MAX_DELAY, MAX_RULES, Rule, RuleError, check_rules, parse_rules,
};

use self::counts::Counter;
use self::rules::RuleSet;

/// How a [`ChaosOrigin`] runs, besides its store and address.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// When set, `/_chaos/` requests need `Authorization: Bearer TOKEN`.
    pub control_token: Option<String>,
    /// Rules installed at start.
    pub rules: Vec<Rule>,
    /// Seed for probability and jitter rolls; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// Distinct paths counted one by one; later ones count under `other`.
    pub max_paths: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            control_token: None,
            rules: Vec::new(),
            seed: None,
            max_paths: DEFAULT_MAX_PATHS,
            max_connections: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("invalid rules")]
    Rules(#[from] RuleError),
    #[error("cannot read the rules file {path}")]
    RulesFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the control token is empty")]
    EmptyToken,
    #[error("cannot open the upstream store")]
    Store(#[source] StoreError),
    #[error("cannot listen for shutdown signals")]
    Signal(#[source] io::Error),
}

/// A running chaos origin. Dropping it stops it too, without waiting;
/// [`shutdown`](ChaosOrigin::shutdown) waits until every connection is closed.
#[derive(Debug)]
pub struct ChaosOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl ChaosOrigin {
    /// Serves `store` on `addr` (port 0: any free port) with no rules. Returns the bound
    /// address and the handle.
    pub async fn start(
        store: Arc<dyn Store>,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, ChaosOrigin), ChaosError> {
        let origin = ChaosOrigin::start_with(store, addr, ChaosOptions::default()).await?;
        Ok((origin.addr, origin))
    }

    pub async fn start_with(
        store: Arc<dyn Store>,
        addr: SocketAddr,
        opts: ChaosOptions,
    ) -> Result<ChaosOrigin, ChaosError> {
        let rules = RuleSet::new(opts.rules, Instant::now())?;
        let token = match opts.control_token.as_deref() {
            Some("") => return Err(ChaosError::EmptyToken),
            Some(t) => Some(blake3::hash(t.as_bytes())),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ChaosError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ChaosError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            store,
            rules: ArcSwap::from_pointee(rules),
            counter: Counter::new(opts.max_paths),
            rng: Rng::new(opts.seed.unwrap_or_else(clock_seed)),
            token,
            shutdown: CancellationToken::new(),
        });
        let task = tokio::spawn(server::accept_loop(
            listener,
            shared.clone(),
            opts.max_connections,
        ));
        tracing::info!(addr = %bound, store = %shared.store.location(), "chaos-origin started");
        Ok(ChaosOrigin {
            addr: bound,
            shared,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/`: the base URL for an `HttpStore`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Replaces the rule list; flap schedules restart now. The old list stays on error.
    pub fn set_rules(&self, rules: Vec<Rule>) -> Result<(), RuleError> {
        self.shared.install(rules)
    }

    /// The installed rules.
    pub fn rules(&self) -> Vec<Rule> {
        self.shared.rules.load().rules().to_vec()
    }

    /// Removes every rule: the origin serves normally again.
    pub fn heal(&self) {
        self.shared.heal();
    }

    /// Requests per path since the start or the last reset (control requests excluded).
    pub fn counts(&self) -> Counts {
        self.shared.counter.snapshot()
    }

    pub fn reset_counts(&self) {
        self.shared.counter.reset();
    }

    /// Stops accepting, ends hangs, lets in-flight requests finish (cutting them after a few
    /// seconds) and waits until every connection is closed.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "chaos-origin server task failed");
        }
    }
}

impl Drop for ChaosOrigin {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// State shared by the listener, every connection and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Arc<dyn Store>,
    rules: ArcSwap<RuleSet>,
    counter: Counter,
    rng: Rng,
    /// blake3 of the control token.
    token: Option<blake3::Hash>,
    shutdown: CancellationToken,
}

impl Shared {
    fn install(&self, rules: Vec<Rule>) -> Result<(), RuleError> {
        let set = RuleSet::new(rules, Instant::now())?;
        tracing::info!(rules = set.rules().len(), "rules installed");
        self.rules.store(Arc::new(set));
        Ok(())
    }

    fn heal(&self) {
        self.rules.store(Arc::new(RuleSet::empty(Instant::now())));
        tracing::info!("healed: no rules");
    }
}

/// SplitMix64 behind an atomic: cheap, lock-free rolls for probability and jitter. Not for
/// anything secret.
#[derive(Debug)]
struct Rng(AtomicU64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// Uniform in `0.0..1.0`.
    fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolls_are_uniform_enough_and_in_range() {
        let rng = Rng::new(7);
        let n = 10_000;
        let mut below_quarter = 0;
        for _ in 0..n {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            if x < 0.25 {
                below_quarter += 1;
            }
        }
        assert!((2_200..2_800).contains(&below_quarter), "{below_quarter}");
    }
}
