//! A read-only store served over HTTP(S) by any static web server (nginx, a bucket's HTTP
//! endpoint, another edge): the same layout as the local store, fetched with GET.
//!
//! 200 is found, 404 and 410 are not found, anything else is an error; so is a timeout. Writes
//! are refused with [`StoreError::ReadOnly`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{
    ObjectBody, Store, StoreError, check_current, check_deploy, check_host, layout, parse_record,
    sort_deploys,
};
use crate::Hash;
use crate::records::{
    CurrentPointer, DeployRecord, HostIndex, HostRecord, normalize_host, validate_deploy_id,
    validate_site,
};

/// Timeouts and limits of the HTTP store's client.
#[derive(Debug, Clone)]
pub struct HttpStoreOptions {
    pub connect_timeout: Duration,
    /// From sending a request to receiving the response head.
    pub header_timeout: Duration,
    /// Whole-body deadline for records and whole-object reads.
    pub body_timeout: Duration,
    /// Idle connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// Largest pointer or deploy record accepted.
    pub max_record_bytes: usize,
    /// Sent as `Authorization` with every request (a parent edge's `Bearer TOKEN`); mark it
    /// sensitive (`HeaderValue::set_sensitive`) so that it never shows in `Debug` output.
    pub authorization: Option<http::HeaderValue>,
}

impl Default for HttpStoreOptions {
    fn default() -> Self {
        HttpStoreOptions {
            connect_timeout: Duration::from_secs(3),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 64,
            max_record_bytes: 1024 * 1024,
            authorization: None,
        }
    }
}

#[derive(Clone)]
pub struct HttpStore {
    base: Arc<str>,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    opts: Arc<HttpStoreOptions>,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStore")
            .field("base", &self.base)
            .finish()
    }
}

impl HttpStore {
    /// A store rooted at `base` (`http://host:port/path/`; a trailing slash is added).
    pub fn new(base: &str, opts: HttpStoreOptions) -> Result<HttpStore, StoreError> {
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let uri: http::Uri = base.parse().map_err(|_| StoreError::Location {
            location: base.clone(),
            why: "is not a valid URL".into(),
        })?;
        if uri.host().is_none() {
            return Err(StoreError::Location {
                location: base,
                why: "has no host".into(),
            });
        }
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(opts.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // No system roots: plain http still works; https fails with a clear error.
                tracing::warn!(error = %e, "no native TLS roots found; https stores will fail");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| StoreError::Location {
                        location: base.clone(),
                        why: format!("TLS setup failed: {e}"),
                    })?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(opts.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HttpStore {
            base: base.into(),
            client,
            opts: Arc::new(opts),
        })
    }

    fn url(&self, key: &str) -> String {
        format!("{}{}", self.base, key)
    }

    /// Sends a request and waits for the head. `Ok(None)` on 404/410.
    async fn send(
        &self,
        method: Method,
        key: &str,
    ) -> Result<Option<http::Response<hyper::body::Incoming>>, StoreError> {
        let url = self.url(key);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::USER_AGENT, "edge-origin-client");
        if let Some(auth) = &self.opts.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        let req = req.body(Empty::new()).map_err(|e| StoreError::Http {
            url: url.clone(),
            source: Box::new(e),
        })?;
        let resp = tokio::time::timeout(self.opts.header_timeout, self.client.request(req))
            .await
            .map_err(|_| StoreError::Timeout {
                url: url.clone(),
                after: Some(self.opts.header_timeout),
            })?
            .map_err(|e| StoreError::Http {
                url: url.clone(),
                source: Box::new(e),
            })?;
        match resp.status() {
            StatusCode::OK => Ok(Some(resp)),
            StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
            s => Err(StoreError::Status {
                url,
                status: s.as_u16(),
            }),
        }
    }

    /// GETs a whole body of at most `limit` bytes within the body timeout.
    async fn get_bytes(&self, key: &str, limit: usize) -> Result<Option<Bytes>, StoreError> {
        let Some(resp) = self.send(Method::GET, key).await? else {
            return Ok(None);
        };
        let url = self.url(key);
        let body = Limited::new(resp.into_body(), limit);
        let collected = tokio::time::timeout(self.opts.body_timeout, body.collect())
            .await
            .map_err(|_| StoreError::Timeout {
                url: url.clone(),
                after: Some(self.opts.body_timeout),
            })?
            .map_err(|source| StoreError::Http { url, source })?;
        Ok(Some(collected.to_bytes()))
    }
}

#[async_trait]
impl Store for HttpStore {
    fn location(&self) -> String {
        self.base.to_string()
    }

