//! One store suite, every backend: memory, a local folder, S3 (a real `s3s-fs` on 127.0.0.1),
//! and HTTP (reading what a local store wrote, through a static server). Then the S3 faults:
//! a bucket that does not exist, wrong credentials, an endpoint that is down, and a service
//! that ignores conditional writes.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use origin_client::records::{CurrentPointer, DeployRecord, HostRecord};
use origin_client::store::{
    GcState, HttpStore, HttpStoreOptions, LocalStore, MemoryStore, S3Options, S3Store,
};
use origin_client::{Access, Hash, Store, StoreError, open_store_opts};
use support::s3::S3Server;
use support::{StaticServer, read_body, write_file};

/// Damages stored objects behind the store's back.
trait Tamper: Send + Sync {
    /// Replaces the bytes stored under `hash`.
    fn overwrite(&self, hash: &Hash, bytes: &[u8]);
}

struct NoTamper;
impl Tamper for NoTamper {
    fn overwrite(&self, _: &Hash, _: &[u8]) {}
}

struct FileTamper(std::path::PathBuf);
impl Tamper for FileTamper {
    fn overwrite(&self, hash: &Hash, bytes: &[u8]) {
        let p = self.0.join(origin_client::store::layout::object(hash));
        std::fs::write(p, bytes).unwrap();
    }
}

struct Backend {
    name: &'static str,
    /// Where the suite writes (the same store as `reader`, except for HTTP).
    writer: Arc<dyn Store>,
    reader: Arc<dyn Store>,
    tamper: Box<dyn Tamper>,
    /// Whether `reader` can list sites and objects.
    lists: bool,
    /// Whether the server's conditional write is atomic, so that of racing writers from one
    /// version exactly one wins. Real S3 (and R2, MinIO) are; s3s-fs 0.14.1 is not: its
    /// PutObject checks If-Match (src/s3.rs:695) and then writes the file (src/s3.rs:749)
    /// with no lock between, so two racers can both pass the check. No client can make a
    /// non-atomic CAS atomic; against such a server the race asserts what still holds.
    atomic_cas: bool,
}

fn pointer(site: &str, deploy: &str, root: Hash, seq: u64) -> CurrentPointer {
    CurrentPointer {
        site: site.into(),
        deploy: deploy.into(),
        root,
        seq,
        updated: 1,
    }
}

fn record(site: &str, id: &str, root: Hash, seq: u64, created: u64) -> DeployRecord {
    DeployRecord {
        id: id.into(),
        site: site.into(),
        root,
        seq,
        created,
        files: 1,
        bytes: 2,
        index: None,
    }
}

