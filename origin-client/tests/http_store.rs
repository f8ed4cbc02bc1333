//! The HTTP store against a real static server on 127.0.0.1 serving a local store's folder:
//! it reads exactly what the local store reads, tells "not found" from "failed", and refuses
//! every write.

mod support;

use std::collections::BTreeSet;

use bytes::Bytes;
use origin_client::publish::{PublishOptions, publish};
use origin_client::records::{CurrentPointer, DeployRecord, HostRecord};
use origin_client::store::{HttpStore, HttpStoreOptions, LocalStore};
use origin_client::{Access, EntryKind, Hash, Store, StoreError, open_store};
use support::{StaticServer, node, read_body, read_deploy, write_file};

const SITE: &str = "docs";
const HOSTS: [&str; 2] = ["docs.example.com", "www.docs.example.com"];

/// A store with two deploys of `docs` (the second current) and two host records. The site
/// has a 3 MiB file so streaming takes many frames, names with URL-special characters, and
/// an empty folder.
async fn fixture() -> (tempfile::TempDir, LocalStore, Vec<DeployRecord>) {
    let site = tempfile::tempdir().unwrap();
    write_file(site.path(), "index.html", b"<h1>docs v1</h1>");
    write_file(site.path(), "a b/c%20d?e#f.html", b"odd names");
    write_file(site.path(), "assets/app.js", b"console.log(1)");
    write_file(site.path(), "assets/empty.txt", b"");
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    write_file(site.path(), "assets/big.bin", &big);
    std::fs::create_dir_all(site.path().join("empty")).unwrap();

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
    for host in HOSTS {
        store
            .put_host(&HostRecord {
                host: host.into(),
                site: SITE.into(),
            })
            .await
            .unwrap();
    }
    (dir, store, deploys)
}

