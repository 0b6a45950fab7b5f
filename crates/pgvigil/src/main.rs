//! The `pgvigil` binary: the command line over the `pgvigil` library.

use clap::{Parser, Subcommand};
use pgvigil::{config, daemon, demo, list, logging};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration or command line (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "pgvigil", version, about = "Keeps a PostgreSQL cluster writable: health checks, Raft, failover.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon of one member.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a local demo cluster (PostgreSQL + pgvigil per member) until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Show the cluster as its members see it.
    List {
        /// Peer (gRPC) address of any member.
        #[arg(long, env = "PGVIGIL_PEER", default_value = "127.0.0.1:7001")]
        peer: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgvigil: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.cmd {
        Cmd::Run { config } => {
            let settings = match config::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("pgvigil: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            logging::init(&settings.raw.log);
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                match daemon::run(settings, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Cmd::Demo(args) => {
            logging::init(&config::LogConfig { level: "warn".into(), ..Default::default() });
            runtime.block_on(demo::run(args))
        }
        Cmd::List { peer, json } => runtime.block_on(async {
            match list::run(&peer, json).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgvigil: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// Cancel `token` on SIGTERM or SIGINT.
async fn stop_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    token.cancel();
}
