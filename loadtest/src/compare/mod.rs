//! `loadtest compare`: the edge against nginx (static files) and Varnish (in front of an nginx
//! origin) on this machine, with the same files, the same workloads and the same generator.
//!
//! One run: generate a site (small files and a mixed-size set), publish it to a store under
//! several site names, start the three servers on 127.0.0.1, fetch every URL of every workload
//! once through each (warming every cache, and checking every answer is a 200), then run each
//! scenario against each server, interleaved over several rounds (the server order rotates
//! each round), and report medians over rounds, ratios, each server's peak RSS, a JSON file
//! and an SVG of the latency percentile curves.
//!
//! Code map:
//! - `servers`: child processes (start, readiness, peak RSS, stop by PID).
//! - `table`: medians, ratios and the printed table (pure).
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
pub mod servers;
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
}

/// The scenarios, in the order each round runs them. The first sets the open-loop rate.
pub const SCENARIOS: [Scenario; 4] = [
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
    },
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

/// A running server: where to reach it over HTTP/1.1 and HTTP/2, and its processes (the ones
/// whose RSS counts first; helpers such as Varnish's origin after).
struct Running {
    kind: ServerKind,
    h1: http::Uri,
    h2: http::Uri,
    measured: Vec<Proc>,
    _helpers: Vec<Proc>,
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub round: usize,
    pub scenario: &'static str,
    pub server: ServerKind,
    pub report: Report,
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

/// Everything `compare` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub rounds: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub open_rate: f64,
    pub scenarios: Vec<Scenario>,
    /// scenario name -> server -> medians.
    pub cells: BTreeMap<String, BTreeMap<ServerKind, Cell>>,
    /// Sum of VmHWM over each server's processes (Varnish: manager and cache child, not its
    /// nginx origin), KiB.
    pub peak_rss_kib: BTreeMap<ServerKind, u64>,
    pub runs: Vec<RunRecord>,
    pub table: String,
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
        let (dir, small, mixed) = (site_dir.clone(), plan.small_files, plan.mixed_files);
        let (s, m) = tokio::task::spawn_blocking(move || {
            Ok::<_, site::SiteError>((
                site::write_site(&dir, small, SizeMix::Small)?,
                site::write_site(&dir, mixed, SizeMix::Mixed)?,
            ))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| CompareError::Gen(e.into()))?;
        eprintln!(
            "site: {} small files ({:.1} MiB), {} mixed files ({:.1} MiB) in {}",
            s.files,
            mib(s.bytes),
            m.files,
            mib(m.bytes),
            site_dir.display()
        );
    }

    let sites = SCENARIOS.iter().map(|s| s.sites).max().unwrap_or(1);
    let mut running = Vec::new();
    for kind in &plan.servers {
        let r = match kind {
            ServerKind::Edge => {
                // Present: computed above whenever the edge is wanted.
                let bin = edge_bin.as_deref().unwrap_or(Path::new("edge"));
                start_edge(bin, &work, &site_dir, sites).await?
            }
            ServerKind::Nginx => start_nginx(&nginx_bin, &work, &site_dir).await?,
            ServerKind::Varnish => {
                let bin = varnish_bin.as_deref().unwrap_or(Path::new("varnishd"));
                start_varnish(bin, &nginx_bin, &work, &site_dir).await?
            }
        };
        eprintln!("{} ready: {} (h2: {})", kind.as_str(), r.h1, r.h2);
        running.push(r);
    }

    for r in &running {
        warm(r, plan).await?;
    }

