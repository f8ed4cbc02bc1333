//! Pushed pointer changes over NATS (`[notify] nats`; not the `notify` crate, the file
//! watcher of `preview` and `listen::tls`).
//!
//! `edge publish --notify`, `edge rollback --notify` and the admin purge publish a small JSON
//! [`Hint`] on `edge.sites.<site>` once the pointer moved ([`announce`], [`Notifier::announce`]).
//! `edge serve` subscribes to `edge.sites.*` ([`Notifier::start`]) and refreshes the site the
//! subject names at once, through [`Pointers::refresh_site`]: the pointer is read from the
//! store, its root fetched and verified, and [`crate::pointers::decide`] applied. A message is
//! only a hint: a forged one costs one read of a pointer from the store, a lost one a poll.
//!
//! Invariants:
//! - nothing in a message is trusted but the site name, which is validated; a pointer comes
//!   only from the store;
//! - a site gets at most one refresh in flight plus one queued, however many messages name it;
//!   only sites this node has cached are refreshed; the sites pending at once and the
//!   refreshes running at once are bounded, so a flood cannot amplify into origin load;
//! - while NATS is unreachable the node polls at `fallback_refresh_interval` (through
//!   [`Pointers::set_poll_cap`]), says so in a log line, `edge_notify_connected` and
//!   `/status`, and reconnects with jittered backoff; back, it catches up with one refresh
//!   round and polls at `pointers.refresh_interval` again;
//! - a malformed message is counted and logged at a bounded rate, never a panic.
//!
//! The decisions (message parsing, coalescing, the link state, backoff, log gates) are pure
//! and take time as an argument; only [`Notifier`]'s tasks and [`announce`] do I/O.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;
use origin_client::records::{NameError, validate_deploy_id, validate_site};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::json;
use tokio::time::Instant;

use crate::error;
use crate::metrics::{counter, counter_family, gauge};
use crate::pointers::Pointers;

/// Every hint's subject starts with this; the site name follows.
pub const SUBJECT_PREFIX: &str = "edge.sites.";
/// What `edge serve` subscribes to (site names hold no `.`, so one token is one site).
pub const SUBSCRIPTION: &str = "edge.sites.*";
/// The largest payload read; a hint is well under 200 bytes.
pub const MAX_PAYLOAD: usize = 1024;
/// Sites with a refresh pending at once; hints for more are dropped (counted) and left to
/// the poll.
pub const MAX_PENDING_SITES: usize = 4096;
/// Refreshes started by hints that run at once (node-wide).
pub const REFRESH_CONCURRENCY: usize = 8;
/// How long publishing a hint may take (connect, publish, flush), each.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: the ceiling starts here and doubles per attempt...
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A disagreement between the link state and the client's is checked this often.
const LINK_CHECK: Duration = Duration::from_secs(5);

/// The subject of a site's hints.
pub fn subject(site: &str) -> String {
    format!("{SUBJECT_PREFIX}{site}")
}

/// The message: which site's pointer moved, and to what (for logs; never trusted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    pub site: String,
    /// The deploy now current (None after a purge).
    #[serde(default)]
    pub deploy: Option<String>,
    /// The pointer's sequence number (None after a purge).
    #[serde(default)]
    pub seq: Option<u64>,
    /// What moved it: `publish`, `rollback` or `purge`.
    #[serde(default)]
    pub event: Option<String>,
}

impl Hint {
    pub fn moved(site: &str, deploy: &str, seq: u64, event: &str) -> Hint {
        Hint {
            site: site.to_owned(),
            deploy: Some(deploy.to_owned()),
            seq: Some(seq),
            event: Some(event.to_owned()),
        }
    }

    pub fn purged(site: &str) -> Hint {
        Hint {
            site: site.to_owned(),
            deploy: None,
            seq: None,
            event: Some("purge".to_owned()),
        }
    }
}

