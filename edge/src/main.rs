//! The `edge` command: thin on purpose. It parses the command line and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// jemalloc (the default feature), configured (see `.cargo/config.toml`) to give freed memory
/// back to the OS; glibc's malloc keeps most of what 1,000 slow readers had used, and
/// fragments around long-lived idle connections. `--no-default-features`: the system
/// allocator, trimmed after load drops.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// glibc's `malloc_trim(0)`: hands the free pages of every arena back to the OS. The node
/// calls it after load drops (`edge::memory`); glibc otherwise keeps them.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
#[allow(unsafe_code)]
fn malloc_trim() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and has no preconditions; glibc locks each arena
    // while it walks it, so it is safe to call while other threads allocate.
    unsafe { malloc_trim(0) == 1 }
}

#[derive(Parser, Debug)]
#[command(
    name = "edge",
    version,
    about = "A CDN cache node for static-site deploys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish a folder as a new deploy of a site and make it current.
    Publish {
        /// The folder to publish.
        dir: PathBuf,
        /// The site name (lowercase letters, digits, `-`, `_`).
        #[arg(long)]
        site: String,
        /// The store: a path, a file:// URL or s3://BUCKET/PREFIX (http(s):// stores are
        /// read-only).
        #[arg(long)]
        store: String,
        /// Also publish `.git`, `.hg`, `.svn` and `.DS_Store`, which are skipped by default.
        #[arg(long)]
        include_skipped: bool,
        /// Do not store brotli, zstd and gzip variants of compressible files.
        #[arg(long)]
        no_compress: bool,
        /// Once the pointer moved, publish a hint on `edge.sites.<site>` at this NATS server
        /// (nats://HOST:PORT), so nodes with `[notify] nats` refresh the site at once. A
        /// failure to notify is a warning; the publish stands.
        #[arg(long, value_name = "nats://HOST:PORT")]
        notify: Option<String>,
    },
    /// Make an earlier deploy current again.
    Rollback {
        #[arg(long)]
        site: String,
        #[arg(long)]
        store: String,
        /// The deploy id to return to (see `edge deploys`).
        #[arg(long)]
        to: String,
        /// Once the pointer moved, publish a hint on `edge.sites.<site>` at this NATS server
        /// (see `edge publish --notify`).
        #[arg(long, value_name = "nats://HOST:PORT")]
        notify: Option<String>,
    },
    /// List a site's deploys, oldest first, marking the current one.
    Deploys {
        #[arg(long)]
        site: String,
        #[arg(long)]
        store: String,
    },
    /// Delete the objects no kept deploy reaches: for every site, the current deploy, the
    /// newest --keep, and every deploy newer than --grace are kept.
    Gc {
        #[arg(long)]
        store: String,
        /// Deploys kept per site besides the current one (the newest N).
        #[arg(long, default_value_t = 10)]
        keep: usize,
        /// Deploys created and objects written within this long are kept (ms, s, m, h).
        #[arg(long, default_value = "24h")]
        grace: String,
        /// Count what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify every object that every kept deploy reaches; exit non-zero naming what is
    /// missing or corrupt, with the sites, deploys and paths that reach it.
    Fsck {
        #[arg(long)]
        store: String,
        /// Check only this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Manage host names.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Serve sites from a store.
    Serve(Box<edge::cli::ServeArgs>),
    /// Validate a config file and name the key (and line) of any error.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// A live view of a running node from its admin listener (`q` quits).
    Top(edge::top::TopArgs),
    /// Serve a local folder for development, rebuilding it when files change.
    Preview {
        /// The folder to serve.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Also serve HTTPS and HTTP/3 (on --tls-listen) with a certificate generated for
        /// localhost, 127.0.0.1 and ::1; prints the https URL and the certificate's path.
        #[arg(long)]
        tls: bool,
        /// Address for HTTPS (TCP) and HTTP/3 (UDP) with --tls.
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: String,
    },
}

#[derive(Subcommand, Debug)]
enum HostsCommand {
    /// Point a host name at a site.
    Add {
        host: String,
        #[arg(long)]
        site: String,
        #[arg(long)]
        store: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    edge::memory::install_release(malloc_trim);
    // One rustls provider for the whole process (the S3 client's reqwest has none of its own
    // and uses this default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, without a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Publish {
            dir,
            site,
            store,
            include_skipped,
            no_compress,
            notify,
        } => {
            let progress = std::io::stderr().is_terminal();
            let compress = !no_compress;
            let opts = edge::cli::PublishArgs {
                include_skipped,
                compress,
                progress,
                notify: notify.as_deref(),
            };
            edge::cli::publish(&dir, &site, &store, &opts).await
        }
        Command::Rollback {
            site,
            store,
            to,
            notify,
        } => edge::cli::rollback(&site, &store, &to, notify.as_deref()).await,
        Command::Deploys { site, store } => edge::cli::deploys(&site, &store).await,
        Command::Gc {
            store,
            keep,
            grace,
            dry_run,
        } => {
            let progress = std::io::stderr().is_terminal();
            edge::cli::gc(&store, keep, &grace, dry_run, progress).await
        }
        Command::Fsck { store, site } => {
            let progress = std::io::stderr().is_terminal();
            edge::cli::fsck(&store, site.as_deref(), progress).await
        }
        Command::Hosts {
            command: HostsCommand::Add { host, site, store },
        } => edge::cli::hosts_add(&host, &site, &store).await,
        Command::Serve(args) => edge::cli::serve(*args).await,
        Command::Preview {
            dir,
            listen,
            tls,
            tls_listen,
        } => edge::cli::preview(&dir, &listen, tls.then_some(tls_listen.as_str())).await,
        Command::CheckConfig { file } => edge::cli::check_config(&file),
        Command::Top(args) => edge::top::run(args).await,
    }
}
