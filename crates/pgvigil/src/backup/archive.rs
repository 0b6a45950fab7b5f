//! Archiving that follows the lease.
//!
//! PostgreSQL's `archive_command` is `pgvigil archive-push ... %p`. Before it pushes, it asks this
//! member's daemon over a unix socket (`<state_dir>/pgbackrest/archive.sock`, PostgreSQL's user
//! only) whether the member is the committed primary and holds the lease of that epoch now
//! ([`permit`]); only then does it run `pgbackrest archive-push`. Otherwise it exits non-zero
//! and PostgreSQL retries later: a fenced or deposed primary (or one whose daemon is gone) never
//! writes into the archive. A push that is under way when the lease runs out is a child of the
//! postmaster's archiver, so the keeper's SIGKILL of the postmaster's process tree ends it too,
//! before any other member is promoted (`lease_margin`). Pushes are synchronous for that reason
//! (`archive-async` would fork a process that outlives the command).

use crate::daemon::Shared;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use vigil_core::repeats::{Repeats, LOG_EVERY};

/// The answer to one permit request: `ok <epoch>` or `no <reason>`.
pub fn permit(shared: &Shared, now: Instant) -> Result<u64, String> {
    let state = shared.committed();
    if !state.is_primary(shared.name()) {
        let primary = state.primary.as_deref().unwrap_or("none");
        return Err(format!(
            "{} is not the primary of epoch {} (the primary is {primary})",
            shared.name(),
            state.epoch
        ));
    }
    if !shared.lease_valid(state.epoch, now) {
        return Err(format!("{} holds no valid lease for epoch {}", shared.name(), state.epoch));
    }
    Ok(state.epoch)
}

/// Serve permits on `path` until `shutdown`.
pub async fn serve(shared: Arc<Shared>, path: PathBuf, run_as: Option<vigil_pg::RunAs>, shutdown: CancellationToken) {
    // A socket file left by an earlier run is ours: replace it.
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %path.display(), "cannot serve archive permits (archiving will be refused): {e}");
            return;
        }
    };
    // PostgreSQL's user only (and root): whoever may connect may be told "ok".
    let owned = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(anyhow::Error::from)
        .and_then(|()| vigil_pg::datadir::chown(&path, run_as));
    if let Err(e) = owned {
        tracing::error!(socket = %path.display(), "cannot secure the archive permit socket: {e:#}");
        return;
    }
    let mut refused: Repeats<String> = Repeats::new(LOG_EVERY);
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else { continue };
        let answer = permit(&shared, Instant::now());
        if let Err(why) = &answer {
            if let Some(o) = refused.occurred(Instant::now(), why.clone()) {
                tracing::warn!(suppressed = o.field(), "archive-push refused: {why}");
            }
        }
        // One short exchange; a client that does not read is dropped after a second.
        let _ = tokio::time::timeout(Duration::from_secs(1), async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let _ = tokio::io::BufReader::new(read).read_line(&mut line).await;
            let text = match answer {
                Ok(epoch) => format!("ok {epoch}\n"),
                Err(why) => format!("no {why}\n"),
            };
            let _ = write.write_all(text.as_bytes()).await;
        })
        .await;
    }
    let _ = std::fs::remove_file(&path);
}

/// `pgvigil archive-push`: the archive_command. Runs as PostgreSQL's user, in the archiver.
#[derive(clap::Args, Debug)]
pub struct ArchivePushArgs {
    /// The daemon's permit socket.
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long)]
    pub pgbackrest: PathBuf,
    /// This member's pgbackrest.conf (written by the daemon).
    #[arg(long)]
    pub pgbackrest_config: PathBuf,
    #[arg(long)]
    pub stanza: String,
    /// Seconds the push may take before it is killed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The WAL file (`%p`).
    pub wal: PathBuf,
}

/// Ask for the permit; exit code 0 only if the push ran and succeeded. Whatever it prints goes to
/// PostgreSQL's log.
pub fn archive_push(args: &ArchivePushArgs) -> u8 {
    let name = args.wal.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let epoch = match ask(&args.socket, &name) {
        Ok(epoch) => epoch,
        Err(why) => {
            eprintln!("pgvigil archive-push {name}: refused: {why}");
            return 1;
        }
    };
    let mut cmd = std::process::Command::new(&args.pgbackrest);
    cmd.arg(format!("--config={}", args.pgbackrest_config.display()))
        .arg(format!("--stanza={}", args.stanza))
        .arg("archive-push")
        .arg(&args.wal);
    match run_with_deadline(cmd, Duration::from_secs(args.timeout)) {
        Ok(true) => {
            eprintln!("pgvigil archive-push {name}: pushed (epoch {epoch})");
            0
        }
        Ok(false) => {
            eprintln!("pgvigil archive-push {name}: pgbackrest archive-push failed");
            1
        }
        Err(e) => {
            eprintln!("pgvigil archive-push {name}: {e}");
            1
        }
    }
}

fn ask(socket: &Path, wal: &str) -> Result<u64, String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("the daemon does not answer on {}: {e}", socket.display()))?;
    let limit = Some(Duration::from_secs(2));
    stream.set_read_timeout(limit).and_then(|()| stream.set_write_timeout(limit)).map_err(|e| e.to_string())?;
    stream.write_all(format!("archive-push {wal}\n").as_bytes()).map_err(|e| format!("ask the daemon: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| format!("no answer from the daemon: {e}"))?;
    match line.trim_end().split_once(' ') {
        Some(("ok", epoch)) => epoch.parse().map_err(|_| format!("bad answer {line:?}")),
        Some(("no", why)) => Err(why.to_string()),
        _ => Err(format!("bad answer {line:?}")),
    }
}

/// Run `cmd` (its output goes where ours goes); false if it failed; killed at the deadline.
fn run_with_deadline(mut cmd: std::process::Command, deadline: Duration) -> Result<bool, String> {
    let mut child = cmd.spawn().map_err(|e| format!("run {:?}: {e}", cmd.get_program()))?;
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.success()),
            Ok(None) if Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("pgbackrest archive-push did not finish within {deadline:?}: killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait for pgbackrest: {e}")),
        }
    }
}

/// A word for `/bin/sh`: single-quoted, `'` written as `'\''`.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The settings PostgreSQL gets at every start when `[backup]` is on: archiving through the
/// permit, and the archive as a source of WAL for a standby that lost its upstream (and for a
/// rewind). On a standby `archive_mode = on` archives nothing; on a primary `restore_command`
/// is not used.
pub fn postgres_parameters(
    exe: &Path,
    socket: &Path,
    b: &crate::config::BackupSettings,
    pgbackrest_config: &Path,
) -> Vec<(String, String)> {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let push = format!(
        "{} archive-push --socket {} --pgbackrest {} --pgbackrest-config {} --stanza {} --timeout {} %p",
        q(exe),
        q(socket),
        q(&b.raw.pgbackrest),
        q(pgbackrest_config),
        sh_quote(&b.raw.stanza),
        b.archive_timeout.as_secs().max(1),
    );
    let get = format!(
        "timeout {} {} --config={} --stanza={} archive-get %f \"%p\"",
        b.archive_timeout.as_secs().max(1),
        q(&b.raw.pgbackrest),
        q(pgbackrest_config),
        sh_quote(&b.raw.stanza),
    );
    vec![("archive_mode".into(), "on".into()), ("archive_command".into(), push), ("restore_command".into(), get)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(sh_quote("/usr/bin/x"), "'/usr/bin/x'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
