//! Event hooks (`[hooks]`): commands run in the background when this member's role changes, it
//! becomes primary through a failover or a switchover, or its PostgreSQL is fenced.
//!
//! A hook gets the event as arguments (`<event> <member> <role> <epoch>`, appended to the
//! configured command) and as `PGVIGIL_*` environment variables. It runs detached from whatever
//! fired it: nothing waits for it, it is killed after `hooks.timeout`, and its failure is logged
//! once. A failover never waits for a hook.

use crate::config::{HookCommand, HooksConfig};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Default `hooks.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    RoleChange,
    Failover,
    Switchover,
    Fence,
    /// A backup this member ran ended (done or failed).
    Backup,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::RoleChange => "on_role_change",
            Event::Failover => "on_failover",
            Event::Switchover => "on_switchover",
            Event::Fence => "on_fence",
            Event::Backup => "on_backup",
        }
    }
}

/// What happened, for the hook's arguments and environment.
#[derive(Clone, Debug, Default)]
pub struct Details {
    /// This member's role now: "primary", "replica", "fenced".
    pub role: String,
    pub previous_role: String,
    pub epoch: u64,
    pub primary: String,
    pub reason: String,
}

/// The hooks of one member; the commands may be replaced while the daemon runs (SIGHUP).
#[derive(Debug)]
pub struct Hooks {
    member: String,
    config: std::sync::RwLock<HooksConfig>,
}

impl Hooks {
    pub fn new(member: &str, config: &HooksConfig) -> Hooks {
        Hooks { member: member.to_string(), config: std::sync::RwLock::new(config.clone()) }
    }

    /// Use `config` for the hooks fired from now on (a configuration reload).
    pub fn set(&self, config: &HooksConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
    }

    /// The command for `event` and the timeout, if a hook is configured for it.
    fn command(&self, event: Event) -> Option<(HookCommand, Duration)> {
        let c = self.config.read().unwrap_or_else(|p| p.into_inner());
        let hook = match event {
            Event::RoleChange => c.on_role_change.as_ref(),
            Event::Failover => c.on_failover.as_ref(),
            Event::Switchover => c.on_switchover.as_ref(),
            Event::Fence => c.on_fence.as_ref(),
            Event::Backup => c.on_backup.as_ref(),
        };
        hook.map(|h| (h.clone(), c.timeout.unwrap_or(DEFAULT_TIMEOUT)))
    }

    /// Start the hook for `event`, if one is configured, and return at once. Needs a tokio runtime.
    pub fn fire(&self, event: Event, details: Details) {
        let Some((hook, timeout)) = self.command(event) else { return };
        let member = self.member.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = run(&hook, event, &member, &details, timeout).await;
            let took_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(()) => tracing::info!(hook = event.name(), took_ms, "hook finished"),
                Err(e) => tracing::warn!(hook = event.name(), took_ms, "hook failed: {e:#}"),
            }
        });
    }
}

/// The program and arguments for `hook`: a shell line gets the event arguments as `"$@"`.
fn argv(hook: &HookCommand, args: &[String]) -> Vec<String> {
    match hook {
        HookCommand::Shell(line) => {
            let mut v = vec!["/bin/sh".to_string(), "-c".to_string(), format!("{line} \"$@\""), "pgvigil-hook".into()];
            v.extend(args.iter().cloned());
            v
        }
        HookCommand::Argv(a) => a.iter().chain(args).cloned().collect(),
    }
}

async fn run(hook: &HookCommand, event: Event, member: &str, d: &Details, timeout: Duration) -> anyhow::Result<()> {
    let short = event.name().trim_start_matches("on_");
    let args = [short.to_string(), member.to_string(), d.role.clone(), d.epoch.to_string()];
    let argv = argv(hook, &args);
    let (program, rest) = argv.split_first().ok_or_else(|| anyhow::anyhow!("empty hook command"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .env("PGVIGIL_EVENT", short)
        .env("PGVIGIL_MEMBER", member)
        .env("PGVIGIL_ROLE", &d.role)
        .env("PGVIGIL_PREVIOUS_ROLE", &d.previous_role)
        .env("PGVIGIL_EPOCH", d.epoch.to_string())
        .env("PGVIGIL_PRIMARY", &d.primary)
        .env("PGVIGIL_REASON", &d.reason)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r?,
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => anyhow::bail!("killed after {timeout:?}"),
    };
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    anyhow::bail!("{} ({last})", out.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_lines_get_the_arguments_as_positional_parameters() {
        let args = ["failover".to_string(), "a".into()];
        assert_eq!(
            argv(&HookCommand::Shell("echo hi >> /tmp/x".into()), &args),
            ["/bin/sh", "-c", "echo hi >> /tmp/x \"$@\"", "pgvigil-hook", "failover", "a"]
        );
        assert_eq!(
            argv(&HookCommand::Argv(vec!["/bin/hook".into(), "-v".into()]), &args),
            ["/bin/hook", "-v", "failover", "a"]
        );
    }

    #[tokio::test]
    async fn hooks_run_with_the_event_and_are_killed_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("events");
        let line =
            format!("echo \"$PGVIGIL_EVENT $PGVIGIL_MEMBER $PGVIGIL_ROLE $PGVIGIL_EPOCH\" >> {}; echo", file.display());
        let d = Details { role: "primary".into(), epoch: 3, ..Default::default() };
        run(&HookCommand::Shell(line), Event::Failover, "a", &d, Duration::from_secs(5)).await.expect("runs");
        let written = std::fs::read_to_string(&file).expect("written");
        assert_eq!(written, "failover a primary 3\n");
        let slow = HookCommand::Shell("sleep 10; true".into());
        let started = Instant::now();
        let e = run(&slow, Event::Fence, "a", &d, Duration::from_millis(200)).await.expect_err("timeout");
        assert!(e.to_string().contains("killed after"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let failing = HookCommand::Shell("echo broken >&2; exit 3".into());
        let e = run(&failing, Event::Fence, "a", &d, Duration::from_secs(5)).await.expect_err("fails");
        assert!(e.to_string().contains("broken"), "{e}");
    }
}
