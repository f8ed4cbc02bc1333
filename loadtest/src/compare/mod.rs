//! `loadtest compare`: the edge against nginx (static files) and Varnish (in front of an nginx
//! origin) on this machine, with the same files, the same workloads and the same generator.
//!
//! One run: generate a site (small files, a mixed-size set, a PoP-sized set larger than the
//! edge's memory tier with 4-16 MiB files four levels deep, cold files and burst files), publish
//! it to a store under several site names, start an origin ([`origin`]: a file server with a
//! settable first-byte delay and transfer rate) and the three servers on 127.0.0.1, fetch every
//! URL of every steady workload once through each (warming every cache, and checking every
//! answer is a 200), then run each scenario against each server, interleaved over several
//! rounds (the server order rotates each round), and report medians over rounds, ratios, each
//! server's peak RSS, the table of issue 14 with its targets, a JSON file and an SVG of the
//! latency percentile curves.
//!
//! What each server is: the edge reads its store through the origin (`http://` store); nginx
//! serves the site folder statically (plain, h2c, HTTPS) and, on another port, as a
//! `proxy_cache` (lock on) in front of the origin, which the cold-file scenarios use; Varnish
//! fills from the origin. HTTPS uses one self-signed ECDSA P-256 certificate for the edge and
//! nginx, TLS 1.2 and 1.3 with the same suites and groups. Varnish has no TLS and nginx 1.22 no
//! HTTP/3: those cells are `-`.
//!
//! Code map:
//! - `servers`: child processes (start, readiness, RSS, stop by PID), nginx's configuration.
//! - `origin`: the origin every cache fills from.
//! - `special`: the burst, the misses on a slow origin, idle connections.
//! - `table`: medians, ratios and the printed tables (pure).
//! - `chart`: the SVG.
//! - `cli`: the subcommand's arguments.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::loadgen::report::{self, CurvePoint, Latency, Report};
use crate::loadgen::site::{self, SizeMix};
use crate::loadgen::workload::{Synthetic, Workload, site_host};
use crate::loadgen::{self, GenError, Mode, Proto, RunOptions};

use self::servers::Proc;

mod chart;
pub mod cli;
pub mod origin;
pub mod servers;
pub mod special;
pub mod table;

/// The site-name prefix in the edge's store: sites are `bench0`, `bench1`, ...
const SITE_PREFIX: &str = "bench";
/// Host names are `site{k}.{SITE_DOMAIN}`.
const SITE_DOMAIN: &str = "loadtest.test";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Edge,
    Nginx,
    Varnish,
}

impl ServerKind {
    pub const ALL: [ServerKind; 3] = [ServerKind::Edge, ServerKind::Nginx, ServerKind::Varnish];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::Edge => "edge",
            ServerKind::Nginx => "nginx",
            ServerKind::Varnish => "varnish",
        }
    }
}

/// One workload, run against every server.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub title: &'static str,
    pub proto: Proto,
    pub connections: usize,
    pub streams: usize,
    /// Open loop at the comparison's open-loop rate, else closed loop.
    pub open: bool,
    pub sizes: SizeMix,
    pub sites: usize,
    pub zipf: f64,
    /// Over HTTPS (HTTP/3 always is).
    pub tls: bool,
}

