//! The access log: one JSON line per request, written by its own thread. The request path
//! only formats the line and offers it to a bounded queue; when the writer falls behind the
//! line is dropped and counted, never waited for.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{SyncSender, TrySendError};

use crate::metrics::Metrics;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

pub struct AccessLog {
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
}

/// One request, as logged.
pub struct Line<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub proto: &'a str,
    pub status: u16,
    pub bytes: Option<u64>,
    pub micros: u64,
    pub deploy: Option<&'a str>,
    pub cache: Option<&'a str>,
    pub stale_s: Option<u64>,
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
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(capacity.max(1));
        std::thread::Builder::new()
            .name("edge-access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
                while let Ok(line) = rx.recv() {
                    let _ = buf.write_all(line.as_bytes());
                    // Flush when the queue is empty: batches under load, prompt when idle.
                    while let Ok(line) = rx.try_recv() {
                        let _ = buf.write_all(line.as_bytes());
                    }
                    let _ = buf.flush();
                }
            })?;
        Ok(AccessLog { tx, metrics })
    }

    pub fn log(&self, l: &Line<'_>) {
        let mut s = String::with_capacity(256);
        s.push_str("{\"ts\":");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        s.push_str(&format!("{}.{:03}", now.as_secs(), now.subsec_millis()));
        field(&mut s, "method", l.method);
        field(&mut s, "host", l.host);
        field(&mut s, "path", l.path);
        field(&mut s, "proto", l.proto);
        s.push_str(&format!(",\"status\":{}", l.status));
        if let Some(b) = l.bytes {
            s.push_str(&format!(",\"bytes\":{b}"));
        }
        s.push_str(&format!(",\"duration_us\":{}", l.micros));
        if let Some(d) = l.deploy {
            field(&mut s, "deploy", d);
        }
        if let Some(c) = l.cache {
            field(&mut s, "cache", c);
        }
        if let Some(a) = l.stale_s {
            s.push_str(&format!(",\"pointer_stale_s\":{a}"));
        }
        s.push_str("}\n");
        match self.tx.try_send(s) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// `,"key":"value"` with JSON string escaping.
fn field(s: &mut String, key: &str, value: &str) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":\"");
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
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
}
