//! The `pgvigil` binary: the command line over the `pgvigil` library.

use clap::{Parser, Subcommand};
use pgvigil::{cli, config, daemon, demo, logging, notify, reload};
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
    /// Check a config file (the same checks as `run`, PostgreSQL's programs included) without
    /// starting anything: "ok: FILE" and exit 0, or the error and exit 64 (like `nginx -t`).
    CheckConfig {
        /// The member's config file.
        file: PathBuf,
    },
    /// Write a new cluster secret (for `peer_auth.secret_file`) to FILE, mode 0600; copy the
    /// same file to every member. Refuses to overwrite a file.
    GenSecret {
        file: PathBuf,
        /// Make the file this user's (the daemon's, e.g. `postgres`), when run as root.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// Start a local demo cluster (PostgreSQL + pgvigil per member) until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Show the cluster as a table (like `patronictl list`), asked through any member's HTTP API.
    List(cli::ListArgs),
    /// Maintenance mode on: no automatic failover; agents leave PostgreSQL as it is.
    Pause(cli::PauseArgs),
    /// Maintenance mode off: automatic failover again.
    Resume(cli::ResumeArgs),
    /// One GET of a health endpoint (`/liveness` by default): exit 0 on a 2xx answer, else 1.
    /// For container health checks (the image's HEALTHCHECK) and scripts.
    Health(cli::HealthArgs),
    /// The cluster's events: bootstrap, failovers, switchovers, members, pause/resume.
    History(cli::ApiArgs),
    /// Planned switchover to a standby: the primary stops cleanly, nothing acknowledged is lost.
    Switchover(cli::SwitchoverArgs),
    /// Forced failover to a standby, for when the primary is gone (waits out its lease).
    Failover(cli::FailoverArgs),
    /// Switch back to the preferred primary (or the one before the last change).
    Failback(cli::FailbackArgs),
    /// Re-clone a standby (its data directory is moved aside first).
    Reinit(cli::ReinitArgs),
    /// Take a backup now (pgBackRest, on the primary); waits for its end unless `--no-wait`.
    Backup(pgvigil::backup::cli::BackupArgs),
    /// The backups the cluster recorded (and the running one).
    Backups(cli::ApiArgs),
    /// Verify the latest backup now: restored and recovered on a standby's host, queried, and
    /// `pgbackrest verify` on the repository; waits for the outcome unless `--no-wait`.
    VerifyBackup(pgvigil::backup::cli::VerifyArgs),
    /// Bootstrap a new cluster's data directory from another cluster's stanza (to the end of its
    /// archive, or --time, --lsn, --name). Run before the member's daemon first starts; the new
    /// cluster archives into its own stanza. An existing data directory is moved aside.
    Restore(pgvigil::backup::restore::RestoreArgs),
    /// Internal: PostgreSQL's archive_command when [backup] is on. Pushes the WAL file with
    /// pgBackRest only while the local daemon says this member is the primary holding its lease.
    #[command(hide = true)]
    ArchivePush(pgvigil::backup::archive::ArchivePushArgs),
    /// Internal: the keeper that holds a member's postmaster and enforces its lease (started by
    /// the daemon; see ARCHITECTURE.md).
    #[command(hide = true)]
    Keeper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn gen_secret(file: &std::path::Path, owner: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = vigil_raft::auth::ClusterKey::generate().map_err(anyhow::Error::msg)?;
    let owner = match owner {
        Some(name) => Some(
            nix::unistd::User::from_name(name)?
                .with_context(|| format!("--owner: no user {name:?} on this machine"))?,
        ),
        None => None,
    };
    // create_new: overwriting the secret of a running cluster would lock its members out.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("create {}", file.display()))?;
    if let Some(user) = owner {
        nix::unistd::fchown(&f, Some(user.uid), Some(user.gid))
            .with_context(|| format!("chown {} to {}", file.display(), user.name))?;
    }
    f.write_all(format!("{secret}\n").as_bytes()).with_context(|| format!("write {}", file.display()))
}

fn main() -> ExitCode {
    // First of all for the daemon: a reload signal (SIGHUP) from now on must not end it, until
    // `reload::install` puts tokio's handler in place (and checks that SIGHUP is not left
    // ignored: children would inherit that).
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        reload::ignore_until_installed();
    }
    // While this is the only thread: PostgreSQL and hooks must not see these.
    notify::take_environment();
    // A bad command line is a usage error (64), like a bad config; help and --version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    // The archive command runs no async runtime either: one question, one push.
    if let Cmd::ArchivePush(args) = &cli.cmd {
        return ExitCode::from(pgvigil::backup::archive::archive_push(args));
    }
    // The keeper runs no async runtime: nothing of it may stall behind a scheduler.
    if let Cmd::Keeper { args } = cli.cmd {
        return match vigil_pg::keeper::KeeperArgs::parse(args) {
            Ok(args) => ExitCode::from(vigil_pg::keeper::main(args).clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("pgvigil keeper: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    // One worker thread: at rest the daemon's cost is wake-ups, and a second worker is woken to
    // steal whenever two tasks become ready together (about a third of the context switches).
    // Blocking work (fsync, pg_rewind, reading big files) leaves the worker by `block_in_place`
    // or `spawn_blocking`, so one slow disk still cannot hold up the lease or the API.
    //
    // Children (pg_basebackup, pg_rewind, pgbackrest) get SIGKILL when the *thread* that forked
    // them exits (`set_parent_death_signal`). A task that ran `block_in_place` (`off_runtime`)
    // may go on, and fork, on a thread that then belongs to the blocking pool, which ends idle
    // threads after 10 s: a restore of 1 GB from the repository was killed that way. Threads of
    // the blocking pool are kept for the process's life (there are few: the peak of blocking
    // calls at once).
    const KEEP_THREADS: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_keep_alive(KEEP_THREADS)
        .enable_all()
        .build()
    {
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
            logging::init_member(&settings.raw.log, &settings.raw.name);
            runtime.block_on(async {
                // Before anything else, before any child is started (SIGHUP is ignored until then).
                if let Err(e) = reload::install() {
                    tracing::error!("cannot handle SIGHUP (configuration reload): {e}");
                }
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
        Cmd::CheckConfig { file } => match config::load(&file) {
            Ok(s) => {
                println!(
                    "ok: {} (member {}, {}, {} members)",
                    file.display(),
                    s.raw.name,
                    pgvigil::convert::kind_name(s.raw.kind),
                    s.raw.members.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgvigil: {}: {e}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::GenSecret { file, owner } => match gen_secret(&file, owner.as_deref()) {
            Ok(()) => {
                println!(
                    "wrote a new cluster secret to {} (mode 0600): copy it to every member and set \
                     peer_auth.secret_file",
                    file.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgvigil gen-secret: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Demo(args) => {
            logging::init(&config::LogConfig { level: "warn".into(), ..Default::default() });
            runtime.block_on(demo::run(args))
        }
        Cmd::List(args) => runtime.block_on(report(cli::list(args))),
        Cmd::Pause(args) => runtime.block_on(report(cli::pause(args))),
        Cmd::Resume(args) => runtime.block_on(report(cli::resume(args))),
        Cmd::History(args) => runtime.block_on(report(cli::history(args))),
        Cmd::Health(args) => runtime.block_on(report(cli::health(args))),
        Cmd::Switchover(args) => runtime.block_on(report(cli::switchover(args))),
        Cmd::Failover(args) => runtime.block_on(report(cli::failover(args))),
        Cmd::Failback(args) => runtime.block_on(report(cli::failback(args))),
        Cmd::Reinit(args) => runtime.block_on(report(cli::reinit(args))),
        Cmd::Backup(args) => runtime.block_on(report(pgvigil::backup::cli::backup(args))),
        Cmd::Backups(args) => runtime.block_on(report(pgvigil::backup::cli::backups(args))),
        Cmd::VerifyBackup(args) => runtime.block_on(report(pgvigil::backup::cli::verify(args))),
        Cmd::Restore(args) => {
            logging::init(&config::LogConfig { level: "warn".into(), ..Default::default() });
            runtime.block_on(report(pgvigil::backup::restore::restore(args)))
        }
        Cmd::Keeper { .. } | Cmd::ArchivePush(_) => unreachable!("handled before the runtime starts"),
    }
}

/// A CLI verb's outcome as an exit code; a bad config file is a usage error (64).
async fn report(verb: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    match verb.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgvigil: {e:#}");
            if e.downcast_ref::<config::ConfigError>().is_some()
                || e.downcast_ref::<pgvigil::backup::restore::UsageError>().is_some()
            {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
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