/// The steady scenarios, in the order each round runs them. The first sets the open-loop rate.
pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "h1-small",
        title: "small-file hits, HTTP/1.1, 32 connections",
        proto: Proto::H1,
        connections: 32,
        streams: 1,
        open: false,
        sizes: SizeMix::Small,
        sites: 4,
        zipf: 1.0,
        tls: false,
    },
    Scenario {
        name: "h2-small",
        title: "small-file hits, h2c, 4 connections x 16 streams",
        proto: Proto::H2,
        connections: 4,
        streams: 16,
        open: false,
        sizes: SizeMix::Small,
        sites: 4,
        zipf: 1.0,
        tls: false,
    },
    Scenario {
        name: "h1-mixed",
        title: "mixed sizes, HTTP/1.1, 16 connections",
        proto: Proto::H1,
        connections: 16,
        streams: 1,
        open: false,
        sizes: SizeMix::Mixed,
        sites: 1,
        zipf: 0.8,
        tls: false,
    },
    Scenario {
        name: "h1-small-open",
        title: "small-file hits, HTTP/1.1, open loop (latency from intended send time)",
        proto: Proto::H1,
        connections: 64,
        streams: 1,
        open: true,
        sizes: SizeMix::Small,
        sites: 4,
        zipf: 1.0,
        tls: false,
    },
    Scenario {
        name: "h1-large",
        title: "every file of the PoP-sized site (larger than the memory tier), HTTP/1.1, 64 connections",
        proto: Proto::H1,
        connections: 64,
        streams: 1,
        open: false,
        sizes: SizeMix::Large,
        sites: 1,
        zipf: 0.0,
        tls: false,
    },
    Scenario {
        name: "h1-tls-small",
        title: "small-file hits, HTTP/1.1 over TLS, 32 connections",
        proto: Proto::H1,
        connections: 32,
        streams: 1,
        open: false,
        sizes: SizeMix::Small,
        sites: 4,
        zipf: 1.0,
        tls: true,
    },
    Scenario {
        name: "h2-tls-small",
        title: "small-file hits, h2 over TLS, 4 connections x 16 streams",
        proto: Proto::H2,
        connections: 4,
        streams: 16,
        open: false,
        sizes: SizeMix::Small,
        sites: 4,
        zipf: 1.0,
        tls: true,
    },
    Scenario {
        name: "h3-small",
        title: "small-file hits, HTTP/3, 4 connections x 16 streams (edge only)",
        proto: Proto::H3,
        connections: 4,
        streams: 16,
        open: false,
        sizes: SizeMix::Small,
        sites: 4,
        zipf: 1.0,
        tls: true,
    },
];

/// The scenarios that are not a steady load ([`special`]), run after the steady ones in each
/// round, in this order.
pub const SPECIALS: [(&str, &str); 4] = [
    (
        "isolation",
        "hot hits (open loop) alone, then while misses wait on the origin's delay; the misses' latency",
    ),
    (
        "burst",
        "clients at once on a cold 13.6 MiB file (the origin sends at its rate), time to last byte",
    ),
    (
        "idle-h1",
        "resident memory per idle HTTP/1.1 keep-alive connection (one request each, then idle)",
    ),
    (
        "idle-h2",
        "resident memory per idle h2c connection (one request each, then idle)",
    ),
];

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub servers: Vec<ServerKind>,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub small_files: usize,
    pub mixed_files: usize,
    pub large_files: usize,
    /// Scenario names to run (steady and special); empty: all.
    pub only: Vec<String>,
    pub burst_clients: usize,
    pub miss_clients: usize,
    pub idle_connections: usize,
    /// The origin's first-byte delay in the isolation scenario.
    pub origin_delay: Duration,
    /// The origin's transfer rate per response, bytes per second, always.
    pub origin_rate: u64,
    /// Open-loop rate; `None`: half the slowest server's h1-small rate in round 1.
    pub open_rate: Option<f64>,
    /// Where the JSON and SVG go.
    pub out: PathBuf,
    /// Where the site, store, caches and server configs go (a temporary folder if `None`).
    pub work_dir: Option<PathBuf>,
    /// The edge binary; `None`: build `target/release/edge` with cargo.
    pub edge_bin: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install {0} (apt-get failed; install it by hand)")]
    Install(String),
    #[error("{name} exited ({status}); the end of its log:\n{log_tail}")]
    Exited {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error("{name} did not answer on {addr} within 30 s")]
    NotReady { name: String, addr: SocketAddr },
    #[error("`{0}` failed")]
    Command(String),
    #[error("load generation failed")]
    Gen(#[from] GenError),
    #[error("warming {server}: {bad} of {total} requests did not get a 200 ({detail})")]
    Warm {
        server: &'static str,
        bad: u64,
        total: u64,
        detail: String,
    },
    #[error("cannot draw the chart")]
    Chart(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("interrupted")]
    Interrupted,
}

/// A running server: where to reach it, and its processes (whose RSS counts).
struct Running {
    kind: ServerKind,
    h1: http::Uri,
    h2: http::Uri,
    /// HTTPS (HTTP/1.1 and h2 by ALPN); `None` where the server has no TLS here.
    https: Option<http::Uri>,
    /// HTTP/3 on the HTTPS port.
    h3: bool,
    /// Where the cold-file scenarios go: the server as a cache in front of the origin.
    cache: http::Uri,
    measured: Vec<Proc>,
}

