//! `loadtest compare`: arguments, turned into a [`Plan`].

use std::path::PathBuf;
use std::time::Duration;

use super::{CompareError, Plan, SCENARIOS, ServerKind};
use crate::loadgen::cli::parse_duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// About 4 minutes: 3 rounds of 3 s (1 s warm-up) per scenario and server. Without it
    /// about 10 minutes: 5 rounds of 8 s (2 s warm-up).
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
    pub fn plan(&self) -> Plan {
        let (rounds, duration, warmup) = if self.quick {
            (3, Duration::from_secs(3), Duration::from_secs(1))
        } else {
            (5, Duration::from_secs(8), Duration::from_secs(2))
        };
        let mut servers = self.servers.clone();
        servers.sort();
        servers.dedup();
        Plan {
            servers,
            rounds: self.rounds.unwrap_or(rounds).max(1),
            warmup: self.warmup.unwrap_or(warmup),
            duration: self.duration.unwrap_or(duration),
            small_files: self.small_files,
            mixed_files: self.mixed_files,
            open_rate: self.open_rate,
            out: self.out.clone(),
            work_dir: self.work_dir.clone(),
            edge_bin: self.edge_bin.clone(),
        }
    }
}

/// Runs the comparison and prints the table and the chart's numbers.
pub async fn run(args: CompareArgs) -> Result<(), CompareError> {
    let plan = args.plan();
    let per_run = plan.warmup + plan.duration;
    let estimate =
        per_run.as_secs_f64() * (plan.rounds * SCENARIOS.len() * plan.servers.len()) as f64;
    eprintln!(
        "compare: {} x {} rounds x {} scenarios, {:.0} s per run: about {:.1} min of load",
        plan.servers
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("/"),
        plan.rounds,
        SCENARIOS.len(),
        per_run.as_secs_f64(),
        estimate / 60.0
    );
    let outcome = super::run(&plan).await?;
    println!();
    for s in &SCENARIOS {
        println!("{:<14} {}", s.name, s.title);
    }
    println!();
    print!("{}", outcome.table);
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