/// Why a message was not taken as a hint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BadMessage {
    #[error("the subject is not {SUBJECT_PREFIX}<site>")]
    Subject,
    #[error("the subject names no valid site")]
    Site(#[source] NameError),
    #[error("a payload of {0} bytes (at most {MAX_PAYLOAD})")]
    TooLarge(usize),
    #[error("the payload is not a hint")]
    Payload(#[source] serde_json::Error),
    #[error("the payload names another site than the subject")]
    OtherSite,
    #[error("the payload names no valid deploy")]
    Deploy(#[source] NameError),
}

/// Reads a message as a hint. Pure.
pub fn parse(subject: &str, payload: &[u8]) -> Result<Hint, BadMessage> {
    let site = subject
        .strip_prefix(SUBJECT_PREFIX)
        .ok_or(BadMessage::Subject)?;
    validate_site(site).map_err(BadMessage::Site)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(BadMessage::TooLarge(payload.len()));
    }
    let hint: Hint = serde_json::from_slice(payload).map_err(BadMessage::Payload)?;
    if hint.site != site {
        return Err(BadMessage::OtherSite);
    }
    if let Some(d) = &hint.deploy {
        validate_deploy_id(d).map_err(BadMessage::Deploy)?;
    }
    Ok(hint)
}

/// Reconnect delay before attempt `attempts` (1 = the first after a loss: at once): a
/// ceiling of 100 ms doubling per attempt up to 5 s, of which a random half (`unit` in
/// [0, 1)) is added to the other half, so that many nodes do not reconnect in step. Pure.
pub fn reconnect_delay(attempts: usize, unit: f64) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = (attempts - 2).min(16) as u32;
    let ceiling = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    ceiling / 2 + ceiling.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

// ---- coalescing ------------------------------------------------------------------------------

/// What a hint for a site does, given the refreshes pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Offer {
    /// No refresh pending: start one.
    Start,
    /// One is in flight: queue one more (the pointer may have moved after it read it).
    Queue,
    /// One is in flight and one queued: this hint is folded into the queued one.
    Coalesce,
    /// Too many sites pending: dropped, the poll will see the change.
    Full,
}

/// Sites with a refresh in flight, and whether one more is queued. Pure; bounded.
#[derive(Debug)]
struct Pending {
    sites: HashMap<String, bool>,
    cap: usize,
}

impl Pending {
    fn new(cap: usize) -> Pending {
        Pending {
            sites: HashMap::new(),
            cap,
        }
    }

    fn offer(&mut self, site: &str) -> Offer {
        let full = self.sites.len() >= self.cap;
        match self.sites.get_mut(site) {
            Some(queued) if *queued => Offer::Coalesce,
            Some(queued) => {
                *queued = true;
                Offer::Queue
            }
            None if full => Offer::Full,
            None => {
                self.sites.insert(site.to_owned(), false);
                Offer::Start
            }
        }
    }

    /// The refresh of `site` ended. `true`: one was queued, run it now (it is in flight
    /// from here); `false`: the site is no longer pending.
    fn finish(&mut self, site: &str) -> bool {
        match self.sites.get_mut(site) {
            Some(queued) if *queued => {
                *queued = false;
                true
            }
            _ => {
                self.sites.remove(site);
                false
            }
        }
    }
}

// ---- the link --------------------------------------------------------------------------------

/// What the link watcher hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEvent {
    Connected,
    Disconnected,
    /// The client's own state, read every [`LINK_CHECK`] (in case an event was lost).
    Observed(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Up,
    Down,
}

/// Whether pushes arrive, from the client's events. Pure: time comes in as an argument.
#[derive(Debug, Default)]
struct Link {
    up: bool,
    /// The last observation disagreed with `up` (two in a row change it).
    disagreed: bool,
    /// When a connect failure was last logged in this outage (None: none yet).
    failure_logged: Option<Instant>,
}

impl Link {
    /// How often connect failures are logged during one outage (the first at once).
    const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

