//! `loadtest run` and `loadtest gen-site`: arguments, turned once into [`RunOptions`] and a
//! [`Workload`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;

use super::site::{self, SizeMix};
use super::workload::{Synthetic, Workload};
use super::{GenError, Mode, Proto, Report, RunOptions, TlsOptions};

/// A duration on the command line: `250ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 10s, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Where to connect: http://HOST:PORT or https://HOST:PORT. With neither --urls nor
    /// --files, its path is the one URL requested.
    #[arg(value_name = "URL")]
    pub target: http::Uri,
    /// HTTP version: h1, h2 (h2c prior knowledge over http://, ALPN over https://), h3 (QUIC,
    /// https:// only; the port is the server's UDP port).
    #[arg(long, value_enum, default_value = "h1")]
    pub proto: Proto,
    /// Connections to open (before the clock starts).
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Concurrent streams per connection (HTTP/2 and HTTP/3).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Open loop: send at this constant rate (requests per second), measuring each request's
    /// latency from its intended send time. Without it: closed loop, as fast as it goes.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Unmeasured warm-up before the measured phase.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Length of the measured phase.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// At most this many measured requests.
    #[arg(long, default_value_t = 10_000_000)]
    pub max_requests: u64,
    /// Per-request timeout, from send to the last body byte.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// A URL list: one absolute URL (its host becomes the Host header) or /path per line.
    #[arg(long, value_name = "FILE", conflicts_with = "files")]
    pub urls: Option<PathBuf>,
    /// Synthetic workload: request the paths of a `gen-site --files N` site, by Zipf rank.
    #[arg(long, value_name = "N")]
    pub files: Option<usize>,
    /// Synthetic workload: the size mix the site was generated with.
    #[arg(long, value_enum, default_value = "small")]
    pub sizes: SizeMix,
    /// Synthetic workload: spread requests over this many sites (Host: site{k}.DOMAIN), by
    /// Zipf rank. With 1, the Host is the target's (or --host).
    #[arg(long, default_value_t = 1)]
    pub sites: usize,
    /// Synthetic workload: the domain of the site host names.
    #[arg(long, default_value = "loadtest.test", value_name = "DOMAIN")]
    pub site_domain: String,
    /// Synthetic workload: Zipf exponent of path popularity (0 is uniform).
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub zipf: f64,
    /// Synthetic workload: Zipf exponent of site popularity.
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    pub site_zipf: f64,
    /// The Host header for /path lines and single-site workloads [default: the target's].
    #[arg(long, value_name = "HOST")]
    pub host: Option<Authority>,
    /// https: accept any certificate (self-signed local certs).
    #[arg(long)]
    pub insecure: bool,
    /// https: trust the PEM certificates in FILE instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seed for the workload's random draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl RunArgs {
    /// The run's options; the progress line is drawn when standard error is a terminal.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            target: self.target.clone(),
            proto: self.proto,
            mode: match self.rate {
                Some(rate) => Mode::Open { rate },
                None => Mode::Closed,
            },
            connections: self.connections,
            streams: self.streams,
            warmup: self.warmup,
            duration: self.duration,
            max_requests: self.max_requests,
            timeout: self.timeout,
            tls: TlsOptions {
                insecure: self.insecure,
                ca_file: self.cacert.clone(),
            },
            seed: self.seed,
            progress: std::io::stderr().is_terminal(),
        }
    }

    pub async fn workload(&self) -> Result<Workload, GenError> {
        let host = match (&self.host, self.target.authority()) {
            (Some(h), _) => h.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => return Err(GenError::Target(self.target.to_string())),
        };
        if let Some(path) = &self.urls {
            let text =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| GenError::UrlFile {
                        path: path.clone(),
                        source,
                    })?;
            return Ok(Workload::from_list(&text, &host)?);
        }
        if let Some(files) = self.files {
            let spec = Synthetic {
                files,
                sizes: self.sizes,
                sites: self.sites,
                site_domain: self.site_domain.clone(),
                path_exponent: self.zipf,
                site_exponent: self.site_zipf,
            };
            return Ok(Workload::synthetic(&spec, &host)?);
        }
        let path = self
            .target
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        Ok(Workload::from_list(&path, &host)?)
    }
}

/// Runs `loadtest run`: prints the report, and writes it as JSON when asked.
pub async fn run(args: RunArgs) -> Result<Report, GenError> {
    let opts = args.options();
    opts.validate()?;
    let workload = Arc::new(args.workload().await?);
    let report = super::run(&opts, workload).await?;
    println!("{report}");
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<(), GenError> {
    let out = |source| GenError::Output {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(value).map_err(|e| out(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(path).map_err(out)?;
    f.write_all(&text).map_err(out)?;
    f.write_all(b"\n").map_err(out)
}

#[derive(Debug, Clone, clap::Args)]
pub struct GenSiteArgs {
    /// The folder to write (created if missing); publish it with `edge publish DIR`.
    pub dir: PathBuf,
    /// How many files.
    #[arg(long)]
    pub files: usize,
    /// Size mix: small (512 B-8 KiB) or mixed (1 KiB-3 MiB). Files go to DIR/small/ or
    /// DIR/mixed/, so both can share one folder.
    #[arg(long, value_enum, default_value = "small")]
    pub sizes: SizeMix,
}

/// Runs `loadtest gen-site`.
pub async fn gen_site(args: GenSiteArgs) -> Result<(), GenError> {
    let GenSiteArgs { dir, files, sizes } = args;
    let shown = dir.display().to_string();
    let summary = tokio::task::spawn_blocking(move || site::write_site(&dir, files, sizes))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    println!(
        "wrote {} {} files ({:.1} MiB) to {shown}/{}/",
        summary.files,
        sizes.as_str(),
        summary.bytes as f64 / (1024.0 * 1024.0),
        sizes.as_str()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
