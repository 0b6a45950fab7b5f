//! `run_on = "standby"`: this member's pgBackRest TLS server (`pgbackrest server`), through which
//! a standby's pgBackRest reaches this member's PostgreSQL when it is the primary (`pg1`,
//! `pg1-host-type=tls`). Supervised like the daemon's other children: run as PostgreSQL's user in
//! its own process group, killed with the daemon (parent-death signal), restarted with a capped
//! backoff when it exits, stopped (SIGTERM, then SIGKILL after a deadline) on shutdown. Every
//! wait has a deadline; a cause is logged once per change, not once per restart.

use super::pgbackrest::{self, PgBackRest};
use crate::daemon::Shared;
use anyhow::Context;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vigil_core::backup::BackupSource;
use vigil_core::repeats::{Repeats, LOG_EVERY};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that ran this long before it exited starts again after the first backoff.
const STABLE: Duration = Duration::from_secs(60);
/// How long a started server must keep running before it is offered to the others.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a stopped server has between SIGTERM and SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// What this member's reports offer: its TLS server and PostgreSQL's paths, while the server
/// runs (None without `run_on = "standby"`, or while it is down).
pub fn source(shared: &Shared) -> Option<BackupSource> {
    shared.backup_source.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn offer(shared: &Shared, source: Option<BackupSource>) {
    *shared.backup_source.lock().unwrap_or_else(|p| p.into_inner()) = source;
}

pub async fn run(shared: Arc<Shared>, pgb: PgBackRest, shutdown: CancellationToken) {
    let Some(srv) = shared.settings.backup.as_ref().and_then(|b| b.server.clone()) else { return };
    let dir = pgbackrest::dir(&shared.settings);
    let offered = pgbackrest::source_of(&srv, &pgb.pg);
    let mut backoff = FIRST_BACKOFF;
    let mut said: Repeats<String> = Repeats::new(LOG_EVERY);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match spawn(&pgb, &srv, &dir) {
            Ok(mut child) => {
                let settled = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = tokio::time::timeout(SETTLE, child.wait()) => Some(r),
                };
                let status = match settled {
                    None => {
                        stop(&mut child).await;
                        break;
                    }
                    Some(Ok(status)) => status,
                    Some(Err(_)) => {
                        offer(&shared, Some(offered.clone()));
                        tracing::info!(address = %srv.listen, port = srv.port, "pgBackRest TLS server running");
                        let status = tokio::select! {
                            _ = shutdown.cancelled() => None,
                            s = child.wait() => Some(s),
                        };
                        offer(&shared, None);
                        match status {
                            None => {
                                stop(&mut child).await;
                                break;
                            }
                            Some(s) => s,
                        }
                    }
                };
                if started.elapsed() >= STABLE {
                    backoff = FIRST_BACKOFF;
                }
                let why = match status {
                    Ok(s) => format!("exited ({s}): {}", stderr_tail(&dir)),
                    Err(e) => format!("cannot be waited for: {e}"),
                };
                if let Some(o) = said.occurred(Instant::now(), why.clone()) {
                    tracing::warn!(suppressed = o.field(), retry_in = ?backoff, "pgBackRest TLS server {why}");
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                if let Some(o) = said.occurred(Instant::now(), why.clone()) {
                    tracing::error!(suppressed = o.field(), retry_in = ?backoff, "pgBackRest TLS server not started: {why}");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    offer(&shared, None);
}

fn stderr_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("log").join("server-stderr.log")
}

fn stderr_tail(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(stderr_path(dir)).unwrap_or_default();
    vigil_pg::tool::tail(text.trim(), 3)
}

/// Start `pgbackrest server` with fresh copies of the `[tls]` files; its standard error goes to
/// `log/server-stderr.log` (truncated at each start), its own log beside it.
fn spawn(
    pgb: &PgBackRest,
    srv: &crate::config::TlsServer,
    dir: &std::path::Path,
) -> anyhow::Result<tokio::process::Child> {
    pgbackrest::copy_tls_files(srv, dir, pgb.run_as)?;
    let stderr = std::fs::File::create(stderr_path(dir)).context("create log/server-stderr.log")?;
    if let Some(r) = pgb.run_as {
        let _ = nix::unistd::chown(&stderr_path(dir), Some(nix::unistd::Uid::from_raw(r.uid)), None);
    }
    let mut cmd = tokio::process::Command::new(&pgb.program);
    cmd.arg(format!("--config={}", pgb.config.display())).arg("server");
    vigil_pg::tool::scrub_env(cmd.as_std_mut());
    cmd.current_dir("/").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(stderr));
    if let Some(r) = pgb.run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
    cmd.process_group(0).kill_on_drop(true);
    vigil_pg::process::set_parent_death_signal(cmd.as_std_mut(), nix::sys::signal::Signal::SIGKILL);
    cmd.spawn().with_context(|| format!("run {} server (backup.pgbackrest)", pgb.program.display()))
}

/// SIGTERM to the server's process group (it forks one process per connection), SIGKILL if it
/// has not exited within [`STOP_DEADLINE`].
async fn stop(child: &mut tokio::process::Child) {
    use nix::sys::signal::{killpg, Signal};
    let Some(pid) = child.id() else { return };
    let group = nix::unistd::Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(STOP_DEADLINE, child.wait()).await.is_err() {
        tracing::warn!("pgBackRest TLS server did not stop within {STOP_DEADLINE:?}: killed");
    }
    // Its connections' processes too, whether or not the server waited for them.
    let _ = killpg(group, Signal::SIGKILL);
    let _ = tokio::time::timeout(STOP_DEADLINE, child.wait()).await;
}