    async fn get_object(&self, hash: &Hash) -> Result<Option<Bytes>, StoreError> {
        let limit = super::MAX_WHOLE_OBJECT as usize;
        let Some(bytes) = self.get_bytes(&layout::object(hash), limit).await? else {
            return Ok(None);
        };
        if Hash::of(&bytes) != *hash {
            return Err(StoreError::Corrupt { hash: *hash });
        }
        Ok(Some(bytes))
    }

    async fn open_object(&self, hash: &Hash) -> Result<Option<ObjectBody>, StoreError> {
        let key = layout::object(hash);
        let Some(resp) = self.send(Method::GET, &key).await? else {
            return Ok(None);
        };
        let url = self.url(&key);
        let len = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A transport error mid-body carries its StoreError (see `StoreError::from_body`); a
        // body cut short of its Content-Length is an unexpected end.
        let stream = resp.into_body().into_data_stream().map_err(move |e| {
            let kind = body_error_kind(&e);
            StoreError::Http {
                url: url.clone(),
                source: Box::new(e),
            }
            .into_io(kind)
        });
        Ok(Some(ObjectBody {
            len,
            stream: stream.boxed(),
        }))
    }

    async fn has_object(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self
            .send(Method::HEAD, &layout::object(hash))
            .await?
            .is_some())
    }

    async fn put_object(&self, _hash: &Hash, _data: Bytes) -> Result<bool, StoreError> {
        Err(self.read_only("writing objects"))
    }

    async fn put_object_file(
        &self,
        _hash: &Hash,
        _path: &std::path::Path,
    ) -> Result<bool, StoreError> {
        Err(self.read_only("writing objects"))
    }

    async fn get_host(&self, host: &str) -> Result<Option<HostRecord>, StoreError> {
        let host = normalize_host(host)?;
        let key = layout::host(&host);
        match self.get_bytes(&key, self.opts.max_record_bytes).await? {
            None => Ok(None),
            Some(b) => Ok(Some(check_host(&host, parse_record(&key, &b)?)?)),
        }
    }

    async fn put_host(&self, _record: &HostRecord) -> Result<(), StoreError> {
        Err(self.read_only("adding hosts"))
    }

    async fn get_host_index(&self) -> Result<Option<HostIndex>, StoreError> {
        let key = layout::HOST_INDEX;
        let limit = super::MAX_HOST_INDEX_BYTES as usize;
        match self.get_bytes(key, limit).await? {
            None => Ok(None),
            Some(b) => Ok(Some(super::check_host_index(parse_record(key, &b)?)?)),
        }
    }

    async fn get_current(&self, site: &str) -> Result<Option<CurrentPointer>, StoreError> {
        validate_site(site)?;
        let key = layout::current(site);
        match self.get_bytes(&key, self.opts.max_record_bytes).await? {
            None => Ok(None),
            Some(b) => Ok(Some(check_current(site, parse_record(&key, &b)?)?)),
        }
    }

    async fn swap_current(
        &self,
        _expected: Option<u64>,
        _new: &CurrentPointer,
    ) -> Result<(), StoreError> {
        Err(self.read_only("moving the current pointer"))
    }

    async fn put_deploy(&self, _record: &DeployRecord) -> Result<(), StoreError> {
        Err(self.read_only("writing deploy records"))
    }

    async fn get_deploy(&self, site: &str, id: &str) -> Result<Option<DeployRecord>, StoreError> {
        validate_site(site)?;
        validate_deploy_id(id)?;
        let key = layout::deploy(site, id);
        match self.get_bytes(&key, self.opts.max_record_bytes).await? {
            None => Ok(None),
            Some(b) => Ok(Some(check_deploy(site, id, parse_record(&key, &b)?)?)),
        }
    }

    async fn list_deploys(&self, site: &str) -> Result<Vec<DeployRecord>, StoreError> {
        validate_site(site)?;
        let key = layout::history(site);
        let Some(text) = self.get_bytes(&key, 16 * 1024 * 1024).await? else {
            return Ok(Vec::new());
        };
        let text = String::from_utf8_lossy(&text);
        let ids: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
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
}

/// The I/O kind of a body error: the kind of the I/O error behind it (hyper reports a body
/// cut short of its Content-Length as an `UnexpectedEof` inside), else from hyper's own
/// classification.
fn body_error_kind(e: &hyper::Error) -> std::io::ErrorKind {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return io.kind();
        }
        cause = c.source();
    }
    if e.is_incomplete_message() {
        std::io::ErrorKind::UnexpectedEof
    } else if e.is_timeout() {
        std::io::ErrorKind::TimedOut
    } else {
        std::io::ErrorKind::Other
    }
}

impl HttpStore {
    fn read_only(&self, op: &'static str) -> StoreError {
        StoreError::ReadOnly {
            store: self.base.to_string(),
            op,
        }
    }
}