/// Every object a deploy references: tree nodes and blobs.
async fn objects_of(store: &dyn Store, root: &Hash) -> (BTreeSet<Hash>, BTreeSet<Hash>) {
    let (mut trees, mut blobs) = (BTreeSet::new(), BTreeSet::new());
    let mut stack = vec![*root];
    while let Some(h) = stack.pop() {
        trees.insert(h);
        for e in node(store, &h).await.iter() {
            match e.kind {
                EntryKind::Dir => stack.push(e.hash),
                EntryKind::File => {
                    blobs.insert(e.hash);
                }
            }
        }
    }
    (trees, blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_store_reads_what_the_local_store_reads() {
    let (dir, local, deploys) = fixture().await;
    let server = StaticServer::start(dir.path().to_owned()).await;
    let http = HttpStore::new(&server.url(""), HttpStoreOptions::default()).unwrap();
    assert_eq!(http.location(), server.url(""));

    let current = http.get_current(SITE).await.unwrap().unwrap();
    assert_eq!(
        Some(&current),
        local.get_current(SITE).await.unwrap().as_ref()
    );
    assert_eq!(
        (current.deploy.as_str(), current.seq),
        (deploys[1].id.as_str(), 2)
    );

    let listed = http.list_deploys(SITE).await.unwrap();
    assert_eq!(listed, local.list_deploys(SITE).await.unwrap());
    assert_eq!(listed, deploys);
    for d in &deploys {
        assert_eq!(
            http.get_deploy(SITE, &d.id).await.unwrap().as_ref(),
            Some(d)
        );
    }
    for host in HOSTS {
        let rec = http.get_host(host).await.unwrap().unwrap();
        assert_eq!(Some(&rec), local.get_host(host).await.unwrap().as_ref());
        assert_eq!((rec.host.as_str(), rec.site.as_str()), (host, SITE));
    }
    // Host names are normalised before the lookup.
    assert_eq!(
        http.get_host("DOCS.Example.com.")
            .await
            .unwrap()
            .unwrap()
            .host,
        HOSTS[0]
    );

    let mut streamed_bytes = 0;
    for d in &deploys {
        let (trees, blobs) = objects_of(&local, &d.root).await;
        assert_eq!(
            objects_of(&http, &d.root).await,
            (trees.clone(), blobs.clone())
        );
        for h in trees.iter().chain(&blobs) {
            let want = local.get_object(h).await.unwrap().unwrap();
            assert!(http.has_object(h).await.unwrap(), "{h}");
            assert_eq!(http.get_object(h).await.unwrap().unwrap(), want, "{h}");
            let body = http.open_object(h).await.unwrap().unwrap();
            assert_eq!(body.len, Some(want.len() as u64), "{h}");
            let got = read_body(body).await;
            assert_eq!(got, want, "{h} streamed");
            streamed_bytes += got.len();
        }
        assert_eq!(
            read_deploy(&http, &d.root).await,
            read_deploy(&local, &d.root).await
        );
    }
    assert!(streamed_bytes > 3 * 1024 * 1024);
    // The second deploy, read over HTTP, is the folder as it was published.
    let files = read_deploy(&http, &deploys[1].root).await;
    assert_eq!(files.files["index.html"], b"<h1>docs v2</h1>");
    assert_eq!(files.files["a b/c%20d?e#f.html"], b"odd names");
    assert_eq!(files.files["assets/big.bin"].len(), 3 * 1024 * 1024);
    assert!(files.dirs.contains("empty"));

    // The same answers through `open_store`.
    let opened = open_store(&server.url(""), Access::Read).unwrap();
    assert_eq!(opened.get_current(SITE).await.unwrap().unwrap(), current);
    assert!(server.requests() > 20);
}

#[tokio::test]
async fn http_store_not_found_is_none() {
    let (dir, local, _) = fixture().await;
    let server = StaticServer::start(dir.path().to_owned()).await;
    let http = HttpStore::new(&server.url(""), HttpStoreOptions::default()).unwrap();
    let missing = Hash::of(b"never stored");
    assert!(http.get_object(&missing).await.unwrap().is_none());
    assert!(http.open_object(&missing).await.unwrap().is_none());
    assert!(!http.has_object(&missing).await.unwrap());
    assert!(local.get_object(&missing).await.unwrap().is_none());
    assert!(http.get_current("nosite").await.unwrap().is_none());
    assert!(
        http.get_deploy(SITE, "no-such-deploy")
            .await
            .unwrap()
            .is_none()
    );
    assert!(http.get_host("nobody.example.com").await.unwrap().is_none());
    assert!(http.list_deploys("nosite").await.unwrap().is_empty());
    assert!(local.list_deploys("nosite").await.unwrap().is_empty());
    // A store root with nothing under it: every read is "not found", not an error.
    let empty = HttpStore::new(&server.url("nothing/here"), HttpStoreOptions::default()).unwrap();
    assert!(empty.get_current(SITE).await.unwrap().is_none());
}

#[tokio::test]
async fn http_store_server_errors_are_errors() {
    let (dir, _local, deploys) = fixture().await;
    let server = StaticServer::start(dir.path().to_owned()).await;
    let failing = HttpStore::new(&server.url("fail/"), HttpStoreOptions::default()).unwrap();
    let is_500 = |e: &StoreError| matches!(e, StoreError::Status { status: 500, .. });
    let root = deploys[0].root;

    let e = failing.get_current(SITE).await.unwrap_err();
    assert!(is_500(&e), "{e:?}");
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(e.blame(), origin_client::store::Blame::Upstream);
    assert!(is_500(&failing.get_object(&root).await.unwrap_err()));
    assert!(is_500(&failing.open_object(&root).await.unwrap_err()));
    assert!(is_500(&failing.has_object(&root).await.unwrap_err()));
    assert!(is_500(&failing.list_deploys(SITE).await.unwrap_err()));
    assert!(is_500(
        &failing.get_deploy(SITE, &deploys[0].id).await.unwrap_err()
    ));
    assert!(is_500(&failing.get_host(HOSTS[0]).await.unwrap_err()));

    // Bytes that do not match their address are refused, not returned.
    let liar = Hash::of(b"what the name promises");
    let hex = liar.to_hex();
    write_file(
        dir.path(),
        &format!("corrupt/objects/{}/{hex}", &hex[..2]),
        b"something else",
    );
    let corrupt = HttpStore::new(&server.url("corrupt"), HttpStoreOptions::default()).unwrap();
    let e = corrupt.get_object(&liar).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { hash } if hash == liar),
        "{e:?}"
    );

    // Nothing listening: an error, not "not found".
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = HttpStore::new(
        &format!("http://127.0.0.1:{port}/"),
        HttpStoreOptions::default(),
    )
    .unwrap();
    let e = gone.get_current(SITE).await.unwrap_err();
    assert!(matches!(e, StoreError::Http { .. }), "{e:?}");
}

