//! Memory that closed connections and finished responses freed, given back to the OS.
//!
//! The default build allocates with jemalloc, whose background thread gives freed pages back
//! by itself: nothing is installed here then. Built `--no-default-features` (the system
//! allocator), glibc's malloc keeps what its per-thread arenas freed: after 1,000 slow
//! readers leave, the process stays tens of MiB above where it started although nothing
//! uses that memory. That binary (the only place allowed the FFI call) installs glibc's
//! `malloc_trim` here; the node calls it after a drop in what it holds for clients (response
//! bytes in flight, open connections), never on a schedule alone, so a steady load pays
//! nothing.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::metrics::Metrics;

/// Gives free allocator memory back to the OS; `true` when something was given back.
pub type Release = fn() -> bool;

static RELEASE: OnceLock<Release> = OnceLock::new();

/// Installs the allocator's release call (once; later calls are ignored).
pub fn install_release(release: Release) {
    let _ = RELEASE.set(release);
}

/// A drop in response bytes held in memory that makes a release worth it.
const BUFFERED_DROP: u64 = 8 << 20;
/// A drop in open connections holding HTTP state (closed or parked) that makes a release
/// worth it (each held buffers and a task).
const CONNECTIONS_DROP: u64 = 64;

/// Decides, from one sample a tick, when a release is due: after what the node holds for
/// clients fell by `BUFFERED_DROP` bytes or `CONNECTIONS_DROP` connections from its high
/// mark since the last release.
#[derive(Debug, Default)]
struct Watermark {
    buffered: u64,
    connections: u64,
}

impl Watermark {
    /// Takes a sample; `true` when a release is due (the marks then restart from it).
    fn sample(&mut self, buffered: u64, connections: u64) -> bool {
        self.buffered = self.buffered.max(buffered);
        self.connections = self.connections.max(connections);
        let due = self.buffered - buffered >= BUFFERED_DROP
            || self.connections - connections >= CONNECTIONS_DROP;
        if due {
            self.buffered = buffered;
            self.connections = connections;
        }
        due
    }
}

/// Samples the node every `every` and releases memory after drops (see [`Watermark`]); does
/// nothing when no release is installed. Runs until the runtime stops.
pub async fn release_after_drops(metrics: std::sync::Arc<Metrics>, every: Duration) {
    let Some(&release) = RELEASE.get() else {
        return;
    };
    let mut marks = Watermark::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let buffered = metrics.buffered_bytes.load(Relaxed);
        // Parked connections hold no HTTP state: parking many frees as much as closing them.
        let c = &metrics.conns;
        let connections = c.open.load(Relaxed).saturating_sub(c.parked.load(Relaxed));
        if !marks.sample(buffered, connections) {
            continue;
        }
        // glibc walks and locks each arena in turn: off the serving threads.
        let started = std::time::Instant::now();
        if let Ok(gave) = tokio::task::spawn_blocking(release).await {
            metrics.memory_releases.fetch_add(1, Relaxed);
            tracing::debug!(
                gave_back = gave,
                took_ms = started.elapsed().as_millis() as u64,
                buffered,
                connections,
                "gave freed memory back to the OS"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_after_a_drop_from_the_high_mark_only() {
        let mut m = Watermark::default();
        // Growth and steady load: nothing due.
        assert!(!m.sample(0, 0));
        assert!(!m.sample(100 << 20, 1000));
        assert!(!m.sample(95 << 20, 990));
        // Less than either drop, measured from the high mark, not the last sample.
        assert!(!m.sample(93 << 20, 940));
        assert!(m.sample(91 << 20, 1000), "a 9 MiB drop from 100 MiB");
        // The marks restart from the release: the same level is not due again.
        assert!(!m.sample(91 << 20, 1000));
        assert!(!m.sample(90 << 20, 1000));
        assert!(m.sample(90 << 20, 936), "64 connections fewer");
        assert!(!m.sample(90 << 20, 936));
        // Everything leaves at once.
        assert!(m.sample(0, 0));
        assert!(!m.sample(0, 0));
    }
}