impl Running {
    /// Where scenario `s` goes on this server; `None` if it does not serve that protocol here.
    fn target(&self, s: &Scenario) -> Option<http::Uri> {
        match (s.proto, s.tls) {
            (Proto::H3, _) if self.h3 => self.https.clone(),
            (Proto::H3, _) => None,
            (_, true) => self.https.clone(),
            (Proto::H2, false) => Some(self.h2.clone()),
            (Proto::H1, false) => Some(self.h1.clone()),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub round: usize,
    pub scenario: &'static str,
    pub server: ServerKind,
    pub report: Report,
}

/// One run of a [`SPECIALS`] scenario: its named figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpecialRecord {
    pub round: usize,
    pub scenario: &'static str,
    pub server: ServerKind,
    pub figures: BTreeMap<&'static str, f64>,
    /// Requests (or connections) that failed or got a wrong answer.
    pub failed: u64,
    pub first_failure: Option<String>,
}

/// Medians over rounds of one scenario on one server, and the rounds' histograms merged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub req_per_s: f64,
    pub p99_ms: f64,
    pub mib_per_s: f64,
    pub errors: u64,
    pub non_200: u64,
    /// All rounds' latencies merged.
    pub latency_ms: Latency,
    pub curve: Vec<CurvePoint>,
}

/// scenario -> server -> figure -> median over rounds.
pub type Specials = BTreeMap<String, BTreeMap<ServerKind, BTreeMap<String, f64>>>;

/// Everything `compare` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub rounds: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub open_rate: f64,
    pub origin_delay_ms: f64,
    pub origin_rate: u64,
    pub scenarios: Vec<Scenario>,
    /// scenario name -> server -> medians.
    pub cells: BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    /// The special scenarios' figures, medians over rounds.
    pub specials: Specials,
    /// Sum of VmHWM over each server's processes, KiB.
    pub peak_rss_kib: BTreeMap<ServerKind, u64>,
    pub runs: Vec<RunRecord>,
    pub special_runs: Vec<SpecialRecord>,
    pub table: String,
    pub issue_table: String,
    pub chart_data: String,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CompareError {
    let what = what.into();
    move |source| CompareError::Io { what, source }
}

fn workspace_root() -> PathBuf {
    // loadtest/ sits in the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn run_cmd(cmd: &mut Command) -> Result<(), CompareError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(io(format!("running {shown}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CompareError::Command(format!(
            "{shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Builds the edge in release mode unless a binary was given.
fn edge_binary(plan: &Plan) -> Result<PathBuf, CompareError> {
    if let Some(bin) = &plan.edge_bin {
        return Ok(bin.clone());
    }
    let root = workspace_root();
    eprintln!("building the edge (cargo build --release -p edge)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-q", "-p", "edge"])
        .current_dir(&root)
        .status()
        .map_err(io("running cargo"))?;
    if !status.success() {
        return Err(CompareError::Command(
            "cargo build --release -p edge".into(),
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("edge"))
}

fn workload_for(s: &Scenario, plan: &Plan, target: &http::Uri) -> Result<Workload, CompareError> {
    let spec = Synthetic {
        files: match s.sizes {
            SizeMix::Mixed => plan.mixed_files,
            SizeMix::Large => plan.large_files,
            _ => plan.small_files,
        },
        sizes: s.sizes,
        sites: s.sites,
        site_domain: SITE_DOMAIN.into(),
        path_exponent: s.zipf,
        site_exponent: 1.0,
    };
    // Only the authority of the target matters here (the single-site Host).
    let host = target
        .authority()
        .cloned()
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    Workload::synthetic(&spec, &host).map_err(|e| CompareError::Gen(e.into()))
}

impl Plan {
    pub fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == scenario)
    }

    /// The measured length of each half of the isolation scenario: long enough for several
    /// origin round trips per miss client.
    fn isolation_duration(&self) -> Duration {
        self.duration.max(self.origin_delay * 3)
    }

    /// Cold files one round's isolation scenario may use (each server gets the same ones, in
    /// its own cache): every miss client's requests over the run, plus slack.
    fn cold_per_round(&self) -> usize {
        let run = self.warmup + self.isolation_duration();
        let per_client = (run.as_secs_f64() / self.origin_delay.as_secs_f64().max(0.05)).ceil();
        self.miss_clients * (per_client as usize + 2)
    }
}

/// Runs the whole comparison. Stops every process it started, also on error or Ctrl-C.
pub async fn run(plan: &Plan) -> Result<Outcome, CompareError> {
    tokio::select! {
        r = run_inner(plan) => r,
        _ = tokio::signal::ctrl_c() => Err(CompareError::Interrupted),
    }
}

