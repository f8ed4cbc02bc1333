//! The access log: one JSON line per request, written by its own thread. The request path
//! only serializes the line (serde_json) and offers it to a bounded queue; when the writer
//! falls behind the line is dropped and counted, never waited for.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Metrics;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    metrics: Arc<Metrics>,
}

/// One request, as logged: the JSON object's fields in this order, after `ts`; a `None` is
/// left out.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub proto: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(rename = "duration_us")]
    pub micros: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'a str>,
    #[serde(rename = "pointer_stale_s", skip_serializing_if = "Option::is_none")]
    pub stale_s: Option<u64>,
}

/// A line with its time: seconds since the Unix epoch, to the millisecond.
#[derive(Serialize)]
struct Record<'a> {
    ts: f64,
    #[serde(flatten)]
    line: &'a Line<'a>,
}

/// `l` at `now` (since the Unix epoch) as one JSON line, newline included.
fn encode(l: &Line<'_>, now: Duration) -> serde_json::Result<Vec<u8>> {
    let record = Record {
        ts: now.as_millis() as f64 / 1000.0,
        line: l,
    };
    let mut buf = Vec::with_capacity(256);
    serde_json::to_writer(&mut buf, &record)?;
    buf.push(b'\n');
    Ok(buf)
}

impl AccessLog {
    /// Starts the writer thread. `capacity` lines may wait; more are dropped.
    pub fn start(target: Target, capacity: usize, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match &target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(capacity.max(1));
        std::thread::Builder::new()
            .name("edge-access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
                while let Ok(line) = rx.recv() {
                    let _ = buf.write_all(&line);
                    // Flush when the queue is empty: batches under load, prompt when idle.
                    while let Ok(line) = rx.try_recv() {
                        let _ = buf.write_all(&line);
                    }
                    let _ = buf.flush();
                }
            })?;
        Ok(AccessLog { tx, metrics })
    }

    pub fn log(&self, l: &Line<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Serializing borrowed strings and integers cannot fail; were it to, the line is lost
        // like one the writer had no room for.
        let sent = encode(l, now).map(|line| self.tx.try_send(line));
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | Err(_) => {
                self.metrics.access_log_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_a_full_queue_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let metrics = Arc::new(Metrics::default());
        let log = AccessLog::start(Target::File(path.clone()), 4, metrics.clone()).unwrap();
        let line = Line {
            method: "GET",
            host: "a.example",
            path: "/q\"uote\\\n",
            proto: "http1",
            status: 200,
            bytes: Some(12),
            micros: 345,
            deploy: Some("d-1"),
            cache: Some("edge; hit; detail=memory"),
            stale_s: None,
        };
        for _ in 0..10_000 {
            log.log(&line);
        }
        drop(log);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let n = text.lines().count() as u64;
            if n + metrics.access_log_dropped.load(Relaxed) == 10_000 {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "lines lost");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["path"], "/q\"uote\\\n");
        assert_eq!(first["status"], 200);
        assert_eq!(first["deploy"], "d-1");
    }

    #[test]
    fn a_line_parses_back_field_by_field() {
        let line = Line {
            method: "GET",
            host: "a.example",
            path: "/caf\u{e9}?q=\"x\"\t\u{1}",
            proto: "http2",
            status: 206,
            bytes: Some(100),
            micros: 1234,
            deploy: Some("d-7"),
            cache: Some("edge; hit; detail=disk"),
            stale_s: Some(42),
        };
        let now = Duration::from_millis(1_764_624_269_123);
        let text = String::from_utf8(encode(&line, now).unwrap()).unwrap();
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut got: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "ts",
            "method",
            "host",
            "path",
            "proto",
            "status",
            "bytes",
            "duration_us",
            "deploy",
            "cache",
            "pointer_stale_s",
        ];
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(v["ts"].as_f64(), Some(1_764_624_269.123));
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "a.example");
        assert_eq!(v["path"], "/caf\u{e9}?q=\"x\"\t\u{1}");
        assert_eq!(v["proto"], "http2");
        assert_eq!(v["status"], 206);
        assert_eq!(v["bytes"], 100);
        assert_eq!(v["duration_us"], 1234);
        assert_eq!(v["deploy"], "d-7");
        assert_eq!(v["cache"], "edge; hit; detail=disk");
        assert_eq!(v["pointer_stale_s"], 42);
        // The fields in the order they have always had, `ts` first.
        assert!(
            text.starts_with("{\"ts\":1764624269.123,\"method\":\"GET\",\"host\""),
            "{text}"
        );
        assert!(
            text.contains("\"status\":206,\"bytes\":100,\"duration_us\":1234,\"deploy\""),
            "{text}"
        );

        // What is not known is left out, not written as null.
        let bare = Line {
            bytes: None,
            deploy: None,
            cache: None,
            stale_s: None,
            ..line
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode(&bare, Duration::ZERO).unwrap()).unwrap();
        let obj = v.as_object().unwrap();
        for absent in ["bytes", "deploy", "cache", "pointer_stale_s"] {
            assert!(!obj.contains_key(absent), "{absent} in {v}");
        }
        assert_eq!(obj.len(), 7, "{v}");
        assert_eq!(v["ts"].as_f64(), Some(0.0));
        assert_eq!(v["duration_us"], 1234);
    }
}