/// The suite: every backend must give these answers.
async fn suite(b: &Backend) {
    let name = b.name;
    let (w, r) = (b.writer.as_ref(), b.reader.as_ref());

    // Objects: found, not found, verified, streamed.
    let data = Bytes::from_static(b"hello, objects");
    let h = Hash::of(&data);
    let absent = Hash::of(b"never stored");
    assert!(w.put_object(&h, data.clone()).await.unwrap(), "{name}: new");
    assert!(
        !w.put_object(&h, data.clone()).await.unwrap(),
        "{name}: again"
    );
    assert_eq!(r.get_object(&h).await.unwrap().unwrap(), data, "{name}");
    assert!(r.has_object(&h).await.unwrap(), "{name}");
    let body = r.open_object(&h).await.unwrap().unwrap();
    assert_eq!(body.len, Some(data.len() as u64), "{name}");
    assert_eq!(read_body(body).await, data, "{name}");
    assert!(r.get_object(&absent).await.unwrap().is_none(), "{name}");
    assert!(r.open_object(&absent).await.unwrap().is_none(), "{name}");
    assert!(!r.has_object(&absent).await.unwrap(), "{name}");
    let err = w
        .put_object(&absent, Bytes::from_static(b"other bytes"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{name}: {err}");
    assert!(
        !r.has_object(&absent).await.unwrap(),
        "{name}: nothing stored"
    );

    // Files: stored as hashed; one that changed since is refused and not stored.
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "f.txt", b"file bytes");
    let fh = Hash::of(b"file bytes");
    assert!(
        w.put_object_file(&fh, &dir.path().join("f.txt"))
            .await
            .unwrap()
    );
    assert_eq!(
        &r.get_object(&fh).await.unwrap().unwrap()[..],
        b"file bytes"
    );
    write_file(dir.path(), "f.txt", b"edited meanwhile");
    let stale = Hash::of(b"the bytes it had when hashed");
    let err = w
        .put_object_file(&stale, &dir.path().join("f.txt"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SourceChanged { .. }),
        "{name}: {err}"
    );
    assert!(!r.has_object(&stale).await.unwrap(), "{name}");

    // Bytes damaged in the store are an error on a whole read, never returned.
    let victim = Bytes::from_static(b"to be damaged");
    let vh = Hash::of(&victim);
    w.put_object(&vh, victim).await.unwrap();
    b.tamper.overwrite(&vh, b"to be DAMAGED");
    if name != "memory" {
        let err = r.get_object(&vh).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{name}: {err}");
    }

    // Hosts.
    assert!(
        r.get_host("docs.example.com").await.unwrap().is_none(),
        "{name}"
    );
    w.put_host(&HostRecord {
        host: "docs.example.com".into(),
        site: "docs".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        r.get_host("Docs.Example.com.").await.unwrap().unwrap().site,
        "docs",
        "{name}"
    );

    // The pointer: a compare-and-swap on its sequence number.
    assert!(r.get_current("docs").await.unwrap().is_none(), "{name}");
    w.swap_current(None, &pointer("docs", "d1", h, 1))
        .await
        .unwrap();
    let err = w
        .swap_current(None, &pointer("docs", "d1b", h, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Conflict {
                expected: None,
                found: Some(1),
                ..
            }
        ),
        "{name}: {err}"
    );
    w.swap_current(Some(1), &pointer("docs", "d2", h, 2))
        .await
        .unwrap();
    let err = w
        .swap_current(Some(1), &pointer("docs", "d3", h, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::Conflict {
                expected: Some(1),
                found: Some(2),
                ..
            }
        ),
        "{name}: {err}"
    );
    let c = r.get_current("docs").await.unwrap().unwrap();
    assert_eq!((c.deploy.as_str(), c.seq), ("d2", 2), "{name}");

    // Deploy records: append-only, listed oldest first.
    w.put_deploy(&record("docs", "d2", h, 2, 200))
        .await
        .unwrap();
    w.put_deploy(&record("docs", "d1", h, 1, 100))
        .await
        .unwrap();
    w.put_deploy(&record("docs", "d1", h, 1, 100))
        .await
        .expect("the same record again is fine");
    assert!(
        w.put_deploy(&record("docs", "d1", fh, 1, 100))
            .await
            .is_err(),
        "{name}: a different record under an existing id is refused"
    );
    let ids: Vec<String> = r
        .list_deploys("docs")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["d1", "d2"], "{name}");
    assert_eq!(
        r.get_deploy("docs", "d2").await.unwrap().unwrap().created,
        200
    );
    assert!(
        r.get_deploy("docs", "d9").await.unwrap().is_none(),
        "{name}"
    );
    assert!(r.list_deploys("nosite").await.unwrap().is_empty(), "{name}");

    // Racing pointer moves from one sequence number: exactly one wins.
    let results = futures_util::future::join_all((0..8).map(|i| {
        let w = b.writer.clone();
        async move {
            w.swap_current(Some(2), &pointer("docs", &format!("race{i}"), h, 3))
                .await
        }
    }))
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    if b.atomic_cas {
        assert_eq!(wins, 1, "{name}: {results:?}");
    } else {
        assert!(wins >= 1, "{name}: one racer wins: {results:?}");
    }
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::Conflict { found: Some(3), .. })),
        "{name}: {results:?}"
    );
    let now = r.get_current("docs").await.unwrap().unwrap();
    let winner = |d: &str| {
        results
            .iter()
            .enumerate()
            .any(|(i, res)| res.is_ok() && d == format!("race{i}"))
    };
    assert!(
        now.seq == 3 && winner(&now.deploy),
        "{name}: the pointer is a winner's: {now:?} after {results:?}"
    );

    if !b.lists {
        return;
    }
    // Listing and deleting (garbage collection).
    assert_eq!(r.list_sites().await.unwrap(), ["docs"], "{name}");
    let listed = r.list_objects().await.unwrap();
    let o = listed.iter().find(|o| o.hash == h).expect("listed");
    assert_eq!(o.size, data.len() as u64, "{name}");
    let now = origin_client::records::unix_now();
    assert!(
        o.modified + 600 > now && o.modified <= now + 5,
        "{name}: {o:?}"
    );
    assert!(listed.iter().any(|o| o.hash == fh), "{name}");
    w.delete_object(&h).await.unwrap();
    w.delete_object(&h)
        .await
        .expect("deleting a missing object is fine");
    assert!(!r.has_object(&h).await.unwrap(), "{name}");
    assert!(!r.list_objects().await.unwrap().iter().any(|o| o.hash == h));

    // The gc state: a compare-and-swap on its version.
    assert!(r.get_gc_state().await.unwrap().is_none(), "{name}");
    let s1 = GcState {
        version: 1,
        running: true,
        started: 5,
        updated: 5,
        keep: Some(3),
        grace_secs: Some(60),
    };
    assert!(w.swap_gc_state(None, &s1).await.unwrap(), "{name}");
    assert!(!w.swap_gc_state(None, &s1).await.unwrap(), "{name}");
    let s2 = GcState {
        version: 2,
        running: false,
        ..s1.clone()
    };
    assert!(!w.swap_gc_state(Some(7), &s2).await.unwrap(), "{name}");
    assert!(w.swap_gc_state(Some(1), &s2).await.unwrap(), "{name}");
    assert_eq!(r.get_gc_state().await.unwrap(), Some(s2), "{name}");

    // The host index: absent, then built from the records by `hosts::add`, moved by a
    // compare-and-swap on its version, and read back by every reader.
    assert_eq!(r.get_host_index().await.unwrap(), None, "{name}");
    let before = w.get_host_index().await.unwrap();
    assert_eq!(before, None, "{name}");
    let v = origin_client::hosts::add(
        w,
        &HostRecord {
            host: "index.example".into(),
            site: "docs".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(v, 1, "{name}");
    let ix = r.get_host_index().await.unwrap().expect("an index");
    assert_eq!(
        ix.hosts.get("index.example").map(String::as_str),
        Some("docs"),
        "{name}"
    );
    // Hosts recorded before the index existed are in it.
    if b.lists {
        let listed = w.list_hosts().await.unwrap();
        assert_eq!(listed.len(), ix.hosts.len(), "{name}: {listed:?} {ix:?}");
    }
    let mut next = ix.clone();
    next.version = 2;
    assert!(
        !w.swap_host_index(None, &next).await.unwrap(),
        "{name}: stale"
    );
    assert!(
        !w.swap_host_index(Some(5), &next).await.unwrap(),
        "{name}: stale"
    );
    assert!(w.swap_host_index(Some(1), &next).await.unwrap(), "{name}");
    assert_eq!(
        r.get_host_index().await.unwrap().unwrap().version,
        2,
        "{name}"
    );
    let mut bad = next.clone();
    bad.hosts.insert("Not A Host".into(), "docs".into());
    assert!(
        w.swap_host_index(Some(2), &bad).await.is_err(),
        "{name}: validated"
    );
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let s: Arc<dyn Store> = Arc::new(MemoryStore::new());
    suite(&Backend {
        name: "memory",
        writer: s.clone(),
        reader: s,
        tamper: Box::new(NoTamper),
        lists: true,
        atomic_cas: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path(), Access::Write).unwrap());
    suite(&Backend {
        name: "local",
        writer: s.clone(),
        reader: s,
        tamper: Box::new(FileTamper(dir.path().to_owned())),
        lists: true,
        atomic_cas: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_store_reads_pass_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path(), Access::Write).unwrap());
    let server = StaticServer::start(dir.path().to_owned()).await;
    let http: Arc<dyn Store> =
        Arc::new(HttpStore::new(&server.url(""), HttpStoreOptions::default()).unwrap());
    suite(&Backend {
        name: "http",
        writer: local,
        reader: http.clone(),
        tamper: Box::new(FileTamper(dir.path().to_owned())),
        lists: false,
        atomic_cas: true,
    })
    .await;
    let err = http.list_objects().await.unwrap_err();
    assert!(matches!(err, StoreError::Unsupported { .. }), "{err}");
}

/// s3s-fs keeps an object as the file of its key: damage it there.
struct S3Tamper(std::path::PathBuf);
impl Tamper for S3Tamper {
    fn overwrite(&self, hash: &Hash, bytes: &[u8]) {
        std::fs::write(
            self.0.join(origin_client::store::layout::object(hash)),
            bytes,
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_passes_the_suite() {
    let server = S3Server::start(&["edge"]);
    let s = S3Store::open("edge/deploys/prod", server.options()).unwrap();
    let counted = s.clone();
    let s: Arc<dyn Store> = Arc::new(s);
    assert_eq!(s.location(), "s3://edge/deploys/prod");
    suite(&Backend {
        name: "s3",
        writer: s.clone(),
        reader: s,
        tamper: Box::new(S3Tamper(server.bucket_dir("edge").join("deploys/prod"))),
        lists: true,
        atomic_cas: false,
    })
    .await;
    assert!(counted.requests() > 20, "every HTTP request is counted");
    // The layout is the local store's, under the prefix.
    let history = server.key_file("edge", "deploys/prod/sites/docs/history");
    assert_eq!(std::fs::read_to_string(history).unwrap(), "d2\nd1\n");
    assert!(
        server
            .key_file("edge", "deploys/prod/sites/docs/current")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_large_files_go_up_in_parts_and_a_changed_one_leaves_nothing() {
    let server = S3Server::start(&["edge"]);
    let opts = S3Options {
        multipart_threshold: 6 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        ..server.options()
    };
    let s = S3Store::open("edge", opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..13 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    write_file(dir.path(), "big.bin", &big);
    let h = Hash::of(&big);
    let before = s.requests();
    assert!(
        s.put_object_file(&h, &dir.path().join("big.bin"))
            .await
            .unwrap()
    );
    // HEAD, probe (4), create, 3 parts, complete.
    assert!(
        s.requests() - before >= 8,
        "{} requests",
        s.requests() - before
    );
    let body = s.open_object(&h).await.unwrap().unwrap();
    assert_eq!(body.len, Some(big.len() as u64));
    assert_eq!(read_body(body).await, big);
    assert!(
        !s.put_object_file(&h, &dir.path().join("big.bin"))
            .await
            .unwrap()
    );

    let mut other = big.clone();
    other[7 * 1024 * 1024] ^= 1;
    write_file(dir.path(), "other.bin", &other);
    let claimed = Hash::of(b"what it hashed to before the edit");
    let err = s
        .put_object_file(&claimed, &dir.path().join("other.bin"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");
    assert!(
        !s.has_object(&claimed).await.unwrap(),
        "the aborted upload left nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_are_clear_errors_and_damage_nothing() {
    let mut server = S3Server::start(&["edge"]);
    let h = Hash::of(b"x");

    // A bucket that does not exist: an error (not "not found") naming it, on reads and writes.
    let s = S3Store::open("nobucket/p", server.options()).unwrap();
    let err = s.get_current("docs").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("bucket \"nobucket\" does not exist"),
        "{err}"
    );
    let err = s
        .put_object(&h, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!server.bucket_dir("nobucket").exists());

    // Wrong credentials.
    let wrong = S3Options {
        credentials: Some(("edgetestkey".into(), "not the secret".into())),
        ..server.options()
    };
    let s = S3Store::open("edge", wrong).unwrap();
    let err = s.get_current("docs").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("access denied") && msg.contains("AWS_SECRET_ACCESS_KEY"),
        "{msg}"
    );
    assert!(matches!(err, StoreError::Remote { .. }));
    let err = s
        .swap_current(None, &pointer("docs", "d1", h, 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("access denied"), "{err}");
    assert_eq!(
        std::fs::read_dir(server.bucket_dir("edge"))
            .unwrap()
            .count(),
        0,
        "nothing written"
    );

    // Missing or half credentials are refused before any request.
    let err = S3Store::open(
        "edge",
        S3Options {
            credentials: None,
            ..server.options()
        },
    );
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("needs credentials") && msg.contains("AWS_ACCESS_KEY_ID"),
            "{msg}"
        );
    }
    // No bucket, a plain-http endpoint not allowed.
    let msg = S3Store::open("", server.options()).unwrap_err().to_string();
    assert!(msg.contains("names no bucket"), "{msg}");
    let msg = open_store_opts("s3://", Access::Read, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("names no bucket"), "{msg}");
    let msg = S3Store::open(
        "edge",
        S3Options {
            allow_http: Some(false),
            ..server.options()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("plain http") && msg.contains("AWS_ALLOW_HTTP"),
        "{msg}"
    );

    // The endpoint down: an error, quickly, never "not found".
    let s = S3Store::open("edge", server.options()).unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let err = s.get_current("docs").await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(s.has_object(&h).await.is_err());
    assert!(s.get_object(&h).await.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    server.restart();
    assert!(s.get_current("docs").await.unwrap().is_none(), "back again");
}

/// A bucket that ignores `If-None-Match` and `If-Match` (and signatures): a map of keys.
mod naive {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    pub type Keys = Arc<Mutex<HashMap<String, Bytes>>>;

    pub async fn start() -> (std::net::SocketAddr, Keys) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys: Keys = Arc::default();
        let k = keys.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let k = k.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(k.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, keys)
    }

    async fn handle(
        keys: Keys,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let req_query = req.uri().query().unwrap_or("").to_owned();
        let method = req.method().clone();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let mut map = keys.lock().unwrap();
        let (status, bytes) = match method {
            Method::PUT => {
                map.insert(path, body.unwrap_or_default());
                (StatusCode::OK, Bytes::new())
            }
            Method::GET if req_query.contains("list-type=2") => (
                StatusCode::OK,
                Bytes::from_static(
                    b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>edge</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>",
                ),
            ),
            Method::GET | Method::HEAD => match map.get(&path) {
                Some(b) => (StatusCode::OK, b.clone()),
                None => (StatusCode::NOT_FOUND, Bytes::from_static(b"<Error><Code>NoSuchKey</Code></Error>")),
            },
            Method::DELETE => {
                map.remove(&path);
                (StatusCode::NO_CONTENT, Bytes::new())
            }
            _ => (StatusCode::NOT_IMPLEMENTED, Bytes::new()),
        };
        let mut resp = Response::new(Full::new(bytes));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(http::header::ETAG, "\"1\"".parse().unwrap());
        Ok(resp)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_that_ignores_conditional_writes_is_refused_before_anything_is_written() {
    let (addr, keys) = naive::start().await;
    let opts = S3Options {
        endpoint: Some(format!("http://{addr}")),
        region: Some("us-east-1".into()),
        allow_http: Some(true),
        credentials: Some(("k".into(), "s".into())),
        retries: 0,
        ..S3Options::default()
    };
    let s = S3Store::open("edge/p", opts).unwrap();
    let h = Hash::of(b"x");
    let err = s
        .put_object(&h, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::NoConditionalWrites { .. }) && msg.contains("If-None-Match"),
        "{msg}"
    );
    let err = s
        .swap_current(None, &pointer("docs", "d1", h, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NoConditionalWrites { .. }),
        "{err}"
    );
    // Only the probe's own scratch keys (this fake has no bulk delete to remove them with).
    let written: Vec<String> = keys.lock().unwrap().keys().cloned().collect();
    assert!(
        written
            .iter()
            .all(|k| k.starts_with("/edge/p/tmp/cas-probe-")),
        "nothing but the probe was written: {written:?}"
    );
    // Reads still work: an edge may serve from such a bucket.
    assert!(s.get_current("docs").await.unwrap().is_none());
}