    fn step(&mut self, ev: LinkEvent) -> Option<Change> {
        let to = match ev {
            LinkEvent::Connected => true,
            LinkEvent::Disconnected => false,
            LinkEvent::Observed(up) if up == self.up => {
                self.disagreed = false;
                return None;
            }
            LinkEvent::Observed(up) => {
                if !std::mem::replace(&mut self.disagreed, true) {
                    return None;
                }
                up
            }
        };
        self.disagreed = false;
        if to == self.up {
            return None;
        }
        self.up = to;
        self.failure_logged = None;
        Some(if to { Change::Up } else { Change::Down })
    }

    /// A connect attempt failed: whether to log it.
    fn failed(&mut self, now: Instant) -> bool {
        let log = self
            .failure_logged
            .is_none_or(|t| now.duration_since(t) >= Self::FAILURE_LOG_EVERY);
        if log {
            self.failure_logged = Some(now);
        }
        log
    }
}

/// At most [`LogGate::LINES`] lines per [`LogGate::WINDOW`]; the rest are counted. Pure.
#[derive(Debug, Default)]
struct LogGate {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogGate {
    const LINES: u32 = 5;
    const WINDOW: Duration = Duration::from_secs(60);

    fn allow(&mut self, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Self::WINDOW)
        {
            self.window = Some(now);
            self.lines = 0;
        }
        self.lines += 1;
        if self.lines <= Self::LINES {
            return true;
        }
        self.suppressed += 1;
        false
    }
}

// ---- counters --------------------------------------------------------------------------------

/// What became of a message (`edge_notify_messages_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A refresh of the site started.
    Accepted,
    /// Queued behind the site's refresh in flight.
    Queued,
    /// Folded into the site's queued refresh.
    Coalesced,
    /// The site is not cached here: nothing to refresh (its first request reads the store).
    Ignored,
    /// A bad subject or payload.
    Invalid,
    /// Too many sites pending.
    Dropped,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Accepted,
        Outcome::Queued,
        Outcome::Coalesced,
        Outcome::Ignored,
        Outcome::Invalid,
        Outcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Queued => "queued",
            Outcome::Coalesced => "coalesced",
            Outcome::Ignored => "ignored",
            Outcome::Invalid => "invalid",
            Outcome::Dropped => "dropped",
        }
    }
}

/// What a refresh started by a hint found (`edge_notify_refreshes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    /// A new deploy was adopted.
    Changed,
    /// The pointer was the one cached (confirmed).
    Unchanged,
    /// The refresh failed; the cached pointer was kept.
    Failed,
}

impl RefreshResult {
    pub const ALL: [RefreshResult; 3] = [
        RefreshResult::Changed,
        RefreshResult::Unchanged,
        RefreshResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Changed => "changed",
            RefreshResult::Unchanged => "unchanged",
            RefreshResult::Failed => "failed",
        }
    }
}

/// Hints this node published (admin purges): `sent`, `failed`, `skipped` (not connected).
const ANNOUNCED: [&str; 3] = ["sent", "failed", "skipped"];

#[derive(Debug, Default)]
pub struct NotifyStats {
    connected: AtomicBool,
    connects: AtomicU64,
    disconnects: AtomicU64,
    connect_failures: AtomicU64,
    messages: [AtomicU64; Outcome::ALL.len()],
    refreshes: [AtomicU64; RefreshResult::ALL.len()],
    announced: [AtomicU64; ANNOUNCED.len()],
}

impl NotifyStats {
    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn messages(&self, o: Outcome) -> u64 {
        self.messages[o as usize].load(Relaxed)
    }

    pub fn refreshes(&self, r: RefreshResult) -> u64 {
        self.refreshes[r as usize].load(Relaxed)
    }
}

// ---- errors ----------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("connecting to {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("subscribing to {SUBSCRIPTION}")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("publishing on {subject}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::PublishError,
    },
    #[error("flushing the hint to the server")]
    Flush(#[source] async_nats::client::FlushError),
    #[error("{what}: no answer within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("not connected to {url}")]
    NotConnected { url: String },
}

// ---- the publisher ---------------------------------------------------------------------------