async fn run_inner(plan: &Plan) -> Result<Outcome, CompareError> {
    let want = |k| plan.servers.contains(&k);
    let (nginx_bin, varnish_bin) = servers::ensure_tools(want(ServerKind::Varnish))?;
    let edge_bin = if want(ServerKind::Edge) {
        Some(edge_binary(plan)?)
    } else {
        None
    };

    let temp;
    let work = match &plan.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("loadtest-compare-")
                .tempdir()
                .map_err(io("creating a work folder"))?;
            temp.path().to_path_buf()
        }
    };
    // nginx workers run as an unprivileged user when started as root: let them read the site.
    set_mode(&work, 0o755)?;
    let site_dir = work.join("site");
    {
        let sets = [
            (SizeMix::Small, plan.small_files),
            (SizeMix::Mixed, plan.mixed_files),
            (SizeMix::Large, plan.large_files),
            (SizeMix::Cold, plan.cold_per_round() * plan.rounds),
            (SizeMix::Burst, plan.rounds),
        ];
        let dir = site_dir.clone();
        let written = tokio::task::spawn_blocking(move || {
            sets.iter()
                .map(|&(mix, n)| site::write_site(&dir, n, mix).map(|s| (mix, s)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| CompareError::Gen(e.into()))?;
        let shown: Vec<String> = written
            .iter()
            .map(|(mix, s)| format!("{} {} ({:.1} MiB)", s.files, mix.as_str(), mib(s.bytes)))
            .collect();
        eprintln!("site: {} in {}", shown.join(", "), site_dir.display());
    }
    let certs = work.join("certs");
    make_certificate(&certs)?;

    // The origin every cache fills from: the edge's store, and the site for the others.
    let origin = origin::Origin::start(&[work.join("store"), site_dir.clone()])?;
    origin.knobs.set(Duration::ZERO, plan.origin_rate);
    let (store_port, site_port) = (origin.ports[0], origin.ports[1]);

    let sites = SCENARIOS.iter().map(|s| s.sites).max().unwrap_or(1);
    let mut running = Vec::new();
    for kind in &plan.servers {
        let r = match kind {
            ServerKind::Edge => {
                // Present: computed above whenever the edge is wanted.
                let bin = edge_bin.as_deref().unwrap_or(Path::new("edge"));
                start_edge(bin, &work, &site_dir, sites, store_port, &certs).await?
            }
            ServerKind::Nginx => {
                start_nginx(&nginx_bin, &work, &site_dir, site_port, &certs).await?
            }
            ServerKind::Varnish => {
                let bin = varnish_bin.as_deref().unwrap_or(Path::new("varnishd"));
                start_varnish(bin, &work, site_port).await?
            }
        };
        eprintln!(
            "{} ready: {} (h2: {}, https: {}, cache: {})",
            kind.as_str(),
            r.h1,
            r.h2,
            r.https.as_ref().map_or("-".to_string(), |u| u.to_string()),
            r.cache
        );
        running.push(r);
    }

    for r in &running {
        warm(r, plan).await?;
    }

    let mut runs: Vec<RunRecord> = Vec::new();
    let mut special_runs: Vec<SpecialRecord> = Vec::new();
    let mut open_rate = plan.open_rate;
    let steady: Vec<&Scenario> = SCENARIOS.iter().filter(|s| plan.wants(s.name)).collect();
    let specials: Vec<&str> = SPECIALS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| plan.wants(n))
        .collect();
    let count = running.len();
    let total_runs = plan.rounds * (steady.len() + specials.len()) * count;
    let mut n = 0;
    for round in 0..plan.rounds {
        for s in &steady {
            let rate = if s.open {
                *open_rate.get_or_insert_with(|| default_open_rate(&runs))
            } else {
                0.0
            };
            for i in 0..count {
                let r = &mut running[(i + round) % count];
                n += 1;
                for p in &mut r.measured {
                    p.check_alive()?;
                }
                let Some(target) = r.target(s) else {
                    continue;
                };
                let workload = Arc::new(workload_for(s, plan, &target)?);
                let mut opts = RunOptions::new(target);
                opts.proto = s.proto;
                opts.connections = s.connections;
                opts.streams = s.streams;
                opts.warmup = plan.warmup;
                opts.duration = plan.duration;
                opts.seed = round as u64 + 1;
                opts.tls.insecure = true;
                if s.open {
                    opts.mode = Mode::Open { rate };
                }
                let report = loadgen::run(&opts, workload).await?;
                eprintln!(
                    "[{n}/{total_runs}] round {} {:<14} {:<8} {:>9.0} req/s {:>8.1} MiB/s  p99 {:>7.3} ms  errors {}",
                    round + 1,
                    s.name,
                    r.kind.as_str(),
                    report.req_per_s,
                    report.mib_per_s,
                    report.latency_ms.p99,
                    report.error_total,
                );
                runs.push(RunRecord {
                    round,
                    scenario: s.name,
                    server: r.kind,
                    report,
                });
            }
        }
        for name in &specials {
            let rate = *open_rate.get_or_insert_with(|| default_open_rate(&runs));
            for i in 0..count {
                let r = &mut running[(i + round) % count];
                n += 1;
                for p in &mut r.measured {
                    p.check_alive()?;
                }
                let rec = match *name {
                    "isolation" => isolation(r, plan, round, &origin, rate / 2.0).await?,
                    "burst" => burst(r, plan, round, &origin).await?,
                    "idle-h1" => idle(r, plan, round, Proto::H1, name).await?,
                    _ => idle(r, plan, round, Proto::H2, name).await?,
                };
                let figures: Vec<String> = rec
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1}"))
                    .collect();
                eprintln!(
                    "[{n}/{total_runs}] round {} {:<14} {:<8} {}  failed {}{}",
                    round + 1,
                    name,
                    r.kind.as_str(),
                    figures.join("  "),
                    rec.failed,
                    rec.first_failure
                        .as_ref()
                        .map_or(String::new(), |f| format!(" (first: {f})")),
                );
                special_runs.push(rec);
            }
        }
    }

    let peak_rss_kib: BTreeMap<ServerKind, u64> = running
        .iter()
        .map(|r| (r.kind, r.measured.iter().map(Proc::peak_rss_kib).sum()))
        .collect();
    // Stop every server now (by PID), before writing results.
    drop(running);
    drop(origin);

    let cells = summarize(&runs);
    let specials = summarize_specials(&special_runs);
    let open_rate = open_rate.unwrap_or(0.0);
    let table = table::render(&cells, &peak_rss_kib, open_rate, &plan.servers);
    let issue_table = table::render_issue(
        &cells,
        &specials,
        &plan.servers,
        &table::IssueParams {
            burst_clients: plan.burst_clients,
            miss_clients: plan.miss_clients,
            idle_connections: plan.idle_connections,
            origin_delay_ms: plan.origin_delay.as_secs_f64() * 1e3,
        },
    );
    let chart_data = table::render_chart_data(&cells, &plan.servers);
    let outcome = Outcome {
        rounds: plan.rounds,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        open_rate,
        origin_delay_ms: plan.origin_delay.as_secs_f64() * 1e3,
        origin_rate: plan.origin_rate,
        scenarios: SCENARIOS.to_vec(),
        cells,
        specials,
        peak_rss_kib,
        runs,
        special_runs,
        table,
        issue_table,
        chart_data,
    };
    std::fs::create_dir_all(&plan.out).map_err(io(format!("creating {}", plan.out.display())))?;
    crate::loadgen::cli::write_json(&plan.out.join("compare.json"), &outcome)?;
    chart::draw(&plan.out.join("latency.svg"), &outcome, open_rate)?;
    Ok(outcome)
}

