//! The `loadtest` command: a thin dispatcher. Each subcommand's arguments and logic live in
//! the library.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load and failure testing tools for the edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate HTTP load (closed or open loop) and report latency percentiles and rates.
    Run(Box<loadtest::loadgen::cli::RunArgs>),
    /// Write a synthetic site folder matching `run --files N --sizes MIX`.
    GenSite(loadtest::loadgen::cli::GenSiteArgs),
    /// Benchmark the edge against nginx and Varnish on this machine, side by side.
    Compare(loadtest::compare::cli::CompareArgs),
    /// Serve a store's layout over HTTP/1.1, injecting faults by rule (control: /_chaos/).
    ChaosOrigin(loadtest::chaos::cli::ChaosOriginArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One TLS crypto provider for the process, installed before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => {
            loadtest::loadgen::cli::run(*args).await?;
        }
        Command::GenSite(args) => loadtest::loadgen::cli::gen_site(args).await?,
        Command::Compare(args) => loadtest::compare::cli::run(args).await?,
        Command::ChaosOrigin(args) => loadtest::chaos::cli::run(args).await?,
    }
    Ok(())
}