    let mut runs: Vec<RunRecord> = Vec::new();
    let mut open_rate = plan.open_rate;
    let total_runs = plan.rounds * SCENARIOS.len() * running.len();
    let mut n = 0;
    for round in 0..plan.rounds {
        for s in &SCENARIOS {
            let rate = if s.open {
                *open_rate.get_or_insert_with(|| default_open_rate(&runs))
            } else {
                0.0
            };
            let count = running.len();
            for i in 0..count {
                let r = &mut running[(i + round) % count];
                for p in &mut r.measured {
                    p.check_alive()?;
                }
                let target = match s.proto {
                    Proto::H2 => r.h2.clone(),
                    _ => r.h1.clone(),
                };
                let workload = Arc::new(workload_for(s, plan, &target)?);
                let mut opts = RunOptions::new(target);
                opts.proto = s.proto;
                opts.connections = s.connections;
                opts.streams = s.streams;
                opts.warmup = plan.warmup;
                opts.duration = plan.duration;
                opts.seed = round as u64 + 1;
                if s.open {
                    opts.mode = Mode::Open { rate };
                }
                n += 1;
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
    }

    let peak_rss_kib: BTreeMap<ServerKind, u64> = running
        .iter()
        .map(|r| (r.kind, r.measured.iter().map(Proc::peak_rss_kib).sum()))
        .collect();
    // Stop every server now (by PID), before writing results.
    drop(running);

    let cells = summarize(&runs);
    let open_rate = open_rate.unwrap_or(0.0);
    let table = table::render(&cells, &peak_rss_kib, open_rate, &plan.servers);
    let chart_data = table::render_chart_data(&cells, &plan.servers);
    let outcome = Outcome {
        rounds: plan.rounds,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        open_rate,
        scenarios: SCENARIOS.to_vec(),
        cells,
        peak_rss_kib,
        runs,
        table,
        chart_data,
    };
    std::fs::create_dir_all(&plan.out).map_err(io(format!("creating {}", plan.out.display())))?;
    crate::loadgen::cli::write_json(&plan.out.join("compare.json"), &outcome)?;
    chart::draw(&plan.out.join("latency.svg"), &outcome, open_rate)?;
    Ok(outcome)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CompareError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
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

/// Fetches every URL of every scenario once over HTTP/1.1, checking each answer is a 200.
async fn warm(r: &Running, plan: &Plan) -> Result<(), CompareError> {
    let mut targets = Vec::new();
    for s in &SCENARIOS {
        for t in workload_for(s, plan, &r.h1)?.all_targets() {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    let total = targets.len() as u64;
    let mut opts = RunOptions::new(r.h1.clone());
    opts.connections = 8;
    opts.warmup = Duration::ZERO;
    opts.duration = Duration::from_secs(300);
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
        "{}: warmed {total} URLs ({:.1} MiB) in {:.1} s",
        r.kind.as_str(),
        mib(report.bytes),
        report.elapsed_s
    );
    Ok(())
}

fn url(port: u16) -> http::Uri {
    // A loopback address with a port is always a valid URI.
    format!("http://127.0.0.1:{port}/")
        .parse()
        .unwrap_or_else(|_| unreachable!())
}

async fn start_edge(
    bin: &Path,
    work: &Path,
    site_dir: &Path,
    sites: usize,
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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .arg("--cache-dir")
        .arg(work.join("edge-cache"))
        .args(["--listen", &addr.to_string()])
        .args(["--default-site", &format!("{SITE_PREFIX}0")])
        .env("RUST_LOG", "warn");
    let mut p = Proc::spawn("edge", cmd, &work.join("edge.log"))?;
    servers::wait_ready(&mut p, addr).await?;
    Ok(Running {
        kind: ServerKind::Edge,
        h1: url(port),
        h2: url(port),
        measured: vec![p],
        _helpers: Vec::new(),
    })
}

async fn start_nginx_at(
    bin: &Path,
    prefix: &Path,
    site_dir: &Path,
    workers: usize,
    h2: bool,
) -> Result<(Proc, u16, Option<u16>), CompareError> {
    std::fs::create_dir_all(prefix).map_err(io(format!("creating {}", prefix.display())))?;
    let h1_port = servers::free_port()?;
    let h2_port = if h2 {
        Some(servers::free_port()?)
    } else {
        None
    };
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        servers::nginx_conf(prefix, site_dir, workers, h1_port, h2_port),
    )
    .map_err(io("writing nginx.conf"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    let name = prefix
        .file_name()
        .map_or("nginx".into(), |n| n.to_string_lossy().into_owned());
    let mut p = Proc::spawn(&name, cmd, &prefix.join("stderr.log"))?;
    servers::wait_ready(&mut p, SocketAddr::from(([127, 0, 0, 1], h1_port))).await?;
    Ok((p, h1_port, h2_port))
}

async fn start_nginx(bin: &Path, work: &Path, site_dir: &Path) -> Result<Running, CompareError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (p, h1, h2) = start_nginx_at(bin, &work.join("nginx"), site_dir, workers, true).await?;
    Ok(Running {
        kind: ServerKind::Nginx,
        h1: url(h1),
        h2: url(h2.unwrap_or(h1)),
        measured: vec![p],
        _helpers: Vec::new(),
    })
}

async fn start_varnish(
    bin: &Path,
    nginx: &Path,
    work: &Path,
    site_dir: &Path,
) -> Result<Running, CompareError> {
    let (origin, origin_port, _) =
        start_nginx_at(nginx, &work.join("nginx-origin"), site_dir, 1, false).await?;
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
        .args(["-s", "malloc,512m"])
        // h2c (prior knowledge and upgrade) on the same port.
        .args(["-p", "feature=+http2"])
        // nginx sends no Cache-Control: keep objects for the whole comparison.
        .args(["-p", "default_ttl=86400"])
        .args(["-p", "default_grace=0"]);
    let mut p = Proc::spawn("varnish", cmd, &work.join("varnish.log"))?;
    servers::wait_ready(&mut p, addr).await?;
    Ok(Running {
        kind: ServerKind::Varnish,
        h1: url(port),
        h2: url(port),
        measured: vec![p],
        _helpers: vec![origin],
    })
}