/// The Host of site 0, where the special scenarios go.
fn site0() -> http::uri::Authority {
    site_host(0, SITE_DOMAIN)
        .parse()
        .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
}

/// Hot hits alone, then the same hits while `plan.miss_clients` clients request cold files
/// through the origin's delay; the hits' p99 both times and the misses' latencies.
async fn isolation(
    r: &Running,
    plan: &Plan,
    round: usize,
    origin: &origin::Origin,
    rate: f64,
) -> Result<SpecialRecord, CompareError> {
    let per_round = plan.cold_per_round();
    let cold: Vec<(String, u64)> = (round * per_round..(round + 1) * per_round)
        .map(|i| {
            (
                site::file_path(SizeMix::Cold, i),
                site::file_size(SizeMix::Cold, i),
            )
        })
        .collect();
    let workload = Arc::new(workload_for(&SCENARIOS[0], plan, &r.cache)?);
    let mut opts = RunOptions::new(r.cache.clone());
    opts.connections = 32;
    opts.mode = Mode::Open { rate };
    opts.warmup = plan.warmup;
    opts.duration = plan.isolation_duration();
    opts.seed = round as u64 + 1;
    let alone = loadgen::run(&opts, workload.clone()).await?;
    origin.knobs.set(plan.origin_delay, plan.origin_rate);
    let until = std::time::Instant::now() + opts.warmup + opts.duration;
    let host = site0();
    let misses = special::misses(&r.cache, &host, Arc::new(cold), plan.miss_clients, until);
    let (with, misses) = tokio::join!(loadgen::run(&opts, workload), misses);
    origin.knobs.set(Duration::ZERO, plan.origin_rate);
    let (with, misses) = (with?, misses?);
    let hit_errors = alone.error_total + with.error_total;
    let mut figures = BTreeMap::new();
    figures.insert("hits_alone_p99_ms", alone.latency_ms.p99);
    figures.insert("hits_p99_ms", with.latency_ms.p99);
    figures.insert("hits_req_per_s", with.req_per_s);
    figures.insert("misses_p50_ms", misses.quantile(0.5));
    figures.insert("misses_p99_ms", misses.quantile(0.99));
    figures.insert("misses", misses.ms.len() as f64);
    Ok(SpecialRecord {
        round,
        scenario: "isolation",
        server: r.kind,
        figures,
        failed: misses.failed + hit_errors,
        first_failure: misses
            .first_failure
            .or_else(|| (hit_errors > 0).then(|| format!("{hit_errors} hot-hit requests failed"))),
    })
}

