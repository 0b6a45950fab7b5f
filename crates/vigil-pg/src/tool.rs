//! Running PostgreSQL's command-line programs (`initdb`, `pg_basebackup`, ...) as the server's user.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context as _;

use nix::sys::signal::Signal;

use crate::process::set_parent_death_signal;
use crate::settings::PgSettings;

/// A command for `bin_dir/<program>`, run as `run_as`, from `/` (the daemon's working directory may
/// not be readable by that user), without the daemon's `PG*` environment (`PGDATA`, `PGHOST`, ...
/// would silently change what the program does). Killed when the future awaiting it is dropped, and
/// when the daemon dies: an orphaned `pg_basebackup` would otherwise keep writing into the directory
/// the next clone attempt reuses. (The parent-death signal follows the forking thread; these
/// programs are short-lived and awaited by the task that started them, so that is good enough here.)
pub fn command(settings: &PgSettings, program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(settings.bin_dir.join(program));
    scrub(cmd.as_std_mut(), settings);
    set_parent_death_signal(cmd.as_std_mut(), Signal::SIGKILL);
    cmd.kill_on_drop(true);
    cmd
}

/// The environment, user and working directory every PostgreSQL program gets.
pub fn scrub(cmd: &mut std::process::Command, settings: &PgSettings) {
    use std::os::unix::process::CommandExt as _;
    scrub_env(cmd);
    cmd.current_dir("/");
    cmd.stdin(Stdio::null());
    if let Some(r) = settings.run_as {
        cmd.uid(r.uid).gid(r.gid);
    }
}

/// Remove the daemon's `PG*` variables (`PGDATA`, `PGHOST`, ... would silently change what a
/// PostgreSQL program does).
pub fn scrub_env(cmd: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        if removed_from_environment(&key.to_string_lossy()) {
            cmd.env_remove(&key);
        }
    }
}

/// The daemon's `PG*` variables are not passed on, except `PG_OOM_ADJUST_FILE` and
/// `PG_OOM_ADJUST_VALUE`: the systemd unit sets them so that PostgreSQL's backends reset the OOM
/// score the daemon (and the postmaster) got from `OOMScoreAdjust=`.
fn removed_from_environment(key: &str) -> bool {
    key.starts_with("PG") && !matches!(key, "PG_OOM_ADJUST_FILE" | "PG_OOM_ADJUST_VALUE")
}

/// Run `cmd` to completion; error (with the end of its output) unless it exits 0.
pub async fn run(cmd: tokio::process::Command, what: &str) -> anyhow::Result<()> {
    output(cmd, what).await.map(drop)
}

/// Run `cmd` to completion and return its standard output; error (with the end of its output)
/// unless it exits 0.
pub async fn output(cmd: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    output_and_stderr(cmd, what).await.map(|(stdout, _)| stdout)
}

/// [`output`], and what it wrote to standard error (some programs report there, e.g. pg_rewind).
pub async fn output_and_stderr(mut cmd: tokio::process::Command, what: &str) -> anyhow::Result<(String, String)> {
    let started = Instant::now();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = cmd.output().await.with_context(|| format!("run {what}"))?;
    let elapsed = started.elapsed();
    if output.status.success() {
        tracing::debug!(what, elapsed_ms = elapsed.as_millis() as u64, "command finished");
        return Ok((
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    anyhow::bail!("{what} failed ({}):\n{}", output.status, tail(&text, 20))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of a file (reads at most its last 64 KiB); empty if unreadable.
pub fn file_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    tail(&String::from_utf8_lossy(&buf), lines)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pg_variables_are_removed_but_the_oom_adjustment_passes() {
        for key in ["PGDATA", "PGHOST", "PGPASSWORD"] {
            assert!(super::removed_from_environment(key), "{key}");
        }
        for key in ["PG_OOM_ADJUST_FILE", "PG_OOM_ADJUST_VALUE", "PATH", "LANG"] {
            assert!(!super::removed_from_environment(key), "{key}");
        }
    }
}
