//! The scenarios that are not a steady load on warm caches: a burst of clients on one cold
//! large file, misses waiting on a slow origin while hot hits go on, and what idle keep-alive
//! connections cost a server in memory.
//!
//! Each client here is a real connection from [`crate::loadgen::conn`]; nothing is simulated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};

use super::CompareError;
use super::servers::Proc;
use crate::loadgen::conn::{Endpoint, Sender, TlsOptions};
use crate::loadgen::{GenError, Proto};

/// Client latencies (ms, sorted) and how many requests failed or got a wrong answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub ms: Vec<f64>,
    pub failed: u64,
    /// The first failure, for the log.
    pub first_failure: Option<String>,
}

impl Timings {
    fn push_failure(&mut self, what: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(what);
    }

    fn merge(&mut self, other: Timings) {
        self.ms.extend(other.ms);
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    /// The `q` quantile (0..=1) of the latencies; NaN when there are none.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ms.len() - 1) as f64 * q).round() as usize;
        self.ms[i.min(self.ms.len() - 1)]
    }

    fn sorted(mut self) -> Timings {
        self.ms.sort_by(f64::total_cmp);
        self
    }
}

fn path(p: &str) -> Result<PathAndQuery, CompareError> {
    p.parse()
        .map_err(|_| CompareError::Command(format!("bad path {p:?}")))
}

async fn endpoint(target: &http::Uri, proto: Proto) -> Result<Endpoint, CompareError> {
    let tls = TlsOptions {
        insecure: true,
        ca_file: None,
    };
    Ok(Endpoint::new(target, proto, &tls).await?)
}

/// `clients` connections, all opened first, then each sends one GET for `path` at the same
/// moment; each latency is from that moment to the response's last byte. An answer that is
/// not a 200 with `expect_len` body bytes is a failure.
pub async fn burst(
    target: &http::Uri,
    host: &Authority,
    file: &str,
    clients: usize,
    expect_len: u64,
) -> Result<Timings, CompareError> {
    let ep = endpoint(target, Proto::H1).await?;
    let uri = ep.uri(host, &path(file)?);
    let mut senders = Vec::with_capacity(clients);
    for index in 0..clients {
        let s = ep.connect().await.map_err(|e| {
            CompareError::Gen(GenError::Connect {
                index,
                addr: ep.addr,
                kind: e.kind,
                reason: e.reason,
            })
        })?;
        senders.push(s);
    }
    let start = Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in senders {
        let (uri, host, start) = (uri.clone(), host.clone(), start.clone());
        tasks.spawn(async move {
            start.wait().await;
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(120), s.get(uri, &host)).await;
            (t.elapsed(), r)
        });
    }
    let mut out = Timings::default();
    while let Some(j) = tasks.join_next().await {
        let Ok((took, r)) = j else {
            out.push_failure("a client task failed".into());
            continue;
        };
        match r {
            Ok(Ok(f)) if f.status == 200 && f.body_bytes == expect_len => {
                out.ms.push(took.as_secs_f64() * 1e3);
            }
            Ok(Ok(f)) => out.push_failure(format!(
                "status {} with {} of {expect_len} bytes",
                f.status, f.body_bytes
            )),
            Ok(Err(e)) => out.push_failure(format!("request failed: {}", e.as_str())),
            Err(_) => out.push_failure("no answer within 120 s".into()),
        }
    }
    Ok(out.sorted())
}

