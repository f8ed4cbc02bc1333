//! A store in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Ceph RGW, Garage), read
//! and write, through `object_store`'s S3 client: the same layout as the local store under
//! `s3://BUCKET/PREFIX`.
//!
//! - Reads answer found / not found / error like every backend: 200 is found, 404 on a key
//!   is not found, and anything else (403, 5xx, a bucket that does not exist, a timeout) is
//!   an error. `get_object` verifies the hash; `open_object` streams.
//! - Objects are written with `If-None-Match: *` (`PutMode::Create`), so an existing object
//!   is never rewritten; files above [`S3Options::multipart_threshold`] go up in parts, hashed
//!   as they are read, and the upload is aborted (nothing becomes visible) if the hash differs.
//! - `current` moves by compare-and-swap: `If-Match` on the ETag read with the pointer, or
//!   `If-None-Match: *` for a site's first deploy. Before its first write, a handle probes
//!   that the service honours both conditions and refuses to write to one that does not.
//! - Credentials come from the standard `AWS_*` variables (or a web identity / container
//!   credential source); without any, opening fails naming the missing variable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpService};
use object_store::path::Path as KeyPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::{
    GcState, ObjectBody, ObjectInfo, Store, StoreError, check_current, check_deploy, check_host,
    layout, parse_record, sort_deploys,
};
use crate::Hash;
use crate::records::{
    CurrentPointer, DeployRecord, HostIndex, HostRecord, normalize_host, validate_deploy_id,
    validate_site,
};

