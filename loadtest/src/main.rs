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
    /// Serve a store's layout over HTTP/1.1, injecting faults by rule (control: /_chaos/).
    ChaosOrigin(loadtest::chaos::cli::ChaosOriginArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::ChaosOrigin(args) => loadtest::chaos::cli::run(args).await?,
    }
    Ok(())
}
