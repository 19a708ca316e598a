//! The `linkrift` binary: parses the command line and hands over to the crates that do
//! the work.

mod certs;
mod cluster;
mod config;
mod https;
mod restore;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: memory freed on another thread than the one that
/// took it (a click's, a response's) made glibc consolidate its arenas on the redirect path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "linkrift", version, about = "A clustered URL shortener")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (a new single-node cluster when the data directory is empty).
    Serve(Box<config::Flags>),
    /// Inspect and operate the cluster through any node's admin API.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Build a new one-node cluster from the Postgres mirror, and check it against it.
    Restore(restore::RestoreArgs),
    /// Make the cluster's CA and node certificates, for mutual TLS between nodes.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

fn init_logging(config: &config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(flags) => {
            let config = config::Config::load(&flags)?;
            init_logging(&config);
            // Chaos-test builds only: arms the points named in FAILPOINTS.
            #[cfg(feature = "failpoints")]
            let _failpoints = fail::FailScenario::setup();
            tokio::runtime::Runtime::new()?.block_on(serve::run(config))
        }
        Command::Restore(args) => {
            let filter = tracing_subscriber::EnvFilter::new("warn");
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let out = tokio::runtime::Runtime::new()?.block_on(restore::run(args))?;
            print!("{out}");
            Ok(())
        }
        Command::Certs(command) => {
            print!("{}", certs::run(command)?);
            Ok(())
        }
        Command::Cluster(command) => {
            let out = tokio::runtime::Runtime::new()?.block_on(cluster::run(command))?;
            print!("{out}");
            Ok(())
        }
    }
}