/// How to reach an S3-compatible service. Unset fields fall back to the `AWS_*` variables
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`), then to AWS's defaults.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// `https://s3.eu-west-1.amazonaws.com`, `https://ACCOUNT.r2.cloudflarestorage.com`,
    /// `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow a plain-http endpoint.
    pub allow_http: Option<bool>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`, the default) rather than virtual-hosted
    /// (`BUCKET.ENDPOINT/KEY`).
    pub path_style: Option<bool>,
    pub connect_timeout: Duration,
    /// Longest wait between two reads of a response (not a whole-transfer deadline: large
    /// objects stream, and the edge sets its own deadlines around them).
    pub read_timeout: Duration,
    /// Retries of a failed request inside the S3 client (the edge retries on its own: 0).
    pub retries: usize,
    /// Files larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of one part (at least 5 MiB, S3's minimum).
    pub part_size: usize,
    /// Parts in flight per upload.
    pub part_concurrency: usize,
    /// Static credentials given in code (tests, embedding); `None`: from `AWS_*`.
    pub credentials: Option<(String, String)>,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            allow_http: None,
            path_style: None,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(30),
            retries: 3,
            multipart_threshold: 32 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
            part_concurrency: 4,
            credentials: None,
        }
    }
}

/// Largest pointer, host or deploy record read.
const MAX_RECORD: u64 = 1024 * 1024;

#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    s3: Arc<dyn ObjectStore>,
    bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    prefix: String,
    endpoint: String,
    requests: Arc<AtomicU64>,
    /// Set once the service has shown that it honours conditional writes.
    probed: tokio::sync::OnceCell<()>,
    /// Set once a listing has shown that the bucket exists (some services answer a key in a
    /// missing bucket with NoSuchKey, which must not read as "not found").
    bucket_seen: tokio::sync::OnceCell<()>,
    opts: S3Options,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location())
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

/// Counts every HTTP request the S3 client sends (retries, list pages and parts included).
#[derive(Debug)]
struct Counting {
    count: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    count: Arc<AtomicU64>,
}

impl HttpConnector for Counting {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = object_store::client::ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            count: self.count.clone(),
        }))
    }
}

#[async_trait]
impl HttpService for CountingService {
    async fn call(
        &self,
        req: object_store::client::HttpRequest,
    ) -> Result<object_store::client::HttpResponse, HttpError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.execute(req).await
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

impl S3Store {
    /// A store at `s3://BUCKET/PREFIX` (`rest` is `BUCKET/PREFIX`). Does no I/O: a bucket
    /// that does not exist or credentials the service refuses show on the first request.
    pub fn open(rest: &str, opts: S3Options) -> Result<S3Store, StoreError> {
        let location = format!("s3://{rest}");
        let loc_err = |why: String| StoreError::Location {
            location: location.clone(),
            why,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(loc_err(
                "names no bucket (expected s3://BUCKET or s3://BUCKET/PREFIX)".into(),
            ));
        }
        let bucket_ok = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !bucket_ok {
            return Err(loc_err(format!(
                "has an invalid bucket name {bucket:?} (3 to 63 of a-z, 0-9, `-`, `.`)"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..")
            || prefix.contains("//")
            || prefix.contains('\\')
        {
            return Err(loc_err(format!("has an invalid prefix {prefix:?}")));
        }
        // Credentials: static keys, or a source the S3 client resolves itself. Checked here so
        // that a publish without them fails before it reads or writes anything.
        let anonymous = env_true("AWS_SKIP_SIGNATURE");
        let given = opts.credentials.is_some();
        let has_key = given || env_set("AWS_ACCESS_KEY_ID");
        let has_secret = given || env_set("AWS_SECRET_ACCESS_KEY");
        let other_source = env_set("AWS_WEB_IDENTITY_TOKEN_FILE")
            || env_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            || env_set("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        match (has_key, has_secret) {
            (true, false) => {
                return Err(loc_err(
                    "needs credentials: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
                        .into(),
                ));
            }
            (false, true) => {
                return Err(loc_err(
                    "needs credentials: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"
                        .into(),
                ));
            }
            (false, false) if !anonymous && !other_source => {
                return Err(loc_err(
                    "needs credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or AWS_WEB_IDENTITY_TOKEN_FILE"
                        .into(),
                ));
            }
            _ => {}
        }
        // reqwest is built without a crypto provider of its own: it uses the process default,
        // which must be ring (the provider of everything else in the node).
        let _ = rustls::crypto::ring::default_provider().install_default();

        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some((key, secret)) = &opts.credentials {
            b = b.with_access_key_id(key).with_secret_access_key(secret);
        }
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &opts.region {
            b = b.with_region(r);
        }
        if let Some(v) = opts.allow_http {
            b = b.with_allow_http(v);
        }
        if let Some(v) = opts.path_style {
            b = b.with_virtual_hosted_style_request(!v);
        }
        let endpoint = b
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| "AWS S3".into());
        if endpoint.starts_with("http://") {
            let allowed = opts
                .allow_http
                .unwrap_or_else(|| env_true("AWS_ALLOW_HTTP"));
            if !allowed {
                return Err(loc_err(format!(
                    "endpoint {endpoint} is plain http: set AWS_ALLOW_HTTP=true or `store.s3.allow_http = true` (for a loopback or private endpoint only)"
                )));
            }
        }
        let mut client = ClientOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout_disabled()
            .with_read_timeout(opts.read_timeout)
            .with_pool_idle_timeout(Duration::from_secs(60));
        if let Some(v) = opts.allow_http {
            client = client.with_allow_http(v);
        } else if env_true("AWS_ALLOW_HTTP") {
            client = client.with_allow_http(true);
        }
        let requests = Arc::new(AtomicU64::new(0));
        let retry = RetryConfig {
            max_retries: opts.retries,
            retry_timeout: Duration::from_secs(30),
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
        };
        let s3 = b
            .with_client_options(client)
            .with_retry(retry)
            .with_http_connector(Counting {
                count: requests.clone(),
            })
            .build()
            .map_err(|e| loc_err(format!("cannot be opened: {e}")))?;
        Ok(S3Store {
            inner: Arc::new(Inner {
                s3: Arc::new(s3),
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                endpoint,
                requests,
                probed: tokio::sync::OnceCell::new(),
                bucket_seen: tokio::sync::OnceCell::new(),
                opts,
            }),
        })
    }

    /// HTTP requests sent so far (every retry, list page and upload part counts).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }
}

/// What `object_store` said, classified.
enum Fault {
    NotFound,
    /// `If-None-Match: *` found an object, or `If-Match` found another version.
    Condition,
    Other(StoreError),
}

impl Inner {
    fn key(&self, rel: &str) -> KeyPath {
        if self.prefix.is_empty() {
            KeyPath::from(rel)
        } else {
            KeyPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn url(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}/{rel}", self.bucket)
        } else {
            format!("s3://{}/{}/{rel}", self.bucket, self.prefix)
        }
    }

    /// Classifies an error of the request `op` on `rel`.
    fn fault(&self, op: &'static str, rel: &str, e: object_store::Error) -> Fault {
        use object_store::Error as E;
        let text = e.to_string();
        let url = self.url(rel);
        let code = s3_code(&text);
        let remote = |why: String, e: object_store::Error| {
            Fault::Other(StoreError::Remote {
                op,
                url: url.clone(),
                why,
                source: Some(Box::new(e)),
            })
        };
        match e {
            // S3 answers 404 for a missing bucket too: that is no "not found" of a key.
            E::NotFound { .. } if code.as_deref() == Some("NoSuchBucket") => remote(
                format!(
                    "bucket {:?} does not exist at {}",
                    self.bucket, self.endpoint
                ),
                e,
            ),
            E::NotFound { .. } => Fault::NotFound,
            E::AlreadyExists { .. } | E::Precondition { .. } => Fault::Condition,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => remote(denied(code), e),
            e if matches!(status_of(&text), Some(401 | 403)) => remote(denied(code), e),
            e => match http_kind(&e) {
                Some(HttpErrorKind::Timeout) => {
                    Fault::Other(StoreError::Timeout { url, after: None })
                }
                Some(HttpErrorKind::Connect) => remote(
                    format!("cannot connect to the endpoint {}", self.endpoint),
                    e,
                ),
                _ => match status_of(&text) {
                    Some(status) => Fault::Other(StoreError::Status { url, status }),
                    None => Fault::Other(StoreError::Http {
                        url,
                        source: Box::new(e),
                    }),
                },
            },
        }
    }

    /// "Not found" for `rel`, once the bucket is known to exist (one listing per handle).
    async fn not_found<T>(&self, v: T) -> Result<T, StoreError> {
        self.bucket_seen
            .get_or_try_init(|| async {
                let prefix = self.key("sites");
                match self.s3.list_with_delimiter(Some(&prefix)).await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let text = e.to_string();
                        if matches!(e, object_store::Error::NotFound { .. })
                            || s3_code(&text).as_deref() == Some("NoSuchBucket")
                        {
                            return Err(StoreError::Remote {
                                op: "LIST",
                                url: self.url(""),
                                why: format!(
                                    "bucket {:?} does not exist at {}",
                                    self.bucket, self.endpoint
                                ),
                                source: Some(Box::new(e)),
                            });
                        }
                        Err(self.error("LIST", "sites/", e))
                    }
                }
            })
            .await?;
        Ok(v)
    }

    fn error(&self, op: &'static str, rel: &str, e: object_store::Error) -> StoreError {
        match self.fault(op, rel, e) {
            Fault::Other(e) => e,
            Fault::NotFound => StoreError::Status {
                url: self.url(rel),
                status: 404,
            },
            Fault::Condition => StoreError::Status {
                url: self.url(rel),
                status: 412,
            },
        }
    }

    /// GETs a whole key of at most `limit` bytes, with its version. `Ok(None)` on 404.
    async fn get_bytes(
        &self,
        rel: &str,
        limit: u64,
    ) -> Result<Option<(Bytes, UpdateVersion)>, StoreError> {
        let key = self.key(rel);
        let res = match self.s3.get(&key).await {
            Ok(r) => r,
            Err(e) => {
                return match self.fault("GET", rel, e) {
                    Fault::NotFound => self.not_found(None).await,
                    Fault::Other(e) => Err(e),
                    Fault::Condition => Err(self.error_status(rel, 412)),
                };
            }
        };
        if res.meta.size > limit {
            return Err(StoreError::Remote {
                op: "GET",
                url: self.url(rel),
                why: format!(
                    "{} bytes is more than the {limit}-byte limit",
                    res.meta.size
                ),
                source: None,
            });
        }
        let version = UpdateVersion {
            e_tag: res.meta.e_tag.clone(),
            version: res.meta.version.clone(),
        };
        let want = res.meta.size;
        let bytes = res.bytes().await.map_err(|e| self.error("GET", rel, e))?;
        if bytes.len() as u64 != want {
            return Err(StoreError::Truncated {
                url: self.url(rel),
                got: bytes.len() as u64,
                want,
            });
        }
        Ok(Some((bytes, version)))
    }

    fn error_status(&self, rel: &str, status: u16) -> StoreError {
        StoreError::Status {
            url: self.url(rel),
            status,
        }
    }

    /// PUTs `data` at `rel` under `mode`. `Ok(false)` when the condition failed.
    async fn put(&self, rel: &str, data: Bytes, mode: PutMode) -> Result<bool, StoreError> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .s3
            .put_opts(&self.key(rel), PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.fault("PUT", rel, e) {
                Fault::Condition => Ok(false),
                Fault::NotFound => self
                    .not_found(())
                    .await
                    .and(Err(self.error_status(rel, 404))),
                Fault::Other(e) => Err(e),
            },
        }
    }

    /// Before the first write: does the service honour `If-None-Match: *` and `If-Match`?
    /// A service that ignores them would let two publishes overwrite each other's pointer
    /// silently, so it is refused. Writes only under `tmp/`, and removes what it wrote.
    async fn probe(&self) -> Result<(), StoreError> {
        self.probed
            .get_or_try_init(|| async {
                // A service may create a missing bucket on a PUT, or answer NoSuchKey for
                // it: make sure it is there first.
                self.not_found(()).await?;
                let rel = format!("tmp/cas-probe-{:016x}", fastrand::u64(..));
                let refuse = |why: &str| StoreError::NoConditionalWrites {
                    store: self.url(""),
                    why: why.to_owned(),
                };
                if !self
                    .put(&rel, Bytes::from_static(b"1"), PutMode::Create)
                    .await?
                {
                    return Err(refuse(
                        "a create-only write of a fresh key was refused as if the key existed",
                    ));
                }
                let second = self
                    .put(&rel, Bytes::from_static(b"2"), PutMode::Create)
                    .await;
                let stale = UpdateVersion {
                    e_tag: Some("\"00000000000000000000000000000000\"".into()),
                    version: None,
                };
                let third = match &second {
                    Ok(false) => {
                        self.put(&rel, Bytes::from_static(b"3"), PutMode::Update(stale))
                            .await
                    }
                    _ => Ok(false),
                };
                let _ = self.s3.delete(&self.key(&rel)).await;
                if second? {
                    return Err(refuse(
                        "`If-None-Match: *` was ignored: an existing key was overwritten",
                    ));
                }
                if third? {
                    return Err(refuse(
                        "`If-Match` was ignored: a write with a stale ETag succeeded",
                    ));
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Reads a JSON record and its version.
    async fn get_record<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<Option<(T, UpdateVersion)>, StoreError> {
        match self.get_bytes(rel, MAX_RECORD).await? {
            None => Ok(None),
            Some((b, v)) => Ok(Some((parse_record(rel, &b)?, v))),
        }
    }

    /// Replaces the record at `rel` if it still has `version` (`None`: if there is none).
    /// `Ok(false)` when someone else wrote it first.
    async fn swap_record(
        &self,
        rel: &str,
        version: Option<UpdateVersion>,
        json: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mode = match version {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        self.put(rel, Bytes::from(json), mode).await
    }

    /// Adds `id` to the site's history (for HTTP readers), compare-and-swap in a loop.
    async fn append_history(&self, site: &str, id: &str) -> Result<(), StoreError> {
        let rel = layout::history(site);
        for _ in 0..20 {
            let (mut text, version) = match self.get_bytes(&rel, 16 * 1024 * 1024).await? {
                Some((b, v)) => (String::from_utf8_lossy(&b).into_owned(), Some(v)),
                None => (String::new(), None),
            };
            if text.lines().any(|l| l.trim() == id) {
                return Ok(());
            }
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(id);
            text.push('\n');
            if self.swap_record(&rel, version, text.into_bytes()).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(10..100))).await;
        }
        Err(StoreError::Remote {
            op: "PUT",
            url: self.url(&rel),
            why: "too many concurrent writers".into(),
            source: None,
        })
    }

    /// Every key under `rel/` (recursively).
    async fn list(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let prefix = self.key(rel);
        self.s3
            .list(Some(&prefix))
            .map_err(|e| self.error("LIST", rel, e))
            .try_collect()
            .await
    }
}

fn denied(code: Option<String>) -> String {
    let detail = code.map(|c| format!(" ({c})")).unwrap_or_default();
    format!(
        "access denied{detail}: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the bucket's policy"
    )
}

/// The kind of transport error behind `e`, if it is one.
fn http_kind(e: &object_store::Error) -> Option<HttpErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        cause = c.source();
    }
    None
}

