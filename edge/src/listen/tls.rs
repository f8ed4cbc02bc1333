//! TLS: certificates per host name from a folder, chosen by SNI and swapped atomically when
//! the files change; and the rustls configurations for HTTPS and QUIC (TLS 1.2 and 1.3 only,
//! with the cipher suites and key-exchange groups of Mozilla's "intermediate" profile).
//!
//! Invariants: a handshake reads the certificate map through one atomic load and never
//! blocks on a reload; a reload replaces the whole map at once, and a pair that fails to load
//! keeps the host's previous certificate; connections keep the certificate they shook hands
//! with. Files are read on the blocking pool, never on a serving thread.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ocsp::{self, Staple};
pub use crate::metrics::OcspStats;

/// The file stem of the certificate served for names with no file of their own.
pub const DEFAULT_NAME: &str = "default";

/// ALPN protocols offered on the TCP listener, in preference order.
pub const ALPN_TCP: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN for HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";

/// A certificate folder that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no PEM certificate in it", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a PEM file", .path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no PEM private key in it", .path.display())]
    NoKey { path: PathBuf },
    #[error("{}: missing (every NAME.crt needs its NAME.key)", .path.display())]
    MissingKey { path: PathBuf },
    #[error("{} and {} do not make a usable pair", .cert.display(), .key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{} holds no certificate pair (NAME.crt with NAME.key)", .dir.display())]
    Empty { dir: PathBuf },
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// rustls's *ring* provider cut down to Mozilla's "intermediate" profile: TLS 1.3 AES-GCM
/// and ChaCha20; TLS 1.2 ECDHE with ECDSA or RSA, AES-GCM or ChaCha20 (no CBC, no static
/// RSA, no SHA-1); groups X25519, P-256, P-384. Listed in the profile's order; the client's
/// preference wins, as the profile says.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group};
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// The HTTPS configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1, certificates from
/// `certs`, stateless session tickets (so resumption works whichever worker thread accepts).
pub fn tcp_config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    c.alpn_protocols = ALPN_TCP.iter().map(|p| p.to_vec()).collect();
    c.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    Ok(Arc::new(c))
}

/// The QUIC configuration: TLS 1.3 only (QUIC requires it), ALPN h3. 0-RTT is accepted only
/// when `early_data` is set (quinn takes 0 or `u32::MAX`, nothing between). Resumption is
/// stateful here: rustls accepts early data only on a single-use session it can take out of
/// its cache, which is what stops a replayed 0-RTT flight.
pub fn quic_config(certs: Arc<CertStore>, early_data: bool) -> Result<ServerConfig, TlsError> {
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    c.alpn_protocols = vec![ALPN_H3.to_vec()];
    c.max_early_data_size = if early_data { u32::MAX } else { 0 };
    c.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(c)
}

/// What the HTTPS listener needs per connection: the acceptor (sharing one rustls
/// configuration) and how long a handshake may take.
#[derive(Clone)]
pub struct TlsServing {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: Duration,
}

/// Host name -> certificate, plus the default. Replaced whole on reload.
#[derive(Default)]
struct CertMap {
    hosts: HashMap<String, Served>,
    default: Option<Served>,
}

/// One host's certificate, and the same with its OCSP response stapled while that is current.
#[derive(Clone)]
struct Served {
    plain: Arc<CertifiedKey>,
    stapled: Option<(Arc<CertifiedKey>, Staple)>,
}

impl Served {
    fn plain(ck: CertifiedKey) -> Served {
        Served {
            plain: Arc::new(ck),
            stapled: None,
        }
    }

