//! `loadtest compare`: arguments, turned into a [`Plan`].

use std::path::PathBuf;
use std::time::Duration;

use super::{CompareError, Plan, SCENARIOS, SPECIALS, ServerKind};
use crate::loadgen::cli::parse_duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// 3 rounds of 3 s (1 s warm-up) per scenario and server: about 12 minutes with every
    /// scenario and server. Without it 5 rounds of 8 s (2 s warm-up): about 35 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each runs every scenario against every server) [default: 5, quick: 3].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Measured seconds per run [default: 8s, quick: 3s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Warm-up per run [default: 2s, quick: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// Servers to compare (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "edge,nginx,varnish"
    )]
    pub servers: Vec<ServerKind>,
    /// Files in the small-file site.
    #[arg(long, default_value_t = 1000)]
    pub small_files: usize,
    /// Files in the mixed-size site (about 180 KiB each on average).
    #[arg(long, default_value_t = 300)]
    pub mixed_files: usize,
    /// Files in the PoP-sized site: every hundredth 4-16 MiB, the rest up to 512 KiB, four
    /// levels deep; 2,150 make about 375 MiB, more than the edge's 256 MiB memory tier.
    #[arg(long, default_value_t = 2150)]
    pub large_files: usize,
    /// Only these scenarios (comma-separated names, as the run prints them: h1-small,
    /// h2-small, h1-mixed, h1-small-open, h1-large, h1-tls-small, h2-tls-small, h3-small,
    /// isolation, burst, idle-h1, idle-h2) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Clients that request one cold 13.6 MiB file at the same moment.
    #[arg(long, default_value_t = 200)]
    pub burst_clients: usize,
    /// Clients requesting cold files, one after another, through the origin's delay while hot
    /// hits go on.
    #[arg(long, default_value_t = 100)]
    pub miss_clients: usize,
    /// Idle keep-alive connections held open to measure their memory.
    #[arg(long, default_value_t = 5000)]
    pub idle_connections: usize,
    /// The origin's first-byte delay while misses wait on it (the isolation scenario).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub origin_delay: Duration,
    /// The origin's transfer rate per response, MiB/s (0: unlimited), in every scenario.
    #[arg(long, default_value_t = 50)]
    pub origin_mib_per_s: u64,
    /// The open-loop scenario's rate [default: half the slowest server's h1 small-file rate
    /// in round 1].
    #[arg(long, value_name = "REQ_PER_S")]
    pub open_rate: Option<f64>,
    /// Where compare.json and latency.svg are written.
    #[arg(long, default_value = "target/loadtest-compare")]
    pub out: PathBuf,
    /// Keep the site, store, caches, configs and server logs here [default: a temporary
    /// folder, removed at the end].
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Use this edge binary instead of building target/release/edge.
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,
}

impl CompareArgs {
    pub fn plan(&self) -> Result<Plan, CompareError> {
        for name in &self.scenarios {
            let known =
                SCENARIOS.iter().any(|s| s.name == name) || SPECIALS.iter().any(|(n, _)| n == name);
            if !known {
                return Err(CompareError::Command(format!(
                    "--scenarios: no scenario is called {name:?}"
                )));
            }
        }
        let (rounds, duration, warmup) = if self.quick {
            (3, Duration::from_secs(3), Duration::from_secs(1))
        } else {
            (5, Duration::from_secs(8), Duration::from_secs(2))
        };
        let mut servers = self.servers.clone();
        servers.sort();
        servers.dedup();
        Ok(Plan {
            servers,
            rounds: self.rounds.unwrap_or(rounds).max(1),
            warmup: self.warmup.unwrap_or(warmup),
            duration: self.duration.unwrap_or(duration),
            small_files: self.small_files,
            mixed_files: self.mixed_files,
            large_files: self.large_files,
            only: self.scenarios.clone(),
            burst_clients: self.burst_clients.max(1),
            miss_clients: self.miss_clients.max(1),
            idle_connections: self.idle_connections.max(1),
            origin_delay: self.origin_delay,
            origin_rate: self.origin_mib_per_s << 20,
            open_rate: self.open_rate,
            out: self.out.clone(),
            work_dir: self.work_dir.clone(),
            edge_bin: self.edge_bin.clone(),
        })
    }
}

/// Runs the comparison and prints the table and the chart's numbers.
pub async fn run(args: CompareArgs) -> Result<(), CompareError> {
    let plan = args.plan()?;
    let per_run = plan.warmup + plan.duration;
    let steady = SCENARIOS.iter().filter(|s| plan.wants(s.name)).count();
    let specials = SPECIALS.iter().filter(|(n, _)| plan.wants(n)).count();
    // A special scenario takes about twice a steady run (isolation: two runs; idle: opening
    // and settling).
    let estimate =
        per_run.as_secs_f64() * (plan.rounds * (steady + 2 * specials) * plan.servers.len()) as f64;
    eprintln!(
        "compare: {} x {} rounds x {} scenarios, {:.0} s per run: about {:.1} min of load",
        plan.servers
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("/"),
        plan.rounds,
        steady + specials,
        per_run.as_secs_f64(),
        estimate / 60.0
    );
    let outcome = super::run(&plan).await?;
    println!();
    for s in &SCENARIOS {
        println!("{:<14} {}", s.name, s.title);
    }
    for (name, title) in &SPECIALS {
        println!("{name:<14} {title}");
    }
    println!();
    print!("{}", outcome.table);
    println!();
    print!("{}", outcome.issue_table);
    println!();
    print!("{}", outcome.chart_data);
    println!();
    println!(
        "results: {}  chart: {}",
        plan.out.join("compare.json").display(),
        plan.out.join("latency.svg").display()
    );
    Ok(())
}