/// The S3 error code (`<Code>NoSuchBucket</Code>`) in an error's text, if any.
fn s3_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    (!code.is_empty() && code.len() < 64 && code.bytes().all(|c| c.is_ascii_alphanumeric()))
        .then(|| code.to_owned())
}

/// The HTTP status in `object_store`'s text ("...status code: 503 Service Unavailable...").
fn status_of(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        self.inner.url("").trim_end_matches('/').to_owned()
    }

    fn requests(&self) -> Option<u64> {
        Some(S3Store::requests(self))
    }

    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        let rel = layout::object(hash);
        let Some((bytes, _)) = self.inner.get_bytes(&rel, super::MAX_WHOLE_OBJECT).await? else {
            return Ok(None);
        };
        if Hash::of(&bytes) != *hash {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        Ok(Some(bytes))
    }

    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        let rel = layout::object(hash);
        let res = match self.inner.s3.get(&self.inner.key(&rel)).await {
            Ok(r) => r,
            Err(e) => {
                return match self.inner.fault("GET", &rel, e) {
                    Fault::NotFound => self.inner.not_found(None).await,
                    Fault::Other(e) => Err(e),
                    Fault::Condition => Err(self.inner.error_status(&rel, 412)),
                };
            }
        };
        let len = Some(res.meta.size);
        let inner = self.inner.clone();
        let stream = res.into_stream().map_err(move |e| {
            let err = inner.error("GET", &rel, e);
            let kind = match &err {
                StoreError::Timeout { .. } => std::io::ErrorKind::TimedOut,
                _ => std::io::ErrorKind::Other,
            };
            err.into_io(kind)
        });
        Ok(Some(ObjectBody {
            len,
            stream: stream.boxed(),
        }))
    }

    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        let rel = layout::object(hash);
        match self.inner.s3.head(&self.inner.key(&rel)).await {
            Ok(_) => Ok(true),
            Err(e) => match self.inner.fault("HEAD", &rel, e) {
                Fault::NotFound => self.inner.not_found(false).await,
                Fault::Other(e) => Err(e),
                Fault::Condition => Err(self.inner.error_status(&rel, 412)),
            },
        }
    }

    async fn put_object(&self, hash: &Hash, data: Bytes) -> Result<bool, StoreError> {
        if Hash::of(&data) != *hash {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        self.inner.probe().await?;
        // Create-only: an object that exists has these very bytes (its name is their hash).
        self.inner
            .put(&layout::object(hash), data, PutMode::Create)
            .await
    }

    async fn put_object_file(
        &self,
        hash: &Hash,
        path: &std::path::Path,
    ) -> Result<bool, StoreError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| StoreError::io("stat", path, e))?
            .len();
        if len <= self.inner.opts.multipart_threshold {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| StoreError::io("read", path, e))?;
            if Hash::of(&data) != *hash {
                return Err(StoreError::SourceChanged {
                    path: path.to_owned(),
                });
            }
            return self.put_object(hash, Bytes::from(data)).await;
        }
        // Large: skip the upload if it is there, else send parts while hashing what is read.
        if self.has_object(hash).await? {
            return Ok(false);
        }
        self.inner.probe().await?;
        let rel = layout::object(hash);
        let upload = self
            .inner
            .s3
            .put_multipart(&self.inner.key(&rel))
            .await
            .map_err(|e| self.inner.error("POST", &rel, e))?;
        let part = self.inner.opts.part_size.max(5 * 1024 * 1024);
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StoreError::io("open", path, e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let copied: Result<(), StoreError> = async {
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| StoreError::io("read", path, e))?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..n]);
                writer
                    .wait_for_capacity(self.inner.opts.part_concurrency.max(1))
                    .await
                    .map_err(|e| self.inner.error("PUT", &rel, e))?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        if let Err(e) = copied {
            let _ = writer.abort().await;
            return Err(e);
        }
        if Hash::from(hasher.finalize()) != *hash {
            // Nothing is visible until the upload completes: abort, and the key stays absent.
            let _ = writer.abort().await;
            return Err(StoreError::SourceChanged {
                path: path.to_owned(),
            });
        }
        writer
            .finish()
            .await
            .map_err(|e| self.inner.error("POST", &rel, e))?;
        Ok(true)
    }

    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        let host = normalize_host(host)?;
        let rel = layout::host(&host);
        match self.inner.get_record(&rel).await? {
            None => Ok(None),
            Some((h, _)) => Ok(Some(check_host(&host, h)?)),
        }
    }

    async fn put_host(&self, record: &HostRecord) -> Result<(), StoreError> {
        super::check("host record", record.validate())?;
        let rel = layout::host(&record.host);
        let json = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Record {
            key: rel.clone(),
            source: e.into(),
        })?;
        self.inner.probe().await?;
        self.inner
            .put(&rel, Bytes::from(json), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        validate_site(site)?;
        match self.inner.get_record(&layout::current(site)).await? {
            None => Ok(None),
            Some((c, _)) => Ok(Some(check_current(site, c)?)),
        }
    }

    async fn swap_current(
        &self,
        expected: Option<u64>,
        new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        super::check("current pointer", new.validate())?;
        self.inner.probe().await?;
        let rel = layout::current(&new.site);
        let read = self.inner.get_record::<CurrentPointer>(&rel).await?;
        let (found, version) = match read {
            Some((c, v)) => (Some(check_current(&new.site, c)?.seq), Some(v)),
            None => (None, None),
        };
        let conflict = |found| StoreError::Conflict {
            site: new.site.clone(),
            expected,
            found,
        };
        if found != expected {
            return Err(conflict(found));
        }
        let json = serde_json::to_vec_pretty(new).map_err(|e| StoreError::Record {
            key: rel.clone(),
            source: e.into(),
        })?;
        if self.inner.swap_record(&rel, version, json).await? {
            return Ok(());
        }
        // Someone moved it between our read and our write: report what it is now.
        let now = self
            .inner
            .get_record::<CurrentPointer>(&rel)
            .await?
            .map(|(c, _)| c.seq);
        Err(conflict(now))
    }

    async fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        super::check("deploy record", record.validate())?;
        let rel = layout::deploy(&record.site, &record.id);
        let json = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Record {
            key: rel.clone(),
            source: e.into(),
        })?;
        self.inner.probe().await?;
        if !self
            .inner
            .put(&rel, Bytes::from(json.clone()), PutMode::Create)
            .await?
        {
            // Records are never overwritten; the same record again is fine.
            let same = self
                .inner
                .get_bytes(&rel, MAX_RECORD)
                .await?
                .is_some_and(|(old, _)| old[..] == json[..]);
            if !same {
                return Err(StoreError::Record {
                    key: rel,
                    source: crate::records::RecordError::Mismatch {
                        expected: "a new deploy id".into(),
                        found: record.id.clone(),
                    },
                });
            }
        }
        self.inner.append_history(&record.site, &record.id).await
    }

    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        validate_site(site)?;
        validate_deploy_id(id)?;
        match self.inner.get_record(&layout::deploy(site, id)).await? {
            None => Ok(None),
            Some((d, _)) => Ok(Some(check_deploy(site, id, d)?)),
        }
    }

    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        validate_site(site)?;
        let metas = self.inner.list(&layout::deploys_dir(site)).await?;
        let ids: Vec<String> = metas
            .iter()
            .filter_map(|m| m.location.filename().map(str::to_owned))
            .filter(|id| validate_deploy_id(id).is_ok())
            .collect();
        let mut out: Vec<DeployRecord> = futures_util::stream::iter(ids)
            .map(|id| async move { self.get_deploy(site, &id).await })
            .buffer_unordered(16)
            .try_filter_map(|d| async move { Ok(d) })
            .try_collect()
            .await?;
        sort_deploys(&mut out);
        Ok(out)
    }

    async fn list_sites(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.inner.key("sites");
        let listed = self
            .inner
            .s3
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.inner.error("LIST", "sites/", e))?;
        let mut sites: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .filter(|s| validate_site(s).is_ok())
            .collect();
        sites.sort();
        Ok(sites)
    }

    async fn list_objects(&self) -> Result<Vec<ObjectInfo>, StoreError> {
        let metas = self.inner.list("objects").await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let hash: Hash = m.location.filename()?.parse().ok()?;
                Some(ObjectInfo {
                    hash,
                    size: m.size,
                    modified: u64::try_from(m.last_modified.timestamp()).unwrap_or(0),
                })
            })
            .collect())
    }

    async fn delete_object(&self, hash: &Hash) -> Result<(), StoreError> {
        self.inner.probe().await?;
        let rel = layout::object(hash);
        match self.inner.s3.delete(&self.inner.key(&rel)).await {
            Ok(()) => Ok(()),
            Err(e) => match self.inner.fault("DELETE", &rel, e) {
                Fault::NotFound => Ok(()),
                Fault::Other(e) => Err(e),
                Fault::Condition => Err(self.inner.error_status(&rel, 412)),
            },
        }
    }

    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        let rel = layout::HOST_INDEX;
        match self
            .inner
            .get_bytes(rel, super::MAX_HOST_INDEX_BYTES)
            .await?
        {
            None => Ok(None),
            Some((b, _)) => Ok(Some(super::check_host_index(parse_record(rel, &b)?)?)),
        }
    }

    async fn swap_host_index(
        &self,
        expected: Option<u64>,
        new: &HostIndex,
    ) -> Result<bool, StoreError> {
        super::check(layout::HOST_INDEX, new.validate())?;
        self.inner.probe().await?;
        let rel = layout::HOST_INDEX;
        let (found, version) = match self
            .inner
            .get_bytes(rel, super::MAX_HOST_INDEX_BYTES)
            .await?
        {
            Some((b, v)) => (Some(parse_record::<HostIndex>(rel, &b)?.version), Some(v)),
            None => (None, None),
        };
        if found != expected {
            return Ok(false);
        }
        let json = serde_json::to_vec(new).map_err(|e| StoreError::Record {
            key: rel.to_owned(),
            source: e.into(),
        })?;
        self.inner.swap_record(rel, version, json).await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let metas = self.inner.list("hosts").await?;
        let mut out = Vec::with_capacity(metas.len());
        for m in metas {
            let Some(name) = m.location.filename() else {
                continue;
            };
            if let Ok(host) = normalize_host(name)
                && host == name
                && let Some(r) = self.get_host(&host).await?
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn get_gc_state(&self) -> Result<Option<GcState>, StoreError> {
        Ok(self
            .inner
            .get_record::<GcState>(layout::GC_STATE)
            .await?
            .map(|(s, _)| s))
    }

    async fn swap_gc_state(
        &self,
        expected: Option<u64>,
        new: &GcState,
    ) -> Result<bool, StoreError> {
        self.inner.probe().await?;
        let rel = layout::GC_STATE;
        let read = self.inner.get_record::<GcState>(rel).await?;
        let (found, version) = match read {
            Some((s, v)) => (Some(s.version), Some(v)),
            None => (None, None),
        };
        if found != expected {
            return Ok(false);
        }
        let json = serde_json::to_vec_pretty(new).map_err(|e| StoreError::Record {
            key: rel.to_owned(),
            source: e.into(),
        })?;
        self.inner.swap_record(rel, version, json).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_parsing() {
        assert_eq!(
            s3_code("... <Error><Code>NoSuchBucket</Code><Message>x</Message>").as_deref(),
            Some("NoSuchBucket")
        );
        assert_eq!(s3_code("<Code></Code>"), None);
        assert_eq!(s3_code("no xml"), None);
        assert_eq!(
            status_of("Server returned non-2xx status code: 503 Service Unavailable: "),
            Some(503)
        );
        assert_eq!(status_of("status code: 99"), None);
        assert_eq!(status_of("nothing"), None);
    }
}