    fn pick(&self, stats: &OcspStats) -> Arc<CertifiedKey> {
        match &self.stapled {
            Some((ck, staple)) if staple.current(std::time::SystemTime::now()) => ck.clone(),
            Some(_) => {
                stats.expired_handshakes.fetch_add(1, Ordering::Relaxed);
                self.plain.clone()
            }
            None => self.plain.clone(),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Pairs loaded from their files.
    pub loaded: usize,
    /// Pairs that failed to load and kept their previous certificate (or were left out).
    pub failed: usize,
}

/// The certificates: `DIR/<host>.crt` + `DIR/<host>.key` per host name and
/// `DIR/default.crt` + `DIR/default.key` for any other name (or no SNI at all). A rustls
/// certificate resolver; handshakes read it lock-free.
pub struct CertStore {
    dir: Option<PathBuf>,
    map: ArcSwap<CertMap>,
    reloads: AtomicU64,
    ocsp: Arc<OcspStats>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.map.load();
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("hosts", &map.hosts.len())
            .field("default", &map.default.is_some())
            .finish()
    }
}

impl CertStore {
    /// Loads every pair in `dir`. Blocking: call it on the blocking pool or before serving.
    /// Any pair that fails is an error naming its file, so a bad folder stops the start. An
    /// OCSP response that cannot be stapled is logged and counted in `ocsp`, and its
    /// certificate is served without one.
    pub fn load(dir: &Path, ocsp: Arc<OcspStats>) -> Result<CertStore, TlsError> {
        let (map, errors) = read_dir(dir, &ocsp)?;
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        if map.hosts.is_empty() && map.default.is_none() {
            return Err(TlsError::Empty {
                dir: dir.to_owned(),
            });
        }
        if map.default.is_none() {
            tracing::warn!(dir = %dir.display(), "no default.crt: clients naming another host (or none) are refused");
        }
        ocsp.stapled.store(map.stapled(), Ordering::Relaxed);
        Ok(CertStore {
            dir: Some(dir.to_owned()),
            map: ArcSwap::from_pointee(map),
            reloads: AtomicU64::new(0),
            ocsp,
        })
    }

    /// One certificate (chain, leaf first) and key for every name; no folder, no reloads.
    pub fn single(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<CertStore, TlsError> {
        let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Config)?;
        Ok(CertStore {
            dir: None,
            map: ArcSwap::from_pointee(CertMap {
                hosts: HashMap::new(),
                default: Some(Served::plain(ck)),
            }),
            reloads: AtomicU64::new(0),
            ocsp: Arc::default(),
        })
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Host names with a certificate of their own, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.load().hosts.keys().cloned().collect();
        v.sort();
        v
    }

    /// How many reloads have swapped the map.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Re-reads the folder and swaps the map in one step. A pair that fails to load (a
    /// half-written file, a key that does not match) keeps the host's previous certificate;
    /// a pair whose files are gone is dropped. Blocking: see [`CertStore::reload`].
    pub fn reload_blocking(&self) -> Result<ReloadReport, TlsError> {
        let Some(dir) = &self.dir else {
            return Ok(ReloadReport::default());
        };
        let (mut next, errors) = read_dir(dir, &self.ocsp)?;
        let old = self.map.load();
        let mut report = ReloadReport {
            loaded: next.hosts.len() + usize::from(next.default.is_some()),
            failed: errors.len(),
        };
        for e in &errors {
            // Keep what served before for the name whose files failed.
            let name = failed_name(e);
            match name.as_deref() {
                Some(DEFAULT_NAME) => next.default = old.default.clone(),
                Some(host) => {
                    if let Some(c) = old.hosts.get(host) {
                        next.hosts.insert(host.to_owned(), c.clone());
                    }
                }
                None => {}
            }
            tracing::warn!(error = %crate::error::chain(e), "certificate not reloaded; keeping the previous one");
        }
        if next.hosts.is_empty() && next.default.is_none() {
            report.failed += 1;
            tracing::warn!(dir = %dir.display(), "certificate folder has no usable pair; keeping every previous certificate");
            return Ok(report);
        }
        self.ocsp.stapled.store(next.stapled(), Ordering::Relaxed);
        self.map.store(Arc::new(next));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(report)
    }

    /// [`CertStore::reload_blocking`] on the blocking pool, logged.
    pub async fn reload(self: &Arc<Self>) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.reload_blocking()).await {
            Ok(Ok(r)) => {
                tracing::info!(
                    loaded = r.loaded,
                    failed = r.failed,
                    "certificates reloaded"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "certificate reload failed; keeping the previous certificates");
            }
            Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        if let Some(name) = hello.server_name() {
            let name = name.trim_end_matches('.');
            let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                map.hosts.get(&name.to_ascii_lowercase())
            } else {
                map.hosts.get(name)
            };
            if let Some(c) = found {
                return Some(c.pick(&self.ocsp));
            }
        }
        map.default.as_ref().map(|c| c.pick(&self.ocsp))
    }
}

