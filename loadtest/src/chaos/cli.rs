//! `loadtest chaos-origin`: serve a store with faults until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use origin_client::{Access, open_store};

use super::{ChaosError, ChaosOptions, ChaosOrigin, parse_rules};

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosOriginArgs {
    /// The store to serve: a path, a file:// URL or an http(s):// URL; opened read-only.
    #[arg(long, value_name = "STORE")]
    pub upstream: String,
    /// The address to listen on (port 0 picks a free port; the line printed says which).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` on the /_chaos/ control endpoint.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CHAOS_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub control_token: Option<String>,
    /// Rules to start with: a JSON rule list, as `PUT /_chaos/rules` takes.
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Seed for probability and jitter rolls (default: from the clock).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// Runs the origin until SIGINT or SIGTERM, then shuts it down cleanly. Prints
/// `chaos-origin listening on http://ADDR/` to standard output once bound.
pub async fn run(args: ChaosOriginArgs) -> Result<(), ChaosError> {
    let store = open_store(&args.upstream, Access::Read).map_err(ChaosError::Store)?;
    let rules = match &args.rules {
        Some(path) => {
            let text = tokio::fs::read(path)
                .await
                .map_err(|source| ChaosError::RulesFile {
                    path: path.clone(),
                    source,
                })?;
            parse_rules(&text)?
        }
        None => Vec::new(),
    };
    let opts = ChaosOptions {
        control_token: args.control_token,
        rules,
        seed: args.seed,
        ..ChaosOptions::default()
    };
    let origin = ChaosOrigin::start_with(store, args.listen, opts).await?;
    {
        let mut out = std::io::stdout().lock();
        // A closed stdout is no reason to stop serving.
        let _ = writeln!(out, "chaos-origin listening on http://{}/", origin.addr());
        let _ = out.flush();
    }
    let waited = shutdown_signal().await;
    tracing::info!("shutting down");
    origin.shutdown().await;
    waited
}

#[cfg(unix)]
async fn shutdown_signal() -> Result<(), ChaosError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ChaosError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ChaosError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn shutdown_signal() -> Result<(), ChaosError> {
    tokio::signal::ctrl_c().await.map_err(ChaosError::Signal)
}
