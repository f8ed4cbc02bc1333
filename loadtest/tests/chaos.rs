//! chaos-origin over real sockets on 127.0.0.1, in front of a local store published from a
//! small folder: it serves the store as a static server would, each fault is visible to a
//! client, rules switch at run time, and the counts are exact.

mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use loadtest::chaos::{Action, ChaosError, ChaosOptions, Counts, Kind, Rule};
use origin_client::{Hash, Store, StoreError};
use support::{
    BIG_LEN, Client, HOST, SITE, fixture, http_store, object_path, raw, start, start_with,
};

const SECOND: Duration = Duration::from_secs(1);

fn status(code: u16) -> Action {
    Action::Status { code, body: None }
}

async fn read_stream(body: origin_client::store::ObjectBody) -> std::io::Result<Vec<u8>> {
    use futures_util::TryStreamExt;
    body.stream
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_store_like_a_static_file_server() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);

    assert_eq!(
        http.get_current(SITE).await.unwrap(),
        fx.store.get_current(SITE).await.unwrap()
    );
    assert!(http.get_current(SITE).await.unwrap().is_some());
    assert_eq!(
        http.list_deploys(SITE).await.unwrap(),
        fx.store.list_deploys(SITE).await.unwrap()
    );
    assert_eq!(http.list_deploys(SITE).await.unwrap(), fx.deploys);
    for d in &fx.deploys {
        assert_eq!(
            http.get_deploy(SITE, &d.id).await.unwrap().as_ref(),
            Some(d)
        );
    }
    assert_eq!(
        http.get_host(HOST).await.unwrap(),
        fx.store.get_host(HOST).await.unwrap()
    );
    assert_eq!(http.get_host("nosuch.example.com").await.unwrap(), None);
    assert_eq!(http.get_current("nosuch").await.unwrap(), None);
    assert!(http.list_deploys("nosuch").await.unwrap().is_empty());
    assert_eq!(http.get_deploy(SITE, "nosuch").await.unwrap(), None);

    for (hash, bytes) in fx.trees.iter().chain(&fx.blobs) {
        assert_eq!(&http.get_object(hash).await.unwrap().unwrap(), bytes);
        let body = http.open_object(hash).await.unwrap().unwrap();
        assert_eq!(body.len, Some(bytes.len() as u64));
        assert_eq!(&read_stream(body).await.unwrap(), bytes);
        assert!(http.has_object(hash).await.unwrap());
    }
    let missing = Hash::of(b"not in the store");
    assert_eq!(http.get_object(&missing).await.unwrap(), None);
    assert!(!http.has_object(&missing).await.unwrap());

    // HEAD: the length without the body.
    let head = raw(origin.addr(), "HEAD", &object_path(&fx.big)).await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.content_length(), Some(BIG_LEN as u64));
    assert!(head.body().is_empty());

    for (path, want) in [
        ("/sites/docs/../docs/current", 400),
        ("/sites/%2e%2e/current", 400),
        ("/objects//x", 400),
        ("/index.html", 404),
        ("/", 404),
        ("/sites/docs/lock", 404),
        ("/hosts/DOCS.example.com", 404),
    ] {
        assert_eq!(
            raw(origin.addr(), "GET", path).await.status(),
            want,
            "{path}"
        );
    }
    // A record the store cannot read is a store error: 500, not "not found".
    let broken = fx.store.root().join("sites/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("current"), b"{not json").unwrap();
    assert_eq!(
        raw(origin.addr(), "GET", "/sites/broken/current")
            .await
            .status(),
        500
    );
    assert!(matches!(
        http.get_current("broken").await,
        Err(StoreError::Status { status: 500, .. })
    ));

    let post = raw(origin.addr(), "POST", "/sites/docs/current").await;
    assert_eq!(post.status(), 405);
    assert!(
        post.head()
            .to_ascii_lowercase()
            .contains("allow: get, head")
    );
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_matching_requests() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    http.get_host(HOST).await.unwrap(); // warm the connection pool

    origin
        .set_rules(vec![
            Rule::new(Action::Latency {
                ms: 600,
                jitter_ms: 0,
            })
            .path("sites/docs/current"),
            Rule::new(Action::Latency {
                ms: 150,
                jitter_ms: 100,
            })
            .kind(Kind::Record),
        ])
        .unwrap();
    let t = Instant::now();
    assert!(http.get_current(SITE).await.unwrap().is_some());
    let slow = t.elapsed();
    assert!(slow >= Duration::from_millis(600), "{slow:?}");

    let t = Instant::now();
    http.get_deploy(SITE, &fx.deploys[0].id)
        .await
        .unwrap()
        .unwrap();
    let jittered = t.elapsed();
    assert!(jittered >= Duration::from_millis(150), "{jittered:?}");

    let t = Instant::now();
    http.get_host(HOST).await.unwrap().unwrap();
    let other = t.elapsed();
    assert!(
        other < Duration::from_millis(600),
        "an unmatched path waited {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rule_answers_its_status_and_body() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    let client = Client::new(&origin);
    let (blob, _) = fx.small_blob();

    origin
        .set_rules(vec![
            Rule::new(Action::Status {
                code: 503,
                body: Some("origin busy".into()),
            })
            .path("objects/"),
        ])
        .unwrap();
    let a = client.get(&object_path(&blob)).await.unwrap();
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.text(), "origin busy");
    match http.get_object(&blob).await {
        Err(StoreError::Status { status: 503, .. }) => {}
        other => panic!("expected a 503, got {other:?}"),
    }
    assert!(
        http.get_current(SITE).await.unwrap().is_some(),
        "other paths pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_closes_the_connection_without_a_response() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    let client = Client::new(&origin);
    origin
        .set_rules(vec![Rule::new(Action::Reset).path("sites/docs/current")])
        .unwrap();

    let r = raw(origin.addr(), "GET", "/sites/docs/current").await;
    assert!(r.bytes.is_empty(), "no response byte: {:?}", r.bytes);
    let err = r.error.expect("a TCP reset, not a clean close");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    let t = Instant::now();
    assert!(client.get("/sites/docs/current").await.is_err());
    assert!(t.elapsed() < 5 * SECOND);
    match http.get_current(SITE).await {
        Err(StoreError::Http { .. }) => {}
        other => panic!("expected a transport error, got {other:?}"),
    }
    // The origin itself is fine: the next request on another path is served.
    assert!(http.get_host(HOST).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_holds_until_the_client_gives_up() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    origin
        .set_rules(vec![
            Rule::new(Action::Hang { max_ms: Some(300) }).path("hosts/"),
            Rule::new(Action::Hang { max_ms: None }).path("sites/docs/current"),
        ])
        .unwrap();

    let http = http_store(&origin, Duration::from_millis(400));
    let t = Instant::now();
    match http.get_current(SITE).await {
        Err(StoreError::Timeout { .. }) => {}
        other => panic!("expected a client timeout, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_millis(400));

    // A bounded hang ends in a reset, with nothing sent.
    let t = Instant::now();
    let r = raw(origin.addr(), "GET", &format!("/hosts/{HOST}")).await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(r.bytes.is_empty());
    assert!(r.error.is_some());

    // Shutdown ends a hang at once instead of waiting out its 10 minutes.
    let addr = origin.addr();
    let before = origin.counts().path("sites/docs/current");
    let pending = tokio::spawn(async move { raw(addr, "GET", "/sites/docs/current").await });
    // Shut down once the request has reached the origin (it is counted as it arrives).
    let reached = Instant::now();
    while origin.counts().path("sites/docs/current") == before {
        assert!(
            reached.elapsed() < 5 * SECOND,
            "the request never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    origin.shutdown().await;
    assert!(t.elapsed() < 3 * SECOND, "shutdown took {:?}", t.elapsed());
    let r = pending.await.unwrap();
    assert!(r.bytes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_sends_less_than_the_content_length() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    let client = Client::new(&origin);
    let big = fx.blobs[&fx.big].clone();
    origin
        .set_rules(vec![
            Rule::new(Action::Truncate {
                bytes: Some(300_000),
                fraction: None,
            })
            .kind(Kind::Blob),
            Rule::new(Action::Truncate {
                bytes: None,
                fraction: Some(0.5),
            })
            .path("sites/docs/current"),
        ])
        .unwrap();

    // Exactly the first 300,000 bytes (more than one store chunk) after a full-length head.
    let r = raw(origin.addr(), "GET", &object_path(&fx.big)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(BIG_LEN as u64));
    assert_eq!(r.body().len(), 300_000);
    assert_eq!(r.body(), &big[..300_000]);

    let a = client.get(&object_path(&fx.big)).await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_err(), "the client sees the body cut short");
    match http.get_object(&fx.big).await {
        Err(StoreError::Http { .. }) => {}
        other => panic!("expected a body error, got {other:?}"),
    }
    let streamed = http.open_object(&fx.big).await.unwrap().unwrap();
    assert_eq!(streamed.len, Some(BIG_LEN as u64));
    assert!(read_stream(streamed).await.is_err());

    // A record cut in half.
    let full = raw(origin.addr(), "GET", "/sites/docs/history").await;
    let r = raw(origin.addr(), "GET", "/sites/docs/current").await;
    let len = r.content_length().unwrap();
    assert!(len > 0);
    assert_eq!(r.body().len() as u64, len / 2);
    assert!(full.body().len() as u64 == full.content_length().unwrap());
    assert!(matches!(
        http.get_current(SITE).await,
        Err(StoreError::Http { .. })
    ));
    // Trees are not blobs: served whole.
    let (tree, bytes) = fx.trees.iter().next().unwrap();
    assert_eq!(&http.get_object(tree).await.unwrap().unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_changes_one_byte_and_keeps_the_length() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    let client = Client::new(&origin);
    let (small, small_bytes) = fx.small_blob();
    let big = fx.blobs[&fx.big].clone();
    origin
        .set_rules(vec![
            Rule::new(Action::Flip {
                offset: Some(400_000),
            })
            .path(&object_path(&fx.big)),
            Rule::new(Action::Flip { offset: None }).kind(Kind::Blob),
        ])
        .unwrap();

    let diff = |got: &[u8], want: &[u8]| -> Vec<usize> {
        assert_eq!(got.len(), want.len(), "same length");
        (0..got.len()).filter(|&i| got[i] != want[i]).collect()
    };
    let a = client.get(&object_path(&small)).await.unwrap();
    assert_eq!(a.content_length(), Some(small_bytes.len() as u64));
    let got = a.body.unwrap();
    let mid = small_bytes.len() / 2;
    assert_eq!(diff(&got, &small_bytes), [mid]);
    assert_eq!(got[mid], small_bytes[mid] ^ 0xff);

    let a = client.get(&object_path(&fx.big)).await.unwrap();
    assert_eq!(diff(&a.body.unwrap(), &big), [400_000]);

    for hash in [small, fx.big] {
        match http.get_object(&hash).await {
            Err(StoreError::Corrupt { hash: h }) => assert_eq!(h, hash),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_rule_turns_on_and_off_on_schedule() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let client = Client::new(&origin);
    origin
        .set_rules(vec![
            Rule::new(status(503))
                .path("sites/docs/current")
                .flap(Duration::from_millis(300), Duration::from_millis(300)),
        ])
        .unwrap();

    // Poll, recording each change of state, until on -> off -> on was seen.
    let start = Instant::now();
    let mut states: Vec<(bool, Duration)> = Vec::new();
    while start.elapsed() < 8 * SECOND {
        let on = client.get("/sites/docs/current").await.unwrap().status
            == StatusCode::SERVICE_UNAVAILABLE;
        if states.last().is_none_or(|(last, _)| *last != on) {
            states.push((on, start.elapsed()));
        }
        if states.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen: Vec<bool> = states.iter().map(|(on, _)| *on).collect();
    assert!(seen.len() >= 4, "states seen: {states:?}");
    assert!(seen.windows(2).all(|w| w[0] != w[1]));
    // Each full phase (between two changes) lasted about its 300 ms.
    let phase = states[2].1 - states[1].1;
    assert!(
        phase >= Duration::from_millis(200) && phase <= Duration::from_millis(1000),
        "{states:?}"
    );

    origin.heal();
    for _ in 0..10 {
        assert_eq!(
            client.get("/sites/docs/current").await.unwrap().status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_rules_tell_trees_blobs_pointers_and_records_apart() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    let is_500 =
        |r: Result<_, StoreError>| matches!(r, Err(StoreError::Status { status: 500, .. }));

    origin
        .set_rules(vec![Rule::new(status(500)).kind(Kind::Tree)])
        .unwrap();
    for tree in fx.trees.keys() {
        assert!(
            is_500(http.get_object(tree).await.map(|_| ())),
            "tree {tree}"
        );
    }
    for (blob, bytes) in &fx.blobs {
        assert_eq!(&http.get_object(blob).await.unwrap().unwrap(), bytes);
    }
    assert!(http.get_current(SITE).await.unwrap().is_some());
    // A missing object has no kind: a kind rule does not apply, it is simply not found.
    assert_eq!(http.get_object(&Hash::of(b"missing")).await.unwrap(), None);

    origin
        .set_rules(vec![Rule::new(status(500)).kind(Kind::Blob)])
        .unwrap();
    for tree in fx.trees.keys() {
        http.get_object(tree).await.unwrap().unwrap();
    }
    for blob in fx.blobs.keys() {
        assert!(
            is_500(http.get_object(blob).await.map(|_| ())),
            "blob {blob}"
        );
    }

    origin
        .set_rules(vec![Rule::new(status(500)).kind(Kind::Pointer)])
        .unwrap();
    assert!(is_500(http.get_current(SITE).await.map(|_| ())));
    assert!(is_500(http.get_host(HOST).await.map(|_| ())));
    assert_eq!(http.list_deploys(SITE).await.unwrap(), fx.deploys);

    origin
        .set_rules(vec![Rule::new(status(500)).kind(Kind::Record)])
        .unwrap();
    assert!(is_500(http.list_deploys(SITE).await.map(|_| ())));
    assert!(is_500(
        http.get_deploy(SITE, &fx.deploys[0].id).await.map(|_| ())
    ));
    assert!(http.get_current(SITE).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_applying_rule_wins_and_probability_is_a_share() {
    let fx = fixture().await;
    let origin = start_with(
        &fx,
        ChaosOptions {
            seed: Some(42),
            ..ChaosOptions::default()
        },
    )
    .await;
    let client = Client::new(&origin);
    origin
        .set_rules(vec![
            Rule::new(status(500)).path("sites/").probability(0.0),
            Rule::new(status(502))
                .path("sites/docs/current")
                .probability(0.5),
            Rule::new(status(503)).path("sites/"),
        ])
        .unwrap();
    let mut by_status = BTreeMap::new();
    for _ in 0..200 {
        let s = client
            .get("/sites/docs/current")
            .await
            .unwrap()
            .status
            .as_u16();
        *by_status.entry(s).or_insert(0) += 1;
    }
    assert_eq!(by_status.keys().copied().collect::<Vec<_>>(), [502, 503]);
    assert!((60..=140).contains(&by_status[&502]), "{by_status:?}");
    assert_eq!(
        client.get("/sites/docs/history").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoint_replaces_reads_and_heals_rules() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let client = Client::new(&origin);
    let rules = r#"[
        {"path": "sites/docs/current", "action": {"type": "status", "code": 503, "body": "busy"}},
        {"kind": "tree", "probability": 0.5, "flap": {"on_ms": 100, "off_ms": 900},
         "action": {"type": "latency", "ms": 10, "jitter_ms": 5}}
    ]"#;

    let put = client
        .request(Method::PUT, "/_chaos/rules", &[], rules)
        .await
        .unwrap();
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    let want: serde_json::Value = serde_json::from_str(rules).unwrap();
    let got: Vec<Rule> = serde_json::from_slice(put.body.as_ref().unwrap()).unwrap();
    assert_eq!(got, origin.rules());
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].kind, None);
    assert_eq!(got[1].probability, 0.5);
    let read = client.get("/_chaos/rules").await.unwrap();
    assert_eq!(read.status, StatusCode::OK);
    let read: serde_json::Value = serde_json::from_slice(&read.body.unwrap()).unwrap();
    assert_eq!(read[0]["path"], want[0]["path"]);
    assert_eq!(read[0]["action"], want[0]["action"]);
    assert_eq!(read[0]["probability"], 1.0, "defaults are spelled out");
    assert_eq!(read[1]["flap"], want[1]["flap"]);
    let a = client.get("/sites/docs/current").await.unwrap();
    assert_eq!((a.status.as_u16(), a.text().as_str()), (503, "busy"));

    // Refused lists leave the installed one in place.
    for bad in [
        "not json",
        r#"[{"action": {"type": "status", "code": 99}}]"#,
        r#"[{"action": {"type": "boom"}}]"#,
    ] {
        let r = client
            .request(Method::PUT, "/_chaos/rules", &[], bad)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        let err: serde_json::Value = serde_json::from_slice(&r.body.unwrap()).unwrap();
        assert!(err["error"].is_string(), "{err}");
        assert_eq!(origin.rules().len(), 2);
    }

    let del = client
        .request(Method::DELETE, "/_chaos/rules", &[], "")
        .await
        .unwrap();
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert!(origin.rules().is_empty());
    assert_eq!(
        client.get("/_chaos/rules").await.unwrap().text().trim(),
        "[]"
    );
    assert_eq!(
        client.get("/sites/docs/current").await.unwrap().status,
        StatusCode::OK
    );

    assert_eq!(
        client.get("/_chaos/nothing").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client
            .request(Method::POST, "/_chaos/rules", &[], "[]")
            .await
            .unwrap()
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Control requests are not origin requests: only the two origin GETs were counted.
    assert_eq!(origin.counts().total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_token_is_required_when_set() {
    let fx = fixture().await;
    let empty = loadtest::chaos::ChaosOrigin::start_with(
        fx.store(),
        "127.0.0.1:0".parse().unwrap(),
        ChaosOptions {
            control_token: Some(String::new()),
            ..ChaosOptions::default()
        },
    )
    .await;
    assert!(matches!(empty, Err(ChaosError::EmptyToken)));

    let origin = start_with(
        &fx,
        ChaosOptions {
            control_token: Some("s3cret".into()),
            ..ChaosOptions::default()
        },
    )
    .await;
    let client = Client::new(&origin);
    for headers in [
        &[][..],
        &[("authorization", "Bearer wrong")][..],
        &[("authorization", "Bearer s3cre")][..],
        &[("authorization", "Basic s3cret")][..],
    ] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let r = client
                .request(method.clone(), "/_chaos/rules", headers, "[]")
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {headers:?}");
            assert!(r.headers.contains_key("www-authenticate"));
        }
        let r = client.get("/_chaos/counts").await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let auth = [("authorization", "Bearer s3cret")];
    let put = client
        .request(
            Method::PUT,
            "/_chaos/rules",
            &auth,
            r#"[{"path": "hosts/", "action": {"type": "status", "code": 500}}]"#,
        )
        .await
        .unwrap();
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(origin.rules().len(), 1);
    let get = client
        .request(Method::GET, "/_chaos/counts", &auth, "")
        .await
        .unwrap();
    assert_eq!(get.status, StatusCode::OK);
    // The origin's own paths need no token.
    assert_eq!(
        client.get("/sites/docs/current").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_per_path() {
    let fx = fixture().await;
    let origin = start(&fx).await;
    let http = http_store(&origin, 5 * SECOND);
    let client = Client::new(&origin);
    let (blob, _) = fx.small_blob();

    http.get_current(SITE).await.unwrap(); // before the reset: not counted
    origin.reset_counts();
    assert_eq!(origin.counts(), Counts::default());

    for _ in 0..3 {
        http.get_current(SITE).await.unwrap().unwrap();
    }
    for _ in 0..2 {
        http.get_object(&blob).await.unwrap().unwrap();
    }
    assert!(http.has_object(&blob).await.unwrap()); // HEAD counts too
    assert_eq!(http.get_host("nosuch.example.com").await.unwrap(), None);
    assert_eq!(raw(origin.addr(), "GET", "/sites/../x").await.status(), 400);
    // A faulted request reached the origin all the same.
    origin
        .set_rules(vec![Rule::new(Action::Reset).path("sites/docs/history")])
        .unwrap();
    assert!(http.list_deploys(SITE).await.is_err());

    let object_key = object_path(&blob)[1..].to_owned();
    let want = BTreeMap::from([
        ("sites/docs/current".to_owned(), 3),
        (object_key.clone(), 3),
        ("hosts/nosuch.example.com".to_owned(), 1),
        ("sites/../x".to_owned(), 1),
        ("sites/docs/history".to_owned(), 1),
    ]);
    let counts = origin.counts();
    assert_eq!(counts.paths, want);
    assert_eq!(counts.total, 9);
    assert_eq!(counts.other, 0);
    assert_eq!(counts.path(&object_path(&blob)), 3);

    let over_http = client.get("/_chaos/counts").await.unwrap();
    assert_eq!(over_http.status, StatusCode::OK);
    let parsed: Counts = serde_json::from_slice(&over_http.body.unwrap()).unwrap();
    assert_eq!(parsed, counts);

    let del = client
        .request(Method::DELETE, "/_chaos/counts", &[], "")
        .await
        .unwrap();
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(origin.counts(), Counts::default());
}

/// The binary: prints its address, serves with `--rules` and `--control-token`, and exits
/// cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serves_with_rules_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;

    let fx = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"[{"path": "sites/docs/current", "action": {"type": "status", "code": 503}}]"#,
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("chaos-origin")
        .arg("--upstream")
        .arg(fx.store.root())
        .args(["--listen", "127.0.0.1:0", "--control-token", "t0ken"])
        .arg("--rules")
        .arg(&rules)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(10 * SECOND, lines.next_line())
        .await
        .expect("the origin prints its address")
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("chaos-origin listening on http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_ne!(addr.port(), 0);

    assert_eq!(raw(addr, "GET", "/sites/docs/current").await.status(), 503);
    assert_eq!(raw(addr, "GET", "/sites/docs/history").await.status(), 200);
    assert_eq!(raw(addr, "GET", "/_chaos/rules").await.status(), 401);

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(10 * SECOND, child.wait())
        .await
        .expect("the origin exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