#[tokio::test]
async fn http_store_refuses_writes() {
    let (dir, local, deploys) = fixture().await;
    let server = StaticServer::start(dir.path().to_owned()).await;
    let http = HttpStore::new(&server.url(""), HttpStoreOptions::default()).unwrap();
    let read_only = |e: StoreError| matches!(e, StoreError::ReadOnly { .. });

    let data = Bytes::from_static(b"new object");
    let h = Hash::of(&data);
    assert!(read_only(
        http.put_object(&h, data.clone()).await.unwrap_err()
    ));
    let src = dir.path().join("src.txt");
    std::fs::write(&src, &data).unwrap();
    assert!(read_only(http.put_object_file(&h, &src).await.unwrap_err()));
    assert!(read_only(
        http.put_host(&HostRecord {
            host: "new.example.com".into(),
            site: SITE.into(),
        })
        .await
        .unwrap_err()
    ));
    let mut d = deploys[0].clone();
    d.id = "another".into();
    assert!(read_only(http.put_deploy(&d).await.unwrap_err()));
    let p = CurrentPointer {
        site: SITE.into(),
        deploy: deploys[0].id.clone(),
        root: deploys[0].root,
        seq: 3,
        updated: 0,
    };
    let e = http.swap_current(Some(2), &p).await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    assert!(read_only(e));
    let e = open_store(&server.url(""), Access::Write).unwrap_err();
    assert!(read_only(e));

    // Nothing changed underneath.
    assert!(!local.has_object(&h).await.unwrap());
    assert!(local.get_host("new.example.com").await.unwrap().is_none());
    assert_eq!(local.list_deploys(SITE).await.unwrap(), deploys);
    assert_eq!(local.get_current(SITE).await.unwrap().unwrap().seq, 2);
    assert!(!dir.path().join("sites/docs/deploys/another").exists());
}

/// A body cut short of its Content-Length: the stream's error is an unexpected end that
/// carries the store's error (`StoreError::Http` naming the URL), and `from_body` takes it
/// out again.
#[tokio::test]
async fn http_store_body_errors_carry_their_store_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            head.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        // Closing here cuts the body 90 bytes short.
    });
    let store = HttpStore::new(&format!("http://{addr}/"), HttpStoreOptions::default()).unwrap();
    let hash = Hash::of(b"anything");
    let mut body = store.open_object(&hash).await.unwrap().unwrap();
    assert_eq!(body.len, Some(100));
    let mut got = Vec::new();
    let err = loop {
        use futures_util::StreamExt;
        match body.stream.next().await {
            Some(Ok(chunk)) => got.extend_from_slice(&chunk),
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly after {} bytes", got.len()),
        }
    };
    server.await.unwrap();
    assert_eq!(got, b"0123456789");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err:?}");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<StoreError>())
        .expect("a StoreError inside the io::Error");
    assert!(
        matches!(inner, StoreError::Http { url, .. } if url.ends_with(&format!("objects/{}/{hash}", &hash.to_hex()[..2]))),
        "{inner:?}"
    );
    assert!(matches!(
        StoreError::from_body(err, "object"),
        StoreError::Http { .. }
    ));
}