/// Publishes `hint` on its site's subject at `url` (a `nats://` URL) and waits until the
/// server has it: for `edge publish --notify` and `edge rollback --notify`.
pub async fn announce(url: &str, hint: &Hint) -> Result<(), NotifyError> {
    let connect = async_nats::ConnectOptions::new()
        .name("edge publish")
        .connection_timeout(ANNOUNCE_TIMEOUT)
        .connect(url);
    let client = tokio::time::timeout(ANNOUNCE_TIMEOUT + Duration::from_millis(500), connect)
        .await
        .map_err(|_| NotifyError::Timeout {
            what: "connecting",
            after: ANNOUNCE_TIMEOUT,
        })?
        .map_err(|source| NotifyError::Connect {
            url: url.to_owned(),
            source,
        })?;
    publish_hint(&client, hint).await
}

async fn publish_hint(client: &async_nats::Client, hint: &Hint) -> Result<(), NotifyError> {
    // A `Hint` is plain strings and numbers: it always serializes.
    let payload = serde_json::to_vec(hint).unwrap_or_default();
    let subject = subject(&hint.site);
    let sent = async {
        client
            .publish(subject.clone(), payload.into())
            .await
            .map_err(|source| NotifyError::Publish {
                subject: subject.clone(),
                source,
            })?;
        client.flush().await.map_err(NotifyError::Flush)
    };
    tokio::time::timeout(ANNOUNCE_TIMEOUT, sent)
        .await
        .map_err(|_| NotifyError::Timeout {
            what: "publishing",
            after: ANNOUNCE_TIMEOUT,
        })?
}

// ---- the subscriber --------------------------------------------------------------------------

/// `[notify]` as the node runs it.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// The polling interval while NATS is unreachable.
    pub fallback_refresh_interval: Duration,
}