/// `plan.burst_clients` clients at once on this round's cold burst file.
async fn burst(
    r: &Running,
    plan: &Plan,
    round: usize,
    origin: &origin::Origin,
) -> Result<SpecialRecord, CompareError> {
    let file = site::file_path(SizeMix::Burst, round);
    let before = origin.knobs.fetches();
    let t = special::burst(
        &r.cache,
        &site0(),
        &file,
        plan.burst_clients,
        site::BURST_SIZE,
    )
    .await?;
    let mut figures = BTreeMap::new();
    figures.insert("p50_ms", t.quantile(0.5));
    figures.insert("p99_ms", t.quantile(0.99));
    figures.insert("origin_fetches", (origin.knobs.fetches() - before) as f64);
    Ok(SpecialRecord {
        round,
        scenario: "burst",
        server: r.kind,
        figures,
        failed: t.failed,
        first_failure: t.first_failure,
    })
}

/// `plan.idle_connections` idle keep-alive connections: resident memory per connection.
async fn idle(
    r: &Running,
    plan: &Plan,
    round: usize,
    proto: Proto,
    name: &'static str,
) -> Result<SpecialRecord, CompareError> {
    let target = if proto == Proto::H2 { &r.h2 } else { &r.h1 };
    let file = site::file_path(SizeMix::Small, 0);
    let c = special::idle(
        target,
        proto,
        &site0(),
        &file,
        plan.idle_connections,
        Duration::from_secs(3),
        &r.measured,
    )
    .await?;
    let mut figures = BTreeMap::new();
    figures.insert("kib_per_connection", c.kib_per_connection);
    figures.insert("connections", c.connections as f64);
    figures.insert("rss_before_mib", c.rss_before_kib as f64 / 1024.0);
    Ok(SpecialRecord {
        round,
        scenario: name,
        server: r.kind,
        figures,
        failed: c.failed,
        first_failure: (c.failed > 0).then(|| format!("{} connections failed", c.failed)),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CompareError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

/// A self-signed ECDSA P-256 certificate for every name the comparison uses, as `default.crt`
/// and `default.key` in `dir` (the edge's layout; nginx is pointed at the same files).
fn make_certificate(dir: &Path) -> Result<(), CompareError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    run_cmd(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .args(["-subj", "/CN=loadtest.test", "-addext"])
            .arg(format!(
                "subjectAltName=DNS:*.{SITE_DOMAIN},DNS:localhost,IP:127.0.0.1"
            ))
            .arg("-keyout")
            .arg(dir.join("default.key"))
            .arg("-out")
            .arg(dir.join("default.crt")),
    )?;
    set_mode(&dir.join("default.key"), 0o644)
}

/// Half the slowest server's median h1-small rate so far, rounded down to 100 (at least 100):
/// a load every server sustains, so the open loop measures latency, not overload.
fn default_open_rate(runs: &[RunRecord]) -> f64 {
    let mut by_server: BTreeMap<ServerKind, Vec<f64>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.scenario == SCENARIOS[0].name) {
        by_server
            .entry(r.server)
            .or_default()
            .push(r.report.req_per_s);
    }
    let slowest = by_server
        .into_values()
        .map(table::median)
        .fold(f64::INFINITY, f64::min);
    if slowest.is_finite() {
        ((slowest * 0.5 / 100.0).floor() * 100.0).max(100.0)
    } else {
        1000.0
    }
}

fn summarize(runs: &[RunRecord]) -> BTreeMap<String, BTreeMap<ServerKind, Cell>> {
    let mut out: BTreeMap<String, BTreeMap<ServerKind, Cell>> = BTreeMap::new();
    for s in &SCENARIOS {
        for kind in ServerKind::ALL {
            let these: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.scenario == s.name && r.server == kind)
                .collect();
            if these.is_empty() {
                continue;
            }
            let mut merged: Histogram<u64> = report::new_histogram();
            for r in &these {
                // Same bounds everywhere (`new_histogram`): adding cannot fail.
                let _ = merged.add(&r.report.histogram);
            }
            let med =
                |f: fn(&Report) -> f64| table::median(these.iter().map(|r| f(&r.report)).collect());
            let cell = Cell {
                req_per_s: med(|r| r.req_per_s),
                p99_ms: med(|r| r.latency_ms.p99),
                mib_per_s: med(|r| r.mib_per_s),
                errors: these.iter().map(|r| r.report.error_total).sum(),
                non_200: these
                    .iter()
                    .map(|r| {
                        r.report.responses - r.report.statuses.get("200").copied().unwrap_or(0)
                    })
                    .sum(),
                latency_ms: Latency::of(&merged),
                curve: report::curve(&merged),
            };
            out.entry(s.name.to_string())
                .or_default()
                .insert(kind, cell);
        }
    }
    out
}