/// The name (file stem) an error is about, when it is about one pair.
fn failed_name(e: &TlsError) -> Option<String> {
    let path = match e {
        TlsError::NoCertificate { path }
        | TlsError::Pem { path, .. }
        | TlsError::NoKey { path }
        | TlsError::MissingKey { path }
        | TlsError::Read { path, .. } => path,
        TlsError::Pair { cert, .. } => cert,
        _ => return None,
    };
    Some(path.file_stem()?.to_str()?.to_ascii_lowercase())
}

impl CertMap {
    /// How many certificates have an OCSP response stapled.
    fn stapled(&self) -> u64 {
        let n = self.hosts.values().chain(&self.default);
        n.filter(|s| s.stapled.is_some()).count() as u64
    }
}

/// Reads every `NAME.crt` with its `NAME.key` (and `NAME.ocsp` when there is one). Pairs that
/// fail are returned as errors beside the map of those that loaded; an unreadable folder is an
/// error on its own.
fn read_dir(dir: &Path, ocsp: &OcspStats) -> Result<(CertMap, Vec<TlsError>), TlsError> {
    let read_err = |path: &Path, source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let provider = provider();
    let mut map = CertMap::default();
    let mut errors = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".crt")) else {
            continue;
        };
        if !name.is_empty() && !name.starts_with('.') {
            names.push(name.to_owned());
        }
    }
    names.sort();
    for name in names {
        match load_pair(dir, &name, &provider) {
            Ok(ck) => {
                let served = with_staple(dir, &name, ck, ocsp);
                let key = name.to_ascii_lowercase();
                if key == DEFAULT_NAME {
                    map.default = Some(served);
                } else {
                    map.hosts.insert(key, served);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Ok((map, errors))
}

fn load_pair(dir: &Path, name: &str, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let cert_pem = std::fs::read(&cert_path).map_err(|source| TlsError::Read {
        path: cert_path.clone(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_path.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let key_pem = match std::fs::read(&key_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TlsError::MissingKey { path: key_path });
        }
        Err(source) => {
            return Err(TlsError::Read {
                path: key_path,
                source,
            });
        }
    };
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey { path: key_path });
        }
        Err(source) => {
            return Err(TlsError::Pem {
                path: key_path,
                source,
            });
        }
    };
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
        cert: cert_path,
        key: key_path,
        source,
    })
}

/// `ck`, and `ck` with `DIR/NAME.ocsp` stapled when that file is there and passes
/// [`ocsp::check`]. A staple that does not is logged (naming the file and why) and counted,
/// and the certificate is served without one: a stale staple must not take a site's TLS down.
fn with_staple(dir: &Path, name: &str, ck: CertifiedKey, stats: &OcspStats) -> Served {
    let path = dir.join(format!("{name}.ocsp"));
    let refused = |why: &dyn std::fmt::Display| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(file = %path.display(), error = %why, "OCSP response not stapled");
    };
    let der = match std::fs::read(&path) {
        Ok(der) => der,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Served::plain(ck),
        Err(e) => {
            refused(&e);
            return Served::plain(ck);
        }
    };
    match ocsp::check(&der, &ck.cert[0], std::time::SystemTime::now()) {
        Ok(staple) => {
            let mut stapled = ck.clone();
            stapled.ocsp = Some(der);
            Served {
                plain: Arc::new(ck),
                stapled: Some((Arc::new(stapled), staple)),
            }
        }
        Err(e) => {
            refused(&e);
            Served::plain(ck)
        }
    }
}

/// Keeps the certificate folder watched while it lives.
pub struct CertWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reloads `certs` on SIGHUP and, when `watch` is set, when a file in its folder changes
/// (a burst of changes, such as a certificate and its key being replaced, makes one reload
/// once it settles).
pub fn spawn_reloader(certs: Arc<CertStore>, watch: bool) -> anyhow::Result<CertWatcher> {
    // One pending signal is enough: a reload reads every file.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = match (certs.dir(), watch) {
        (Some(dir), true) => {
            let tx = tx.clone();
            let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            })?;
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            Some(w)
        }
        _ => None,
    };
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a replacement of both files settle before reading them.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            certs.reload().await;
        }
    });
    Ok(CertWatcher {
        _watcher: watcher,
        task,
    })
}

