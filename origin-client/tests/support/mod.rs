//! Shared helpers for origin-client's integration tests: folders on disk, object checks,
//! walking a deploy's tree through any [`Store`], and a small static HTTP server.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use origin_client::store::ObjectBody;
use origin_client::{EntryKind, Hash, Store, TreeNode};

/// Writes `data` at `root/rel`, creating parent folders.
pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("a relative path has a parent")).unwrap();
    fs::write(&path, data).unwrap();
}

/// Every regular file under `store/objects`, sorted.
pub fn object_files(store: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let objects = store.join("objects");
    let Ok(rd) = fs::read_dir(&objects) else {
        return out;
    };
    for prefix in rd {
        let prefix = prefix.unwrap().path();
        if prefix.is_dir() {
            for f in fs::read_dir(&prefix).unwrap() {
                out.push(f.unwrap().path());
            }
        } else {
            out.push(prefix);
        }
    }
    out.sort();
    out
}

/// Checks the whole object area of a local store: it holds only `objects/<hh>/<hash>` files,
/// each named by the blake3 hash of its bytes with `hh` its first two hex digits (so no
/// partial or temporary file is there). Returns the number of objects.
pub fn verify_objects(store: &Path) -> usize {
    let files = object_files(store);
    for path in &files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let prefix = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let hash: Hash = name
            .parse()
            .unwrap_or_else(|e| panic!("{}: not an object name: {e}", path.display()));
        assert_eq!(
            prefix,
            &name[..2],
            "{} is in the wrong folder",
            path.display()
        );
        let data = fs::read(path).unwrap();
        assert_eq!(
            Hash::of(&data),
            hash,
            "{} does not hash to its name",
            path.display()
        );
    }
    files.len()
}

/// Every file of a folder on disk, by `/`-joined relative path, and every sub-folder.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
}

pub fn read_folder(root: &Path) -> Listing {
    fn go(dir: &Path, prefix: &str, out: &mut Listing) {
        for ent in fs::read_dir(dir).unwrap() {
            let ent = ent.unwrap();
            let name = ent.file_name().into_string().unwrap();
            let rel = join(prefix, &name);
            if ent.file_type().unwrap().is_dir() {
                out.dirs.insert(rel.clone());
                go(&ent.path(), &rel, out);
            } else {
                out.files.insert(rel, fs::read(ent.path()).unwrap());
            }
        }
    }
    let mut out = Listing::default();
    go(root, "", &mut out);
    out
}

pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Reads and decodes one tree node through the store.
pub async fn node(store: &dyn Store, hash: &Hash) -> TreeNode {
    let bytes = store
        .get_object(hash)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("tree node {hash} is missing from {}", store.location()));
    TreeNode::decode(bytes).unwrap()
}

/// What a path resolves to in a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub kind: EntryKind,
    pub size: u64,
    pub hash: Hash,
}

/// Resolves a `/`-joined path from a deploy's root, one `TreeNode::lookup` per component.
pub async fn resolve(store: &dyn Store, root: &Hash, path: &str) -> Option<Resolved> {
    let mut at = Resolved {
        kind: EntryKind::Dir,
        size: 0,
        hash: *root,
    };
    for name in path.split('/') {
        if at.kind != EntryKind::Dir {
            return None;
        }
        let n = node(store, &at.hash).await;
        let e = n.lookup(name)?;
        at = Resolved {
            kind: e.kind,
            size: e.size,
            hash: e.hash,
        };
    }
    Some(at)
}

/// Drains an object stream.
pub async fn read_body(body: ObjectBody) -> Vec<u8> {
    body.stream
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
        .unwrap()
}

/// Reads a whole deploy back through the store by walking its tree: every file (through
/// `get_object`, checked against `open_object` streamed and the entry's size) and every
/// sub-folder.
pub async fn read_deploy(store: &dyn Store, root: &Hash) -> Listing {
    let mut out = Listing::default();
    let mut stack = vec![(String::new(), *root)];
    while let Some((prefix, hash)) = stack.pop() {
        let n = node(store, &hash).await;
        for e in n.iter() {
            let rel = join(&prefix, e.name);
            match e.kind {
                EntryKind::Dir => {
                    out.dirs.insert(rel.clone());
                    stack.push((rel, e.hash));
                }
                EntryKind::File => {
                    let data = store.get_object(&e.hash).await.unwrap().unwrap().to_vec();
                    assert_eq!(data.len() as u64, e.size, "{rel}: size in the tree");
                    let body = store.open_object(&e.hash).await.unwrap().unwrap();
                    if let Some(len) = body.len {
                        assert_eq!(len, e.size, "{rel}: streamed length");
                    }
                    assert_eq!(read_body(body).await, data, "{rel}: streamed bytes");
                    out.files.insert(rel, data);
                }
            }
        }
    }
    out
}

/// A static file server over a folder, on an ephemeral port of 127.0.0.1. GET and HEAD;
/// 404 for anything missing; every path under `/fail/` answers 500. Stops when dropped.
pub struct StaticServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl StaticServer {
    pub async fn start(root: PathBuf) -> StaticServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let root = Arc::new(root);
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (root, count) = (root.clone(), count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        count.fetch_add(1, Ordering::Relaxed);
                        serve(root.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StaticServer {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let body = Full::new(Bytes::from(code.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    resp
}

async fn serve(root: Arc<PathBuf>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(status(StatusCode::METHOD_NOT_ALLOWED));
    }
    let path = req.uri().path().trim_start_matches('/');
    if path.starts_with("fail/") {
        return Ok(status(StatusCode::INTERNAL_SERVER_ERROR));
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.contains('%'))
    {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    let file_path = root.join(path);
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(f) => f,
        Err(_) => return Ok(status(StatusCode::NOT_FOUND)),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return Ok(status(StatusCode::NOT_FOUND)),
    };
    // Streamed in 64 KiB chunks, so large objects reach the client in many frames.
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map_ok(Frame::data);
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, meta.len().into());
    Ok(resp)
}

/// A tokio runtime for tests that are not `async` (property tests).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
pub mod s3;