/// A running node's subscription: hints in, refreshes out; the link state for the poller,
/// metrics and `/status`; and the connection for the admin purge's own hints.
pub struct Notifier {
    cfg: NotifyConfig,
    client: async_nats::Client,
    pointers: Arc<Pointers>,
    pending: Mutex<Pending>,
    slots: tokio::sync::Semaphore,
    pub stats: NotifyStats,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("url", &self.cfg.url)
            .field("connected", &self.stats.connected())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Subscribes to [`SUBSCRIPTION`] at `cfg.url` and starts the tasks that follow the link
    /// and take hints (for the node's lifetime). Does not wait for the server: until it
    /// answers, and whenever it is gone, the node polls at `cfg.fallback_refresh_interval`.
    pub async fn start(
        cfg: NotifyConfig,
        pointers: Arc<Pointers>,
    ) -> Result<Arc<Notifier>, NotifyError> {
        pointers.set_poll_cap(Some(cfg.fallback_refresh_interval));
        // The client's events, for the link watcher. Bounded: it drains them at once, and the
        // periodic check repairs the state if one is ever lost.
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(64);
        let options = async_nats::ConnectOptions::new()
            .name("edge serve")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(ANNOUNCE_TIMEOUT)
            .ping_interval(Duration::from_secs(10))
            // Messages waiting for the receiver (it takes each in microseconds); beyond, the
            // client drops them (a slow-consumer event): they are hints, the poll covers them.
            // Bounds what a flood of large payloads can hold in memory.
            .subscription_capacity(1024)
            .reconnect_delay_callback(|attempts| reconnect_delay(attempts, fastrand::f64()))
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.try_send(event);
                }
            });
        let client =
            options
                .connect(cfg.url.as_str())
                .await
                .map_err(|source| NotifyError::Connect {
                    url: cfg.url.clone(),
                    source,
                })?;
        let subscriber = client
            .subscribe(SUBSCRIPTION)
            .await
            .map_err(NotifyError::Subscribe)?;
        tracing::info!(
            nats = %cfg.url,
            subject = SUBSCRIPTION,
            fallback_s = cfg.fallback_refresh_interval.as_secs_f64(),
            "pushed pointer changes: connecting; polling at the fallback interval until connected"
        );
        let this = Arc::new(Notifier {
            cfg,
            client,
            pointers,
            pending: Mutex::new(Pending::new(MAX_PENDING_SITES)),
            slots: tokio::sync::Semaphore::new(REFRESH_CONCURRENCY),
            stats: NotifyStats::default(),
        });
        tokio::spawn(this.clone().watch_link(events_rx));
        tokio::spawn(this.clone().receive(subscriber));
        Ok(this)
    }

    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// Follows the client's events: the poll cap, the log lines and the counters.
    async fn watch_link(
        self: Arc<Self>,
        mut events: tokio::sync::mpsc::Receiver<async_nats::Event>,
    ) {
        let mut link = Link::default();
        let mut others = LogGate::default();
        let mut check = tokio::time::interval(LINK_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                ev = events.recv() => match ev {
                    Some(async_nats::Event::Connected) => LinkEvent::Connected,
                    Some(async_nats::Event::Disconnected) => LinkEvent::Disconnected,
                    Some(async_nats::Event::ClientError(e)) => {
                        // Each failed connect attempt while the link is down.
                        self.stats.connect_failures.fetch_add(1, Relaxed);
                        if !link.up && link.failed(Instant::now()) {
                            tracing::warn!(
                                nats = %self.cfg.url,
                                error = %e,
                                poll_s = self.pointers.poll_interval().as_secs_f64(),
                                "NATS unreachable: pointer changes are not pushed; polling at the fallback interval and reconnecting with backoff"
                            );
                        }
                        continue;
                    }
                    Some(other) => {
                        // Slow consumer (hints dropped), server errors, lame duck: at a
                        // bounded rate, since a flood can cause them.
                        if others.allow(Instant::now()) {
                            tracing::warn!(nats = %self.cfg.url, event = %other, suppressed = others.suppressed, "NATS event");
                        }
                        continue;
                    }
                    // The client is gone (the node is stopping).
                    None => return,
                },
                _ = check.tick() => {
                    LinkEvent::Observed(self.client.connection_state() == State::Connected)
                }
            };
            match link.step(ev) {
                Some(Change::Up) => self.went_up(),
                Some(Change::Down) => self.went_down(),
                None => {}
            }
        }
    }

    fn went_up(&self) {
        self.stats.connected.store(true, Relaxed);
        self.stats.connects.fetch_add(1, Relaxed);
        self.pointers.set_poll_cap(None);
        tracing::info!(
            nats = %self.cfg.url,
            subject = SUBSCRIPTION,
            poll_s = self.pointers.poll_interval().as_secs_f64(),
            "NATS connected: pointer changes are pushed; polling at pointers.refresh_interval"
        );
        // Hints published while the link was down are lost: one round catches up.
        let pointers = self.pointers.clone();
        tokio::spawn(async move { pointers.refresh_all().await });
    }

    fn went_down(&self) {
        self.stats.connected.store(false, Relaxed);
        self.stats.disconnects.fetch_add(1, Relaxed);
        self.pointers
            .set_poll_cap(Some(self.cfg.fallback_refresh_interval));
        tracing::warn!(
            nats = %self.cfg.url,
            poll_s = self.pointers.poll_interval().as_secs_f64(),
            "NATS connection lost: pointer changes are not pushed; polling at the fallback interval and reconnecting with backoff"
        );
    }

    async fn receive(self: Arc<Self>, mut subscriber: async_nats::Subscriber) {
        let mut gate = LogGate::default();
        while let Some(msg) = subscriber.next().await {
            let outcome = self.on_message(msg.subject.as_str(), &msg.payload, &mut gate);
            self.stats.messages[outcome as usize].fetch_add(1, Relaxed);
        }
    }

    /// Takes one message: a refresh started or queued, or the reason it was not.
    fn on_message(self: &Arc<Self>, subject: &str, payload: &[u8], gate: &mut LogGate) -> Outcome {
        let hint = match parse(subject, payload) {
            Ok(h) => h,
            Err(e) => {
                if gate.allow(Instant::now()) {
                    let shown: String = subject.chars().take(120).collect();
                    tracing::warn!(
                        subject = %shown,
                        error = %error::chain(&e),
                        suppressed = gate.suppressed,
                        "ignoring a malformed pointer notification"
                    );
                }
                return Outcome::Invalid;
            }
        };
        if self.pointers.cached_deploy(&hint.site).is_none() {
            tracing::debug!(site = %hint.site, "notification for a site not cached here");
            return Outcome::Ignored;
        }
        let offer = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .offer(&hint.site);
        tracing::debug!(site = %hint.site, deploy = ?hint.deploy, seq = ?hint.seq, event = ?hint.event, ?offer, "pointer notification");
        match offer {
            Offer::Start => {
                tokio::spawn(self.clone().refresh(hint.site));
                Outcome::Accepted
            }
            Offer::Queue => Outcome::Queued,
            Offer::Coalesce => Outcome::Coalesced,
            Offer::Full => Outcome::Dropped,
        }
    }

    /// Refreshes `site` until no refresh is queued for it.
    async fn refresh(self: Arc<Self>, site: String) {
        let mut release = Release {
            pending: &self.pending,
            site: &site,
            armed: true,
        };
        loop {
            let Ok(permit) = self.slots.acquire().await else {
                return; // never closed
            };
            let before = self.pointers.cached_deploy(&site).flatten();
            let result = match self.pointers.refresh_site(&site).await {
                Ok(Some(d)) if before.as_ref().is_some_and(|b| Arc::ptr_eq(b, &d)) => {
                    RefreshResult::Unchanged
                }
                Ok(None) if before.is_none() => RefreshResult::Unchanged,
                Ok(_) => RefreshResult::Changed,
                // `refresh_site` logged and counted it.
                Err(_) => RefreshResult::Failed,
            };
            drop(permit);
            self.stats.refreshes[result as usize].fetch_add(1, Relaxed);
            tracing::debug!(site, result = result.as_str(), "refreshed on notification");
            let again = self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .finish(&site);
            if !again {
                release.armed = false;
                return;
            }
        }
    }

    /// Publishes a hint on this node's connection (the admin purge). Not connected: skipped
    /// at once (the other nodes poll at the fallback interval then).
    pub async fn announce(&self, hint: &Hint) -> Result<(), NotifyError> {
        let r = if self.stats.connected() {
            publish_hint(&self.client, hint).await
        } else {
            Err(NotifyError::NotConnected {
                url: self.cfg.url.clone(),
            })
        };
        let i = match &r {
            Ok(()) => 0,
            Err(NotifyError::NotConnected { .. }) => 2,
            Err(_) => 1,
        };
        self.stats.announced[i].fetch_add(1, Relaxed);
        r
    }

    /// The `notify` object of `/status`.
    pub fn status(&self) -> serde_json::Value {
        let s = &self.stats;
        let messages: serde_json::Map<String, serde_json::Value> = Outcome::ALL
            .iter()
            .map(|&o| (o.as_str().to_owned(), s.messages(o).into()))
            .collect();
        let refreshes: serde_json::Map<String, serde_json::Value> = RefreshResult::ALL
            .iter()
            .map(|&r| (r.as_str().to_owned(), s.refreshes(r).into()))
            .collect();
        let announced: serde_json::Map<String, serde_json::Value> = ANNOUNCED
            .iter()
            .enumerate()
            .map(|(i, k)| ((*k).to_owned(), s.announced[i].load(Relaxed).into()))
            .collect();
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sites
            .len();
        json!({
            "nats": self.cfg.url,
            "subject": SUBSCRIPTION,
            "connected": s.connected(),
            "poll_interval_s": self.pointers.poll_interval().as_secs_f64(),
            "fallback_refresh_interval_s": self.cfg.fallback_refresh_interval.as_secs_f64(),
            "connects": s.connects.load(Relaxed),
            "disconnects": s.disconnects.load(Relaxed),
            "connect_failures": s.connect_failures.load(Relaxed),
            "messages": messages,
            "refreshes": refreshes,
            "announced": announced,
            "pending_sites": pending,
        })
    }
}

