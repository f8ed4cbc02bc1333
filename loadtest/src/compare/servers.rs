//! The servers under comparison, as child processes: the edge (`edge serve` over a published
//! store), nginx serving the site folder statically, and Varnish in front of a second nginx.
//!
//! Invariants:
//! - Every listener binds 127.0.0.1 (Varnish's management port is turned off).
//! - Every process started here is stopped by its own PID, when its [`Proc`] is dropped:
//!   SIGTERM, up to five seconds' grace, then SIGKILL. Nothing is stopped by name.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::CompareError;

/// A child process, stopped by PID when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, CompareError> {
        let out = fs::File::create(log).map_err(|source| CompareError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let err = out.try_clone().map_err(|source| CompareError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| CompareError::Io {
                what: format!("starting {name} ({cmd:?})"),
                source,
            })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), CompareError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(CompareError::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: tail(&self.log),
            }),
            Err(source) => Err(CompareError::Io {
                what: format!("checking on {}", self.name),
                source,
            }),
        }
    }

    /// The sum of peak resident set sizes (VmHWM) of this process and its descendants, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.tree()
            .iter()
            .filter_map(|&p| status_kib(p, "VmHWM:"))
            .sum()
    }

    /// The sum of resident set sizes now (VmRSS) of this process and its descendants, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.tree()
            .iter()
            .filter_map(|&p| status_kib(p, "VmRSS:"))
            .sum()
    }

    /// This process and its descendants.
    fn tree(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children(pids[i]));
            i += 1;
        }
        pids
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM by PID: nginx's master and Varnish's manager stop their workers on it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Direct children of `pid`, from /proc (each task's `children` file).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A free port on 127.0.0.1 (bound, read, released: another process could take it in between,
/// which the readiness check would catch).
pub fn free_port() -> Result<u16, CompareError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| CompareError::Io {
            what: "finding a free port".into(),
            source,
        })
}

/// Finds `name` on PATH or in the sbin folders.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Installs the Debian packages whose programs are missing (nginx-light for nginx, varnish for
/// varnishd) with apt-get, and returns the two programs' paths.
pub fn ensure_tools(need_varnish: bool) -> Result<(PathBuf, Option<PathBuf>), CompareError> {
    let mut missing = Vec::new();
    if which("nginx").is_none() {
        missing.push("nginx-light");
    }
    if need_varnish && which("varnishd").is_none() {
        missing.push("varnish");
    }
    if !missing.is_empty() {
        eprintln!("installing {} with apt-get", missing.join(" "));
        let run = |args: &[&str]| -> Result<(), CompareError> {
            let status = Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .map_err(|source| CompareError::Io {
                    what: "running apt-get".into(),
                    source,
                })?;
            if status.success() {
                Ok(())
            } else {
                Err(CompareError::Install(missing.join(" ")))
            }
        };
        run(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        run(&args)?;
    }
    let nginx = which("nginx").ok_or_else(|| CompareError::Install("nginx-light".into()))?;
    let varnish = if need_varnish {
        Some(which("varnishd").ok_or_else(|| CompareError::Install("varnish".into()))?)
    } else {
        None
    };
    Ok((nginx, varnish))
}

/// Waits until `addr` answers an HTTP request (any status), or the process exits, or 30 s pass.
pub async fn wait_ready(proc: &mut Proc, addr: SocketAddr) -> Result<(), CompareError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        proc.check_alive()?;
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            let mut buf = [0u8; 12];
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                s.write_all(req).await?;
                s.read_exact(&mut buf).await
            })
            .await;
            if matches!(ok, Ok(Ok(_))) && buf.starts_with(b"HTTP/1.") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(CompareError::NotReady {
                name: proc.name.clone(),
                addr,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one nginx process serves, besides static HTTP/1.1 on `h1`.
#[derive(Debug, Clone, Default)]
pub struct NginxPorts {
    pub h1: u16,
    /// Cleartext HTTP/2 with prior knowledge (nginx 1.22 cannot serve both on one cleartext
    /// port).
    pub h2: Option<u16>,
    /// HTTPS (HTTP/1.1 and h2 by ALPN) with this certificate and key, static.
    pub tls: Option<(u16, PathBuf, PathBuf)>,
    /// A `proxy_cache` in front of this origin port (HTTP/1.1), with `proxy_cache_lock` on:
    /// nginx as a cache.
    pub cache: Option<(u16, u16)>,
}

/// Writes an nginx configuration serving `root` as a tuned static deployment would (sendfile,
/// open-file cache, no access log, long keep-alive), plus the HTTPS and cache servers asked for.
/// TLS: 1.2 and 1.3, the same groups and suites as the edge (Mozilla intermediate).
pub fn nginx_conf(prefix: &Path, root: &Path, workers: usize, ports: &NginxPorts) -> String {
    let root_s = root.display();
    let mut servers = format!(
        "  server {{ listen 127.0.0.1:{}; root {root_s}; }}\n",
        ports.h1
    );
    if let Some(p) = ports.h2 {
        servers += &format!("  server {{ listen 127.0.0.1:{p} http2; root {root_s}; }}\n");
    }
    if let Some((p, cert, key)) = &ports.tls {
        servers += &format!(
            r#"  server {{
    listen 127.0.0.1:{p} ssl http2; root {root_s};
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:SSL:10m; ssl_session_timeout 1d;
  }}
"#,
            cert = cert.display(),
            key = key.display()
        );
    }
    let mut cache_zone = String::new();
    if let Some((p, origin)) = ports.cache {
        cache_zone = format!(
            "  proxy_cache_path {prefix}/cache levels=1:2 keys_zone=edge:64m max_size=8g inactive=1d use_temp_path=off;\n  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}\n",
            prefix = prefix.display()
        );
        servers += &format!(
            r#"  server {{
    listen 127.0.0.1:{p};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache edge; proxy_cache_key $uri; proxy_cache_valid 200 1d;
      proxy_cache_lock on;
    }}
  }}
"#
        );
    }
    format!(
        r#"# Written by loadtest compare.
worker_processes {workers};
worker_rlimit_nofile 30000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 12000; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  open_file_cache max=20000 inactive=300s;
  open_file_cache_valid 300s;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {prefix}/tmp-body;
  proxy_temp_path {prefix}/tmp-proxy;
  fastcgi_temp_path {prefix}/tmp-fastcgi;
  uwsgi_temp_path {prefix}/tmp-uwsgi;
  scgi_temp_path {prefix}/tmp-scgi;
  types {{
    text/html html; text/css css; application/javascript js; text/plain txt;
    image/svg+xml svg; application/json json; image/jpeg jpg; image/png png;
  }}
  default_type application/octet-stream;
  etag on;
{cache_zone}{servers}}}
"#,
        prefix = prefix.display(),
    )
}
