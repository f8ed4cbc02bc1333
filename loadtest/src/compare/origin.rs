//! The comparison's origin: a file server on 127.0.0.1 that every cache under test fills from,
//! with a first-byte delay and a per-response transfer rate that the run sets per scenario.
//!
//! It serves two folders on two ports: the edge's store (the edge reads it as an `http://`
//! store) and the site folder (nginx's `proxy_cache` and Varnish fetch site paths from it).
//! Both answer with the same delay and rate, so every cache sees the same origin.
//!
//! It runs on its own thread and runtime, so its work never shares a scheduler with the load
//! generator's, and stops when dropped.
//!
//! Invariants: only files under a root are served (a path with `..` or a NUL is a 400); a
//! response is delayed by `delay` before its head and paced to `rate` bytes per second (0: as
//! fast as the socket takes it); every request is counted, and every fetch of content (all
//! but the edge's pointer and record reads: `sites/`, `hosts/`, `gc/`) separately.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::CompareError;

/// Bytes per DATA frame (and per pacing step).
const CHUNK: usize = 64 * 1024;

/// What the run sets between scenarios.
#[derive(Debug, Default)]
pub struct Knobs {
    delay_ms: AtomicU64,
    rate: AtomicU64,
    requests: AtomicU64,
    fetches: AtomicU64,
}

impl Knobs {
    /// Every response waits `delay` before its head and sends at most `bytes_per_s` (0: no cap).
    pub fn set(&self, delay: Duration, bytes_per_s: u64) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        self.rate.store(bytes_per_s, Ordering::Relaxed);
    }

    /// Requests answered or being answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Of those, fetches of content: objects and site files, not the edge's polls of
    /// pointers and records.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

/// The running origin; stops (and closes its listeners) when dropped.
pub struct Origin {
    pub knobs: Arc<Knobs>,
    /// One port per root, in the order given.
    pub ports: Vec<u16>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    /// Binds one 127.0.0.1 listener per root and serves them on a new thread.
    pub fn start(roots: &[PathBuf]) -> Result<Origin, CompareError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| CompareError::Io { what, source }
        };
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for root in roots {
            let l = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .map_err(io("binding the origin"))?;
            l.set_nonblocking(true).map_err(io("binding the origin"))?;
            ports.push(l.local_addr().map_err(io("binding the origin"))?.port());
            listeners.push((l, root.clone()));
        }
        let knobs = Arc::new(Knobs::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting the origin's runtime"))?;
        let k = knobs.clone();
        let thread = std::thread::Builder::new()
            .name("compare-origin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for (l, root) in listeners {
                        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                            continue;
                        };
                        tasks.spawn(accept(l, Arc::new(root), k.clone()));
                    }
                    let _ = stopped.await;
                    tasks.abort_all();
                });
            })
            .map_err(io("starting the origin's thread"))?;
        Ok(Origin {
            knobs,
            ports,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(l: tokio::net::TcpListener, root: Arc<PathBuf>, knobs: Arc<Knobs>) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (root, knobs) = (root.clone(), knobs.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (root, knobs) = (root.clone(), knobs.clone());
                async move { Ok::<_, Infallible>(respond(&root, &knobs, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// The file under `root` that `path` names, if it is a plain relative path.
fn file_under(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    let plain = rel
        .split('/')
        .all(|seg| !seg.is_empty() && seg != ".." && seg != "." && !seg.contains('\0'));
    (plain && !rel.is_empty()).then(|| root.join(rel))
}

async fn respond(root: &Path, knobs: &Knobs, req: Request<Incoming>) -> Response<Body> {
    knobs.requests.fetch_add(1, Ordering::Relaxed);
    let p = req.uri().path();
    if !(p.starts_with("/sites/") || p.starts_with("/hosts") || p.starts_with("/gc/")) {
        knobs.fetches.fetch_add(1, Ordering::Relaxed);
    }
    let delay = Duration::from_millis(knobs.delay_ms.load(Ordering::Relaxed));
    let rate = knobs.rate.load(Ordering::Relaxed);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let Some(path) = file_under(root, req.uri().path()) else {
        return plain(StatusCode::BAD_REQUEST, "bad path\n");
    };
    let data = match tokio::fs::read(&path).await {
        Ok(d) => Bytes::from(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        // A folder, or unreadable.
        Err(_) => return plain(StatusCode::NOT_FOUND, "not a file\n"),
    };
    let len = data.len();
    let start = tokio::time::Instant::now();
    let frames = futures_util::stream::unfold(0usize, move |off| {
        let data = data.clone();
        async move {
            if off >= data.len() {
                return None;
            }
            let end = (off + CHUNK).min(data.len());
            if rate > 0 {
                let due = start + Duration::from_secs_f64(end as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(data.slice(off..end))), end))
        }
    });
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    r.headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, len.into());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_under_the_root_are_served() {
        let root = Path::new("/r");
        assert_eq!(
            file_under(root, "/a/b.txt"),
            Some(PathBuf::from("/r/a/b.txt"))
        );
        for bad in [
            "/",
            "/../etc/passwd",
            "/a/../../b",
            "/a//b",
            "/./a",
            "/a\0b",
        ] {
            assert_eq!(file_under(root, bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn serves_files_with_the_delay_and_rate_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        std::fs::write(dir.path().join("a/f.bin"), &body).unwrap();
        let origin = Origin::start(&[dir.path().to_path_buf()]).unwrap();
        let get = |path: &'static str| {
            let port = origin.ports[0];
            async move {
                let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let req = Request::get(path)
                    .header("host", "o")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                (status, resp.into_body().collect().await.unwrap().to_bytes())
            }
        };
        let (status, got) = get("/a/f.bin").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got.as_ref(), &body[..]);
        assert_eq!(get("/a/missing").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("/../a/f.bin").await.0, StatusCode::BAD_REQUEST);

        // 200 KB at 1 MB/s after a 300 ms delay: at least 0.45 s (a lower bound only).
        origin.knobs.set(Duration::from_millis(300), 1_000_000);
        let t = std::time::Instant::now();
        let (status, got) = get("/a/f.bin").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got.len(), body.len());
        assert!(
            t.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(origin.knobs.requests(), 4);
        assert_eq!(origin.knobs.fetches(), 4);
        let _ = get("/sites/s/current").await;
        assert_eq!((origin.knobs.requests(), origin.knobs.fetches()), (5, 4));
    }
}