/// `clients` HTTP/1.1 connections, each requesting the next of `files` (every file once, in
/// order) until they run out or `until` passes. Latency is per request, send to last byte.
pub async fn misses(
    target: &http::Uri,
    host: &Authority,
    files: Arc<Vec<(String, u64)>>,
    clients: usize,
    until: Instant,
) -> Result<Timings, CompareError> {
    let ep = endpoint(target, Proto::H1).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (ep, host, files, next) = (ep.clone(), host.clone(), files.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Timings::default();
            let mut conn: Option<Sender> = None;
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((file, len)) = files.get(i) else {
                    break;
                };
                let Ok(p) = file.parse::<PathAndQuery>() else {
                    out.push_failure(format!("bad path {file:?}"));
                    continue;
                };
                let t = Instant::now();
                let s = match conn.as_mut() {
                    Some(s) if !s.is_closed() => s,
                    _ => match ep.connect().await {
                        Ok(s) => conn.insert(s),
                        Err(e) => {
                            out.push_failure(format!("connect: {}", e.kind.as_str()));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                match tokio::time::timeout(Duration::from_secs(60), s.get(ep.uri(&host, &p), &host))
                    .await
                {
                    Ok(Ok(f)) if f.status == 200 && f.body_bytes == *len => {
                        out.ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(Ok(f)) => {
                        out.push_failure(format!("{file}: status {}", f.status));
                    }
                    Ok(Err(e)) => {
                        conn = None;
                        out.push_failure(format!("{file}: {}", e.as_str()));
                    }
                    Err(_) => {
                        conn = None;
                        out.push_failure(format!("{file}: no answer within 60 s"));
                    }
                }
            }
            out
        });
    }
    let mut all = Timings::default();
    while let Some(j) = tasks.join_next().await {
        match j {
            Ok(t) => all.merge(t),
            Err(_) => all.push_failure("a client task failed".into()),
        }
    }
    Ok(all.sorted())
}

/// What idle connections cost one server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleCost {
    pub connections: usize,
    /// Connections that could not be opened or whose one request failed.
    pub failed: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (after - before) / connections held.
    pub kib_per_connection: f64,
}

/// Opens `n` connections (`proto`: HTTP/1.1 or HTTP/2), sends one GET for `file` on each and
/// keeps them open and idle; after `settle`, the growth of the server's resident memory (its
/// processes' VmRSS, summed) divided by the connections held.
pub async fn idle(
    target: &http::Uri,
    proto: Proto,
    host: &Authority,
    file: &str,
    n: usize,
    settle: Duration,
    server: &[Proc],
) -> Result<IdleCost, CompareError> {
    let ep = endpoint(target, proto).await?;
    let uri = ep.uri(host, &path(file)?);
    let rss = || server.iter().map(Proc::rss_kib).sum::<u64>();
    let before = rss();
    let failed = Arc::new(AtomicU64::new(0));
    // Opened 100 at a time, so the server sees a crowd, not a flood of handshakes.
    let mut held: Vec<Sender> = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    let mut opened = 0;
    while opened < n {
        let k = (n - opened).min(100);
        for _ in 0..k {
            let (ep, uri, host, failed) = (ep.clone(), uri.clone(), host.clone(), failed.clone());
            batch.spawn(async move {
                let mut s = match ep.connect().await {
                    Ok(s) => s,
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                };
                match tokio::time::timeout(Duration::from_secs(30), s.get(uri, &host)).await {
                    Ok(Ok(f)) if f.status == 200 => Some(s),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            });
        }
        while let Some(j) = batch.join_next().await {
            if let Ok(Some(s)) = j {
                held.push(s);
            }
        }
        opened += k;
    }
    tokio::time::sleep(settle).await;
    let after = rss();
    let kept = held.iter().filter(|s| !s.is_closed()).count();
    let lost = (held.len() - kept) as u64;
    drop(held);
    let failed = failed.load(Ordering::Relaxed) + lost;
    Ok(IdleCost {
        connections: kept,
        failed,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: if kept > 0 {
            after.saturating_sub(before) as f64 / kept as f64
        } else {
            f64::NAN
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_sorted_timings() {
        let t = Timings {
            ms: vec![5.0, 1.0, 3.0, 2.0, 4.0],
            ..Timings::default()
        }
        .sorted();
        assert_eq!(t.quantile(0.5), 3.0);
        assert_eq!(t.quantile(0.0), 1.0);
        assert_eq!(t.quantile(1.0), 5.0);
        assert!(Timings::default().quantile(0.5).is_nan());
    }
}