/// Generates a self-signed certificate for local use (`edge preview --tls`), valid for
/// `localhost`, 127.0.0.1 and ::1, and writes it to `dir` as the default pair
/// (`default.crt`, and `default.key` readable by the owner only). Returns the certificate's
/// path, for a client to trust.
pub fn write_local_cert(dir: &Path) -> anyhow::Result<PathBuf> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    std::fs::create_dir_all(dir)?;
    let key_path = dir.join(format!("{DEFAULT_NAME}.key"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(
        &mut opts.open(&key_path)?,
        ck.signing_key.serialize_pem().as_bytes(),
    )?;
    let cert_path = dir.join(format!("{DEFAULT_NAME}.crt"));
    std::fs::write(&cert_path, ck.cert.pem())?;
    Ok(cert_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, (c, k): &(String, String)) {
        std::fs::write(dir.join(format!("{name}.crt")), c).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), k).unwrap();
    }

    fn leaf(store: &CertStore, host: Option<&str>) -> Option<Vec<u8>> {
        let map = store.map.load();
        let c = match host {
            Some(h) => map.hosts.get(h).or(map.default.as_ref()),
            None => map.default.as_ref(),
        }?;
        Some(c.plain.cert[0].to_vec())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn loads_pairs_and_reload_keeps_a_broken_pair() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(&["a.test"]);
        let d = pair(&["localhost"]);
        write(dir.path(), "a.test", &a);
        write(dir.path(), "default", &d);
        std::fs::write(dir.path().join("README"), "not a certificate").unwrap();
        let store = CertStore::load(dir.path(), Arc::default()).unwrap();
        assert_eq!(store.hosts(), vec!["a.test".to_owned()]);
        assert_eq!(leaf(&store, Some("a.test")), Some(der(&a.0)));
        assert_eq!(leaf(&store, None), Some(der(&d.0)));

        // A key that does not match its certificate: the previous pair stays.
        let a2 = pair(&["a.test"]);
        std::fs::write(dir.path().join("a.test.crt"), &a2.0).unwrap();
        let r = store.reload_blocking().unwrap();
        assert_eq!(r.failed, 1);
        assert_eq!(leaf(&store, Some("a.test")), Some(der(&a.0)));
        // Both files replaced: the new pair is served.
        std::fs::write(dir.path().join("a.test.key"), &a2.1).unwrap();
        let r = store.reload_blocking().unwrap();
        assert_eq!(r.failed, 0);
        assert_eq!(leaf(&store, Some("a.test")), Some(der(&a2.0)));
        assert_eq!(store.reloads(), 2);
    }

    #[test]
    fn bad_folders_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = CertStore::load(dir.path(), Arc::default()).unwrap_err();
        assert!(matches!(e, TlsError::Empty { .. }), "{e}");
        let a = pair(&["a.test"]);
        std::fs::write(dir.path().join("a.test.crt"), &a.0).unwrap();
        let e = CertStore::load(dir.path(), Arc::default()).unwrap_err();
        assert!(e.to_string().contains("a.test.key"), "{e}");
        std::fs::write(dir.path().join("a.test.key"), "garbage").unwrap();
        let e = CertStore::load(dir.path(), Arc::default()).unwrap_err();
        assert!(e.to_string().contains("a.test.key"), "{e}");
    }

    #[test]
    fn configs_build_with_the_intermediate_profile() {
        let d = pair(&["localhost"]);
        let store = Arc::new(
            CertStore::single(
                vec![CertificateDer::from_pem_slice(d.0.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(d.1.as_bytes()).unwrap(),
            )
            .unwrap(),
        );
        let tcp = tcp_config(store.clone()).unwrap();
        assert_eq!(
            tcp.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let suites = &tcp.crypto_provider().cipher_suites;
        assert_eq!(suites.len(), 9);
        assert!(suites.iter().all(|s| {
            let n = format!("{:?}", s.suite());
            n.contains("GCM") || n.contains("CHACHA20")
        }));
        let quic = quic_config(store, false).unwrap();
        assert_eq!(quic.max_early_data_size, 0);
        assert_eq!(quic.alpn_protocols, vec![b"h3".to_vec()]);
    }
}
