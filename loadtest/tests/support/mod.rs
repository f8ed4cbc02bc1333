//! Shared helpers for loadtest's integration tests: a published store in a temporary folder,
//! a chaos origin in front of it, and clients (the HTTP store, a hyper client, raw TCP).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use loadtest::chaos::{ChaosOptions, ChaosOrigin};
use origin_client::publish::{PublishOptions, publish};
use origin_client::records::{DeployRecord, HostRecord};
use origin_client::store::{HttpStore, HttpStoreOptions, LocalStore, layout};
use origin_client::{Access, EntryKind, Hash, Store, TreeNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SITE: &str = "docs";
pub const HOST: &str = "docs.example.com";
/// The large file's length: several 256 KiB store chunks.
pub const BIG_LEN: usize = 700 * 1024;

/// A local store holding two deploys of [`SITE`] (the second current) and a host record,
/// with every object it holds, split into tree nodes and blobs.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub store: LocalStore,
    pub deploys: Vec<DeployRecord>,
    pub trees: BTreeMap<Hash, Bytes>,
    pub blobs: BTreeMap<Hash, Bytes>,
    /// The big blob's hash.
    pub big: Hash,
}

fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("a relative path has a parent")).unwrap();
    fs::write(&path, data).unwrap();
}

pub async fn fixture() -> Fixture {
    let site = tempfile::tempdir().unwrap();
    write_file(site.path(), "index.html", b"<h1>docs v1</h1>");
    write_file(site.path(), "assets/app.js", b"console.log(1)");
    write_file(site.path(), "assets/style.css", b"body { color: #333 }");
    // Shares three bytes with the tree magic, and is still a blob.
    write_file(site.path(), "notes.txt", b"EDG notes");
    let big: Vec<u8> = (0..BIG_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    write_file(site.path(), "assets/big.bin", &big);

    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), Access::Write).unwrap();
    let opts = PublishOptions::default();
    let mut deploys = vec![
        publish(&store, site.path(), SITE, &opts)
            .await
            .unwrap()
            .deploy,
    ];
    write_file(site.path(), "index.html", b"<h1>docs v2</h1>");
    deploys.push(
        publish(&store, site.path(), SITE, &opts)
            .await
            .unwrap()
            .deploy,
    );
    store
        .put_host(&HostRecord {
            host: HOST.into(),
            site: SITE.into(),
        })
        .await
        .unwrap();

    let (mut trees, mut blobs) = (BTreeMap::new(), BTreeMap::new());
    for d in &deploys {
        let mut stack = vec![d.root];
        while let Some(h) = stack.pop() {
            let bytes = store.get_object(&h).await.unwrap().unwrap();
            let node = TreeNode::decode(bytes.clone()).unwrap();
            for e in node.iter() {
                match e.kind {
                    EntryKind::Dir => stack.push(e.hash),
                    EntryKind::File => {
                        let data = store.get_object(&e.hash).await.unwrap().unwrap();
                        blobs.insert(e.hash, data);
                    }
                }
            }
            trees.insert(h, bytes);
        }
    }
    Fixture {
        _dir: dir,
        store,
        deploys,
        trees,
        blobs,
        big: Hash::of(&big),
    }
}

impl Fixture {
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.store.clone())
    }

    /// A small blob (not the big one).
    pub fn small_blob(&self) -> (Hash, Bytes) {
        self.blobs
            .iter()
            .find(|(h, b)| **h != self.big && b.len() > 4)
            .map(|(h, b)| (*h, b.clone()))
            .expect("the fixture has small blobs")
    }
}

/// A chaos origin on an ephemeral port of 127.0.0.1 in front of the fixture's store.
pub async fn start(fx: &Fixture) -> ChaosOrigin {
    start_with(fx, ChaosOptions::default()).await
}

pub async fn start_with(fx: &Fixture, opts: ChaosOptions) -> ChaosOrigin {
    ChaosOrigin::start_with(fx.store(), "127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// An HTTP store reading through the origin; `header_timeout` bounds each request's wait.
pub fn http_store(origin: &ChaosOrigin, header_timeout: Duration) -> HttpStore {
    HttpStore::new(
        &origin.url(),
        HttpStoreOptions {
            connect_timeout: Duration::from_secs(2),
            header_timeout,
            body_timeout: Duration::from_secs(10),
            ..HttpStoreOptions::default()
        },
    )
    .unwrap()
}

pub fn object_path(hash: &Hash) -> String {
    format!("/{}", layout::object(hash))
}

/// A hyper client without connection reuse, so a fault on one request never leaks into the
/// next through a pooled connection.
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response read whole: status, headers, and the body or the error that cut it.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Result<Bytes, hyper::Error>,
}

impl Answer {
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("a whole body")).into_owned()
    }
}

impl Client {
    pub fn new(origin: &ChaosOrigin) -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
            base: format!("http://{}", origin.addr()),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Answer, hyper_util::client::legacy::Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let resp = self.inner.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes());
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Answer, hyper_util::client::legacy::Error> {
        self.request(Method::GET, path, &[], "").await
    }
}

/// What a raw TCP client saw: every byte until the server closed, and how it closed.
pub struct Raw {
    pub bytes: Vec<u8>,
    /// The read error that ended it (a reset), or `None` for a clean end of stream.
    pub error: Option<std::io::Error>,
}

impl Raw {
    pub fn head(&self) -> &str {
        let end = self.head_end().expect("a response head");
        std::str::from_utf8(&self.bytes[..end]).unwrap()
    }

    fn head_end(&self) -> Option<usize> {
        self.bytes.windows(4).position(|w| w == b"\r\n\r\n")
    }

    pub fn status(&self) -> u16 {
        self.head()
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line")
    }

    pub fn content_length(&self) -> Option<u64> {
        self.head().lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[self.head_end().expect("a response head") + 4..]
    }
}

/// Sends one request line over a fresh TCP connection (`Connection: close`) and reads until
/// the server closes it, within 10 seconds.
pub async fn raw(addr: SocketAddr, method: &str, path: &str) -> Raw {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the server closes the connection within 10 s");
    Raw { bytes, error: read }
}
