//! A real S3-compatible server for tests: `s3s-fs` (installed by `.ci/run` with
//! `cargo install s3s-fs@0.14.1 --features binary --locked`) on an ephemeral port of
//! 127.0.0.1, over a temporary folder (each bucket a sub-folder). Stopped when dropped.
//!
//! s3s-fs 0.14 checks `If-Match` / `If-None-Match` and then writes, not atomically: two
//! conditional PUTs racing on one key can both succeed (seen here), where S3 and MinIO let
//! exactly one through. The tests reach it through a small pass-through proxy that runs the
//! conditional PUTs one at a time (headers untouched, so signatures still verify), so that a
//! race test tests the store's compare-and-swap, not s3s-fs's.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "edgetestkey";
pub const SECRET_KEY: &str = "edgetestsecret";

pub struct S3Server {
    child: Option<Child>,
    /// The s3s-fs port.
    pub port: u16,
    /// The proxy's port: what clients use.
    pub proxy_port: u16,
    pub dir: tempfile::TempDir,
    proxy: Option<std::thread::JoinHandle<()>>,
    stop_proxy: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The `s3s-fs` binary: `$S3S_FS`, else on PATH, else in `~/.cargo/bin`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs is not installed: cargo install s3s-fs@0.14.1 --features binary --locked (.ci/run does)"
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    /// Starts a server holding the (empty) `buckets`, and waits until it accepts connections.
    pub fn start(buckets: &[&str]) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(dir.path().join(b)).unwrap();
        }
        let mut server = S3Server {
            child: None,
            port: 0,
            proxy_port: 0,
            dir,
            proxy: None,
            stop_proxy: None,
        };
        server.spawn(free_port());
        server.start_proxy(0);
        server
    }

    fn start_proxy(&mut self, port: u16) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.proxy_port = listener.local_addr().unwrap().port();
        let upstream = self.port;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.stop_proxy = Some(tx);
        self.proxy = Some(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(proxy::run(listener, upstream, rx));
        }));
    }

    fn spawn(&mut self, port: u16) {
        let child = Command::new(binary())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// The folder holding `bucket`'s objects.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.dir.path().join(bucket)
    }

    /// The file of one key (s3s-fs keeps each object as a file of its key's path).
    pub fn key_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.bucket_dir(bucket).join(key)
    }

    /// Options for an `S3Store` on this server (static credentials, no client retries).
    pub fn options(&self) -> origin_client::store::S3Options {
        origin_client::store::S3Options {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            path_style: Some(true),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            retries: 0,
            ..origin_client::store::S3Options::default()
        }
    }

    /// The environment a child process (`edge`) needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Stops the server and its proxy (the endpoint goes down: connections are refused);
    /// `restart` brings both back on the same ports.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(tx) = self.stop_proxy.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.proxy.take() {
            let _ = t.join();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn(self.port);
        self.start_proxy(self.proxy_port);
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

mod proxy {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    type Resp = http::Response<Full<Bytes>>;

    pub async fn run(
        listener: std::net::TcpListener,
        upstream: u16,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let serial = Arc::new(tokio::sync::Mutex::new(()));
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stop => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let (client, serial) = (client.clone(), serial.clone());
            tokio::spawn(async move {
                let svc =
                    service_fn(move |req| forward(client.clone(), serial.clone(), upstream, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    async fn forward(
        client: Client<HttpConnector, Full<Bytes>>,
        serial: Arc<tokio::sync::Mutex<()>>,
        upstream: u16,
        req: http::Request<Incoming>,
    ) -> Result<Resp, std::convert::Infallible> {
        let conditional = req.headers().contains_key(http::header::IF_MATCH)
            || req.headers().contains_key(http::header::IF_NONE_MATCH);
        let (mut parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return Ok(status(502));
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://127.0.0.1:{upstream}{path}")
            .parse()
            .unwrap();
        let _turn = if conditional {
            Some(serial.lock().await)
        } else {
            None
        };
        let Ok(resp) = client
            .request(http::Request::from_parts(parts, Full::new(body)))
            .await
        else {
            return Ok(status(502));
        };
        let (parts, body) = resp.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return Ok(status(502));
        };
        Ok(http::Response::from_parts(parts, Full::new(body)))
    }

    fn status(code: u16) -> Resp {
        let mut r = http::Response::new(Full::new(Bytes::new()));
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
        r
    }
}