/// Removes a site's pending entry if its refresh task ends without finishing (a panic).
struct Release<'a> {
    pending: &'a Mutex<Pending>,
    site: &'a str,
    armed: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sites
                .remove(self.site);
        }
    }
}

/// The notifier's `/metrics` families, for a registry built before the notifier is (nothing
/// while it is unset).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Arc<OnceLock<Arc<Notifier>>>);

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(n) = self.0.get() else {
            return Ok(());
        };
        let s = &n.stats;
        gauge(
            &mut enc,
            "edge_notify_connected",
            "1 while connected to NATS (pointer changes pushed), 0 while polling at the fallback interval.",
            if s.connected() { 1.0 } else { 0.0 },
        )?;
        gauge(
            &mut enc,
            "edge_notify_poll_interval_seconds",
            "The pointer polling interval now (the fallback interval while NATS is unreachable).",
            n.pointers.poll_interval().as_secs_f64(),
        )?;
        counter_family(
            &mut enc,
            "edge_notify_messages_total",
            "Pointer notifications received, by what became of them.",
            Outcome::ALL.map(|o| ([("outcome", o.as_str())], s.messages(o))),
        )?;
        counter_family(
            &mut enc,
            "edge_notify_refreshes_total",
            "Site refreshes started by notifications, by result.",
            RefreshResult::ALL.map(|r| ([("result", r.as_str())], s.refreshes(r))),
        )?;
        counter_family(
            &mut enc,
            "edge_notify_announced_total",
            "Notifications this node published (admin purges), by result.",
            ANNOUNCED
                .iter()
                .enumerate()
                .map(|(i, k)| ([("result", *k)], s.announced[i].load(Relaxed))),
        )?;
        counter(
            &mut enc,
            "edge_notify_disconnects_total",
            "Times the NATS connection was lost.",
            s.disconnects.load(Relaxed),
        )?;
        counter(
            &mut enc,
            "edge_notify_connect_failures_total",
            "Failed NATS connection attempts.",
            s.connect_failures.load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_parsed_strictly() {
        let ok = br#"{"site":"docs","deploy":"d1","seq":3,"event":"publish"}"#;
        assert_eq!(
            parse("edge.sites.docs", ok).unwrap(),
            Hint::moved("docs", "d1", 3, "publish")
        );
        // A purge names no deploy; unknown fields are allowed (newer publishers).
        let purge = br#"{"site":"docs","deploy":null,"seq":null,"event":"purge","x":1}"#;
        assert_eq!(
            parse("edge.sites.docs", purge).unwrap(),
            Hint::purged("docs")
        );
        assert!(parse("edge.sites.docs", br#"{"site":"docs"}"#).is_ok());
        let big = format!(r#"{{"site":"docs","pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD));
        let cases: Vec<(&str, &[u8], &str)> = vec![
            ("edge.site.docs", ok, "the subject is not"),
            ("edge.sites.", ok, "no valid site"),
            ("edge.sites.Docs", ok, "no valid site"),
            ("edge.sites.docs.x", ok, "no valid site"),
            ("edge.sites.docs", b"", "not a hint"),
            ("edge.sites.docs", b"\xff\xfe", "not a hint"),
            ("edge.sites.docs", br#"{"deploy":"d1"}"#, "not a hint"),
            (
                "edge.sites.docs",
                br#"{"site":"docs","seq":-1}"#,
                "not a hint",
            ),
            ("edge.sites.docs", br#"{"site":"blog"}"#, "another site"),
            (
                "edge.sites.docs",
                br#"{"site":"docs","deploy":"../x"}"#,
                "no valid deploy",
            ),
            ("edge.sites.docs", big.as_bytes(), "bytes (at most"),
        ];
        for (subject, payload, want) in cases {
            let e = parse(subject, payload).unwrap_err();
            assert!(e.to_string().contains(want), "{subject} {payload:?}: {e}");
        }
        // What a publisher sends is what a node reads.
        let h = Hint::moved("a-b_c", "d20260101-abc", 9, "rollback");
        let bytes = serde_json::to_vec(&h).unwrap();
        assert!(bytes.len() < 200);
        assert_eq!(parse(&subject("a-b_c"), &bytes).unwrap(), h);
    }

    #[test]
    fn a_flood_for_one_site_is_one_refresh_in_flight_and_one_queued() {
        let mut p = Pending::new(2);
        assert_eq!(p.offer("a"), Offer::Start);
        assert_eq!(p.offer("a"), Offer::Queue);
        for _ in 0..1000 {
            assert_eq!(p.offer("a"), Offer::Coalesce);
        }
        assert_eq!(p.offer("b"), Offer::Start);
        assert_eq!(p.offer("c"), Offer::Full, "at most 2 sites pending");
        assert!(p.finish("a"), "the queued refresh runs");
        assert_eq!(p.offer("a"), Offer::Queue, "one may queue behind it again");
        assert!(p.finish("a"));
        assert!(!p.finish("a"), "nothing queued: done");
        assert!(!p.finish("b"));
        assert!(p.sites.is_empty());
        assert_eq!(p.offer("c"), Offer::Start);
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(reconnect_delay(0, 0.5), Duration::ZERO);
        assert_eq!(
            reconnect_delay(1, 0.9),
            Duration::ZERO,
            "the first retry at once"
        );
        assert_eq!(reconnect_delay(2, 0.0), Duration::from_millis(50));
        assert_eq!(reconnect_delay(2, 1.0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3, 0.0), Duration::from_millis(100));
        assert_eq!(reconnect_delay(4, 1.0), Duration::from_millis(400));
        assert_eq!(reconnect_delay(8, 1.0), Duration::from_secs(5));
        assert_eq!(reconnect_delay(8, 0.0), Duration::from_millis(2500));
        assert_eq!(reconnect_delay(usize::MAX, 1.0), Duration::from_secs(5));
        for a in 2..40 {
            assert!(reconnect_delay(a, 0.3) <= reconnect_delay(a + 1, 0.3));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_link_follows_events_and_repairs_a_lost_one() {
        use LinkEvent::*;
        let mut l = Link::default();
        assert_eq!(l.step(Disconnected), None, "down at start");
        assert_eq!(l.step(Connected), Some(Change::Up));
        assert_eq!(l.step(Connected), None);
        assert_eq!(l.step(Observed(true)), None);
        assert_eq!(l.step(Disconnected), Some(Change::Down));
        // A lost Connected event: two observations in a row fix it, one alone does not
        // (the event may be on its way).
        assert_eq!(l.step(Observed(true)), None);
        assert_eq!(l.step(Observed(false)), None);
        assert_eq!(l.step(Observed(true)), None);
        assert_eq!(l.step(Observed(true)), Some(Change::Up));
        assert_eq!(l.step(Observed(false)), None);
        assert_eq!(l.step(Connected), None, "an event resets the disagreement");
        assert_eq!(l.step(Observed(false)), None);

        // Connect failures: the first of an outage is logged, then one a minute.
        let t0 = Instant::now();
        assert_eq!(l.step(Disconnected), Some(Change::Down));
        assert!(l.failed(t0));
        assert!(!l.failed(t0 + Duration::from_secs(30)));
        assert!(l.failed(t0 + Duration::from_secs(61)));
        assert_eq!(l.step(Connected), Some(Change::Up));
        assert_eq!(l.step(Disconnected), Some(Change::Down));
        assert!(
            l.failed(t0 + Duration::from_secs(62)),
            "a new outage logs at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn malformed_message_lines_are_rate_limited() {
        let mut g = LogGate::default();
        let t0 = Instant::now();
        let allowed = (0..100).filter(|_| g.allow(t0)).count();
        assert_eq!(allowed, LogGate::LINES as usize);
        assert_eq!(g.suppressed, 95);
        assert!(!g.allow(t0 + Duration::from_secs(59)));
        assert!(g.allow(t0 + Duration::from_secs(60)));
    }
}
