//! Shared helpers for the `edge` binary's end-to-end tests: a temporary workspace with a
//! store, the `edge` process (killed when its guard drops), and clients: HTTP/1.1 and
//! cleartext HTTP/2 (prior knowledge) on hyper, and a raw socket that sends exact bytes.
//!
//! Every wait here has a deadline; nothing sleeps for a fixed long time.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long `edge serve` may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one HTTP exchange may take (the large-file tests stream 64 MiB in a debug build).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the raw client waits for the server to answer and close.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

// ---- files and the store -----------------------------------------------------------------

/// `"<blake3 hex>"`: the ETag the edge gives these bytes.
pub fn etag_of(data: &[u8]) -> String {
    format!("\"{}\"", blake3::hash(data).to_hex())
}

/// Writes `files` (relative path, bytes) under `root`, creating folders.
pub fn write_files<P: AsRef<Path>, D: AsRef<[u8]>>(root: &Path, files: &[(P, D)]) {
    for (rel, data) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("a file has a parent")).expect("creating folders");
        fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters.
pub fn encode_segment(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

/// The request path for a relative file path (`a b/c#d` -> `/a%20b/c%23d`).
pub fn url_path(rel: &str) -> String {
    let mut out = String::new();
    for seg in rel.split('/') {
        out.push('/');
        out.push_str(&encode_segment(seg));
    }
    out
}

/// Total bytes of the files under `dir` (recursively); 0 when it does not exist.
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.map(|e| e.expect("reading a cache folder entry"))
        .map(|e| {
            let m = e.metadata().expect("stat in the cache folder");
            if m.is_dir() {
                tree_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// The disk tier's file for `data`: `CACHE/blobs/<hh>/<hash>`.
pub fn cache_file(cache: &Path, data: &[u8]) -> PathBuf {
    let hex = blake3::hash(data).to_hex();
    cache.join("blobs").join(&hex[..2]).join(hex.as_str())
}

/// Whether `path` exists, waiting up to 5 s for it: a large fill's waiters get their last
/// byte once the object is verified, a moment before its file is renamed into the disk tier.
pub async fn file_appears(path: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !path.exists() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// Runs `edge` with `args` and returns its standard output; panics with both streams when it
/// fails.
pub fn edge_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_edge"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running edge");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "edge failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A temporary folder holding a store (`store/`), a disk cache (`cache/`), site folders,
/// config files and the node's logs. Removed when dropped.
pub struct Workspace {
    pub tmp: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            tmp: tempfile::Builder::new()
                .prefix("edge-e2e-")
                .tempdir()
                .expect("creating a temporary folder"),
        }
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn store(&self) -> PathBuf {
        self.root().join("store")
    }

    pub fn cache(&self) -> PathBuf {
        self.root().join("cache")
    }

    /// A folder for a site's files: `sites/<name>`.
    pub fn site_dir(&self, name: &str) -> PathBuf {
        let d = self.root().join("sites").join(name);
        fs::create_dir_all(&d).expect("creating a site folder");
        d
    }

    /// Writes a config file and returns its path.
    pub fn config(&self, name: &str, toml: &str) -> PathBuf {
        let p = self.root().join(name);
        fs::write(&p, toml).expect("writing a config file");
        p
    }

    /// `edge publish DIR --site SITE --store STORE`; returns the new deploy id.
    pub fn publish(&self, dir: &Path, site: &str) -> String {
        let store = self.store();
        let out = edge_ok([
            "publish".as_ref(),
            dir.as_os_str(),
            "--site".as_ref(),
            site.as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
        ]);
        out.lines()
            .find_map(|l| l.strip_prefix("deploy "))
            .unwrap_or_else(|| panic!("no `deploy ID` line in {out:?}"))
            .trim()
            .to_owned()
    }

    /// `edge rollback --site SITE --store STORE --to ID`.
    pub fn rollback(&self, site: &str, to: &str) {
        let store = self.store();
        edge_ok([
            "rollback".as_ref(),
            "--site".as_ref(),
            site.as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
            "--to".as_ref(),
            to.as_ref(),
        ]);
    }

    /// `edge hosts add HOST --site SITE --store STORE`.
    pub fn hosts_add(&self, host: &str, site: &str) {
        let store = self.store();
        edge_ok([
            "hosts".as_ref(),
            "add".as_ref(),
            host.as_ref(),
            "--site".as_ref(),
            site.as_ref(),
            "--store".as_ref(),
            store.as_os_str(),
        ]);
    }

    /// An `edge serve` command on this workspace's store and cache, on a free port.
    pub fn serve(&self) -> Serve {
        Serve {
            store: self.store(),
            cache_dir: Some(self.cache()),
            default_site: None,
            config: None,
            log: self.root().join("edge-serve.log"),
            listen: "127.0.0.1:0".into(),
            args: Vec::new(),
        }
    }
}

// ---- the edge process ----------------------------------------------------------------------

/// How to start `edge serve`.
pub struct Serve {
    pub store: PathBuf,
    /// `None` passes `--cache-dir ""` (no disk tier).
    pub cache_dir: Option<PathBuf>,
    pub default_site: Option<String>,
    pub config: Option<PathBuf>,
    /// Where the node's standard error goes (appended).
    pub log: PathBuf,
    /// `--listen` (a free port by default).
    pub listen: String,
    /// More arguments for `edge serve`.
    pub args: Vec<String>,
}

impl Serve {
    pub fn default_site(mut self, site: &str) -> Serve {
        self.default_site = Some(site.to_owned());
        self
    }

    pub fn config(mut self, path: PathBuf) -> Serve {
        self.config = Some(path);
        self
    }

    pub fn no_disk(mut self) -> Serve {
        self.cache_dir = None;
        self
    }

    /// Serves from `location` (e.g. an origin's `http://ADDR/`) instead of the local store.
    pub fn store_location(mut self, location: &str) -> Serve {
        self.store = PathBuf::from(location);
        self
    }

    /// Sends the node's standard error to `path` (appended).
    pub fn log_to(mut self, path: PathBuf) -> Serve {
        self.log = path;
        self
    }

    /// Listens on `addr` (e.g. a fixed port, to restart the node on it).
    pub fn listen(mut self, addr: &str) -> Serve {
        self.listen = addr.to_owned();
        self
    }

    /// Passes `arg` to `edge serve` too.
    pub fn arg(mut self, arg: &str) -> Serve {
        self.args.push(arg.to_owned());
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge"));
        cmd.arg("serve").arg("--store").arg(&self.store).args([
            "--listen",
            &self.listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--cache-dir",
        ]);
        match &self.cache_dir {
            Some(d) => cmd.arg(d),
            None => cmd.arg(""),
        };
        if let Some(s) = &self.default_site {
            cmd.args(["--default-site", s]);
        }
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(&self.args);
        cmd
    }

    /// Starts the node; `Err` (with its log) when it exits or stays silent instead of
    /// printing its listening line.
    pub fn try_start(&self) -> Result<Node, String> {
        Node::start(self.command(), &self.log)
    }

    pub fn start(&self) -> Node {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A running `edge` child process. Dropping it kills the process (by its pid) and reaps it.
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when the node printed it (`edge admin on ...`) right
    /// after its listening line.
    pub admin: Option<SocketAddr>,
    pub log: PathBuf,
}

impl Node {
    /// Spawns `cmd` and waits for a line with `http://ADDR/` on its standard output.
    pub fn start(mut cmd: Command, log: &Path) -> Result<Node, String> {
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("spawning edge: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads every line until the child closes its stdout, so it never blocks on a full
        // pipe; ends by itself when the child dies.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // Once nobody listens the send fails; keep draining anyway.
                let _ = tx.send(line);
            }
        });
        let mut guard = Node {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        guard.addr = addr;
                        // The admin line, if any, comes next.
                        if let Ok(next) = rx.recv_timeout(Duration::from_secs(2))
                            && next.starts_with("edge admin on")
                        {
                            guard.admin = listening_addr(&next);
                        }
                        return Ok(guard);
                    }
                }
                Err(e) => {
                    // Closed stdout usually means it is exiting: give it a moment to be reaped.
                    let reap_by = Instant::now() + Duration::from_secs(2);
                    let mut status = guard.child.try_wait().ok().flatten();
                    while status.is_none() && Instant::now() < reap_by {
                        std::thread::sleep(Duration::from_millis(10));
                        status = guard.child.try_wait().ok().flatten();
                    }
                    return Err(format!(
                        "edge printed no listening line ({e:?}; exit status {status:?}); log:\n{}",
                        guard.log_text()
                    ));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the node's log contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> usize {
        self.log_text()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit: how long it took and
    /// whether it exited successfully; `None` if it is still running then.
    pub fn terminate(&mut self, within: Duration) -> Option<(Duration, bool)> {
        let start = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {}", self.pid());
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().expect("waiting for the node") {
                return Some((start.elapsed(), status.success()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process now (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `http://127.0.0.1:PORT/` in a line like `edge listening on http://127.0.0.1:PORT/`.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    rest.split('/').next()?.parse().ok()
}

/// The admin listener's `/metrics` response, head and Prometheus text.
pub fn metrics_text(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The node's metrics: a lookup by name with labels (`edge_x{reason="y"}`).
pub fn metrics(admin: SocketAddr) -> impl Fn(&str) -> u64 {
    let text = metrics_text(admin);
    move |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in the metrics: {text}")) as u64
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

// ---- hyper clients -------------------------------------------------------------------------

/// A response read whole. `complete` is false when the body ended in an error (the server
/// cut the response); `body` then holds what arrived before the cut.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header"))
    }

    /// The header's value; panics naming the header when it is missing.
    pub fn must(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Streamed body summary: length and blake3 of what arrived, without keeping the bytes.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub headers: HeaderMap,
    pub len: u64,
    pub hash: blake3::Hash,
    pub complete: bool,
}

type Sender1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
pub type Sender2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// Sends one request on an HTTP/2 connection and reads the whole reply; `what` names it in
/// failures.
pub async fn send_h2(sender: &Sender2, req: hyper::Request<Empty<Bytes>>, what: &str) -> Reply {
    let mut sender = sender.clone();
    within(what, sender.ready())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let resp = within(what, sender.send_request(req))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(resp.version(), http::Version::HTTP_2, "{what}");
    within(what, read_all(resp)).await
}

fn build(method: &str, uri: &str, host: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", host);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).expect("a valid request")
}

/// Reads a whole response; `complete` is false when the body ended in an error.
pub async fn read_all(resp: hyper::Response<hyper::body::Incoming>) -> Reply {
    let (parts, mut body) = resp.into_parts();
    let mut out = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: out,
        complete,
    }
}

async fn read_streamed(
    resp: hyper::Response<hyper::body::Incoming>,
    mut on_chunk: impl FnMut(u64),
) -> Streamed {
    let (parts, mut body) = resp.into_parts();
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    hasher.update(d);
                    len += d.len() as u64;
                    on_chunk(len);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    Streamed {
        status: parts.status.as_u16(),
        headers: parts.headers,
        len,
        hash: hasher.finalize(),
        complete,
    }
}

/// Awaits `f`, failing the test after `REQUEST_TIMEOUT`.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {REQUEST_TIMEOUT:?}"))
}

/// An HTTP/1.1 client on one keep-alive connection, reconnecting when the server closed it.
pub struct H1 {
    pub addr: SocketAddr,
    sender: Option<Sender1>,
}

impl H1 {
    pub fn new(addr: SocketAddr) -> H1 {
        H1 { addr, sender: None }
    }

    async fn sender(&mut self) -> &mut Sender1 {
        let usable = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let tcp = within("connecting", tokio::net::TcpStream::connect(self.addr))
                .await
                .expect("connecting to edge");
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().expect("just connected")
    }

    /// Sends `method path` with `headers` (a Host naming the node is added unless given).
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_request(method, path, headers)
            .await
            .unwrap_or_else(|e| panic!("HTTP/1.1 {method} {path}: {e}"))
    }

    /// Like [`H1::request`], but a connection closed before a response head arrived is an
    /// `Err` instead of a panic.
    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let host = self.addr.to_string();
        let req = build(method, path, &host, headers);
        let what = format!("HTTP/1.1 {method} {path}");
        let sender = self.sender().await;
        let resp = within(&what, sender.send_request(req))
            .await
            .map_err(|e| e.to_string())?;
        Ok(within(&what, read_all(resp)).await)
    }

    /// GET with a complete body (panics on a cut response).
    pub async fn get(&mut self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let r = self.request("GET", path, headers).await;
        assert!(
            r.complete,
            "GET {path}: the body was cut ({} bytes arrived)",
            r.body.len()
        );
        r
    }

    /// GET, hashing the body as it arrives; `on_chunk` sees the running byte count.
    pub async fn get_streamed(&mut self, path: &str, on_chunk: impl FnMut(u64)) -> Streamed {
        let host = self.addr.to_string();
        let req = build("GET", path, &host, &[]);
        let what = format!("HTTP/1.1 GET {path}");
        let sender = self.sender().await;
        let resp = within(&what, sender.send_request(req))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        within(&what, read_streamed(resp, on_chunk)).await
    }
}

/// A cleartext HTTP/2 client (prior knowledge) on one connection; cheap to clone, so
/// requests can run concurrently on its streams.
#[derive(Clone)]
pub struct H2 {
    pub addr: SocketAddr,
    sender: Sender2,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let tcp = within("connecting", tokio::net::TcpStream::connect(addr))
            .await
            .expect("connecting to edge");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { addr, sender }
    }

    /// Sends `method path`; the `:authority` is `authority` or the node's address.
    pub async fn request_to(
        &self,
        authority: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let auth = authority.map_or_else(|| self.addr.to_string(), str::to_owned);
        let uri = format!("http://{auth}{path}");
        let mut req = build(method, &uri, &auth, headers);
        // HTTP/2 carries the authority in `:authority`; drop the Host header we added.
        req.headers_mut().remove("host");
        send_h2(&self.sender, req, &format!("HTTP/2 {method} {uri}")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let r = self.request_to(None, "GET", path, &[]).await;
        assert!(r.complete, "HTTP/2 GET {path}: the body was cut");
        r
    }

    pub async fn get_streamed(&self, path: &str, on_chunk: impl FnMut(u64)) -> Streamed {
        let uri = format!("http://{}{path}", self.addr);
        let req = Request::get(&uri)
            .body(Empty::new())
            .expect("a valid request");
        let what = format!("HTTP/2 GET {uri}");
        let mut sender = self.sender.clone();
        within(&what, sender.ready())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let resp = within(&what, sender.send_request(req))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        within(&what, read_streamed(resp, on_chunk)).await
    }
}

/// Polls `check` every `every` until it returns `Some`, or `None` once `limit` has passed.
pub async fn poll_until<T, F, Fut>(limit: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

// ---- raw socket client ---------------------------------------------------------------------

/// A response as it came off the wire.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when the response was chunked.
    pub body: Vec<u8>,
    /// Every byte received.
    pub raw: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` exactly as given on a new connection and reads until the server closes
/// it (send `Connection: close`), or `RAW_TIMEOUT` passes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut s = TcpStream::connect(addr).expect("connecting to edge");
    s.set_read_timeout(Some(RAW_TIMEOUT))
        .expect("setting a timeout");
    s.set_write_timeout(Some(RAW_TIMEOUT))
        .expect("setting a timeout");
    s.write_all(request).expect("sending the request");
    let deadline = Instant::now() + RAW_TIMEOUT;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the response (the server closed with unread bytes) ends it too.
            Err(_) => break,
        }
    }
    parse_raw(raw)
}

fn parse_raw(raw: Vec<u8>) -> RawReply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete response head in {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawReply {
        status,
        headers,
        body,
        raw,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return out;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

// ---- NATS ------------------------------------------------------------------------------------

/// Whether `nats-server` (Debian's package) is on PATH; without it, panics unless
/// `EDGE_SKIP_NATS_TESTS` is set (then the caller skips).
pub fn nats_installed() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("EDGE_SKIP_NATS_TESTS").is_some(),
            "nats-server is not installed (.ci/run installs it; EDGE_SKIP_NATS_TESTS=1 skips)"
        );
        eprintln!("EDGE_SKIP_NATS_TESTS set and no nats-server: skipped");
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it, rarely).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A `nats-server -a 127.0.0.1 -p PORT`, killed (by its pid) when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Nats {
    /// Starts one on `port` and waits until it answers with its INFO line.
    pub fn start(port: u16, log: &Path) -> Nats {
        let mut n = Nats {
            child: None,
            port,
            log: log.to_owned(),
        };
        n.restart();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port (after [`Nats::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is running");
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the nats-server log");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawning nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not answer on port {}; log:\n{}",
                self.port,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