fn summarize_specials(runs: &[SpecialRecord]) -> Specials {
    let mut values: BTreeMap<(String, ServerKind, String), Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (k, v) in &r.figures {
            values
                .entry((r.scenario.to_string(), r.server, k.to_string()))
                .or_default()
                .push(*v);
        }
    }
    let mut out = Specials::new();
    for ((scenario, server, figure), vs) in values {
        out.entry(scenario)
            .or_default()
            .entry(server)
            .or_default()
            .insert(figure, table::median(vs));
    }
    out
}

/// Fetches every URL of every steady scenario once over HTTP/1.1, checking each answer is a
/// 200; on a server whose cache port is not its static one (nginx), the hot small files once
/// more through the cache. Cold and burst files are never warmed.
async fn warm(r: &Running, plan: &Plan) -> Result<(), CompareError> {
    let mut targets = Vec::new();
    for s in SCENARIOS.iter().filter(|s| plan.wants(s.name)) {
        for t in workload_for(s, plan, &r.h1)?.all_targets() {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    let mut passes = vec![(r.h1.clone(), targets)];
    if r.cache != r.h1 {
        let hot = workload_for(&SCENARIOS[0], plan, &r.cache)?.all_targets();
        passes.push((r.cache.clone(), hot));
    }
    for (to, targets) in passes {
        // `--scenarios` may leave nothing to warm.
        if targets.is_empty() {
            continue;
        }
        let total = targets.len() as u64;
        let mut opts = RunOptions::new(to.clone());
        opts.connections = 8;
        opts.warmup = Duration::ZERO;
        opts.duration = Duration::from_secs(600);
        opts.timeout = Duration::from_secs(60);
        opts.max_requests = total;
        let report = loadgen::run(&opts, Arc::new(Workload::List(targets))).await?;
        let ok = report.statuses.get("200").copied().unwrap_or(0);
        if ok != total {
            return Err(CompareError::Warm {
                server: r.kind.as_str(),
                bad: total - ok,
                total,
                detail: format!("statuses {:?}, errors {:?}", report.statuses, report.errors),
            });
        }
        eprintln!(
            "{}: warmed {total} URLs ({:.1} MiB) through {to} in {:.1} s",
            r.kind.as_str(),
            mib(report.bytes),
            report.elapsed_s
        );
    }
    Ok(())
}

fn url(scheme: &str, port: u16) -> http::Uri {
    // A loopback address with a port is always a valid URI.
    format!("{scheme}://127.0.0.1:{port}/")
        .parse()
        .unwrap_or_else(|_| unreachable!())
}

async fn start_edge(
    bin: &Path,
    work: &Path,
    site_dir: &Path,
    sites: usize,
    origin_port: u16,
    certs: &Path,
) -> Result<Running, CompareError> {
    let store = work.join("store");
    for k in 0..sites {
        let name = format!("{SITE_PREFIX}{k}");
        run_cmd(
            Command::new(bin)
                .arg("publish")
                .arg(site_dir)
                .args(["--site", &name, "--store"])
                .arg(&store),
        )?;
        run_cmd(
            Command::new(bin)
                .args(["hosts", "add", &site_host(k, SITE_DOMAIN), "--site", &name])
                .arg("--store")
                .arg(&store),
        )?;
    }
    // The admin listener off (its default port may be taken), warnings only.
    let config = work.join("edge.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"\"\n\n[log]\nlevel = \"warn\"\n",
    )
    .map_err(io("writing edge.toml"))?;
    let port = servers::free_port()?;
    let tls_port = servers::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        // The store, read through the origin like a remote one.
        .args(["--store", &format!("http://127.0.0.1:{origin_port}/")])
        .arg("--cache-dir")
        .arg(work.join("edge-cache"))
        .args(["--listen", &addr.to_string()])
        .args(["--tls-listen", &format!("127.0.0.1:{tls_port}")])
        .arg("--cert-dir")
        .arg(certs)
        .args(["--default-site", &format!("{SITE_PREFIX}0")])
        .env("RUST_LOG", "warn");
    let mut p = Proc::spawn("edge", cmd, &work.join("edge.log"))?;
    servers::wait_ready(&mut p, addr).await?;
    Ok(Running {
        kind: ServerKind::Edge,
        h1: url("http", port),
        h2: url("http", port),
        https: Some(url("https", tls_port)),
        h3: true,
        cache: url("http", port),
        measured: vec![p],
    })
}

async fn start_nginx(
    bin: &Path,
    work: &Path,
    site_dir: &Path,
    origin_port: u16,
    certs: &Path,
) -> Result<Running, CompareError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let prefix = work.join("nginx");
    std::fs::create_dir_all(&prefix).map_err(io(format!("creating {}", prefix.display())))?;
    let ports = servers::NginxPorts {
        h1: servers::free_port()?,
        h2: Some(servers::free_port()?),
        tls: Some((
            servers::free_port()?,
            certs.join("default.crt"),
            certs.join("default.key"),
        )),
        cache: Some((servers::free_port()?, origin_port)),
    };
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        servers::nginx_conf(&prefix, site_dir, workers, &ports),
    )
    .map_err(io("writing nginx.conf"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    let mut p = Proc::spawn("nginx", cmd, &prefix.join("stderr.log"))?;
    servers::wait_ready(&mut p, SocketAddr::from(([127, 0, 0, 1], ports.h1))).await?;
    let port = |o: Option<u16>| o.unwrap_or(ports.h1);
    Ok(Running {
        kind: ServerKind::Nginx,
        h1: url("http", ports.h1),
        h2: url("http", port(ports.h2)),
        https: ports.tls.as_ref().map(|(p, _, _)| url("https", *p)),
        h3: false,
        cache: url("http", port(ports.cache.map(|(p, _)| p))),
        measured: vec![p],
    })
}

async fn start_varnish(bin: &Path, work: &Path, origin_port: u16) -> Result<Running, CompareError> {
    let port = servers::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let state = work.join("varnish");
    let mut cmd = Command::new(bin);
    cmd.arg("-F")
        .arg("-n")
        .arg(&state)
        .args(["-a", &addr.to_string()])
        .args(["-b", &format!("127.0.0.1:{origin_port}")])
        .args(["-T", "none"])
        // Room for every file of the comparison (about 550 MiB at the defaults).
        .args(["-s", "malloc,1g"])
        // h2c (prior knowledge and upgrade) on the same port.
        .args(["-p", "feature=+http2"])
        // The origin sends no Cache-Control: keep objects for the whole comparison.
        .args(["-p", "default_ttl=86400"])
        .args(["-p", "default_grace=0"]);
    let mut p = Proc::spawn("varnish", cmd, &work.join("varnish.log"))?;
    servers::wait_ready(&mut p, addr).await?;
    Ok(Running {
        kind: ServerKind::Varnish,
        h1: url("http", port),
        h2: url("http", port),
        https: None,
        h3: false,
        cache: url("http", port),
        measured: vec![p],
    })
}
