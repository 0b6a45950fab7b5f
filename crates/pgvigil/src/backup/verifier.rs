//! The member's verification task: when the committed state assigns it a verification (see
//! [`vigil_core::verify`]), it restores the latest backup into its scratch directory
//! (`<state_dir>/pgbackrest/verify-scratch`), recovers it to consistency on a spare port with
//! archiving off and no TCP listener, checks that it answers queries, runs `pgbackrest verify` on
//! the repository, removes the scratch directory (only it) and reports the outcome until it is
//! committed or no longer assigned here. Every step has a deadline.

use super::pgbackrest::{latest_backup, PgBackRest};
use super::recovery::{self, RecoveryRun, Target};
use crate::coordination::wall_ms;
use crate::daemon::Shared;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vigil_core::backup::BackupCommand;
use vigil_core::repeats::{Repeats, LOG_EVERY};
use vigil_core::verify::VerifyOutcome;

/// The scratch directory of this member's verifications.
pub fn scratch_dir(pgb: &PgBackRest) -> PathBuf {
    pgb.config.parent().map(|d| d.join("verify-scratch")).unwrap_or_else(|| PathBuf::from("verify-scratch"))
}

pub async fn run(shared: Arc<Shared>, pgb: PgBackRest, timeout: Duration, shutdown: CancellationToken) {
    let pgb = Arc::new(pgb);
    let mut state_rx = shared.raft.state();
    let mut tick = vigil_raft::beat::interval(shared.settings.timings.loop_interval);
    let mut job: Option<(u64, tokio::task::JoinHandle<VerifyOutcome>)> = None;
    let mut finished: Option<(u64, VerifyOutcome, u64)> = None;
    let mut failed: Repeats<String> = Repeats::new(LOG_EVERY);
    let me = shared.name().to_string();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            r = state_rx.changed() => if r.is_err() { break },
        }
        let state = shared.committed();
        let assigned = state.backup.verify.running.as_ref().filter(|r| r.member == me).map(|r| r.id);
        if let Some((id, task)) = job.as_ref().filter(|(id, _)| assigned != Some(*id)) {
            tracing::warn!(id, "verification no longer assigned to this member: stopping it");
            task.abort();
            job = None;
            remove_scratch(&scratch_dir(&pgb));
        }
        if let Some((id, task)) = job.as_mut().filter(|(_, t)| t.is_finished()) {
            let outcome = task.await.unwrap_or_else(|e| VerifyOutcome {
                error: Some(format!("the verification task failed: {e}")),
                ..Default::default()
            });
            finished = Some((*id, outcome, wall_ms()));
            job = None;
        }
        if let Some(id) = assigned {
            let done_here = finished.as_ref().is_some_and(|f| f.0 == id);
            if job.is_none() && !done_here {
                tracing::warn!(id, "verifying the latest backup");
                job = Some((id, tokio::spawn(verify(pgb.clone(), timeout))));
            }
        }
        if let Some((id, outcome, at)) = finished.clone() {
            if assigned == Some(id) {
                let cmd = BackupCommand::VerifyFinish { id, member: me.clone(), outcome, at_unix_ms: at };
                super::runner::report(&shared, cmd, &mut failed).await;
            } else {
                finished = None;
            }
        }
    }
    if let Some((_, task)) = job {
        task.abort();
        remove_scratch(&scratch_dir(&pgb));
    }
}

/// Remove the scratch directory (ours alone; nothing outside it).
fn remove_scratch(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!("remove the verification's scratch directory {}: {e}", dir.display()),
    }
}

/// One verification; its outcome (never an error: a failure is the outcome).
pub async fn verify(pgb: Arc<PgBackRest>, timeout: Duration) -> VerifyOutcome {
    let scratch = scratch_dir(&pgb);
    let mut outcome = VerifyOutcome::default();
    let result = verify_in(&pgb, &scratch, timeout, &mut outcome).await;
    remove_scratch(&scratch);
    if let Err(e) = result {
        tracing::error!("verification failed: {e:#}");
        outcome.error = Some(format!("{e:#}"));
    } else {
        tracing::warn!(label = ?outcome.label, "verification passed");
    }
    outcome
}

async fn verify_in(pgb: &PgBackRest, scratch: &Path, timeout: Duration, o: &mut VerifyOutcome) -> anyhow::Result<()> {
    let started = Instant::now();
    let run_as = pgb.run_as;
    remove_scratch(scratch);
    let data = scratch.join("data");
    let run = scratch.join("run");
    vigil_pg::datadir::create_dir_owned(scratch, 0o700, run_as)?;
    vigil_pg::datadir::create_dir_owned(&data, 0o700, run_as)?;
    vigil_pg::datadir::create_dir_owned(&run, 0o700, run_as)?;
    let info = pgb.info().await?;
    let label = latest_backup(&info).and_then(|b| b.label).ok_or_else(|| anyhow::anyhow!("no backup to verify"))?;
    o.label = Some(label.clone());

    let mut args: Vec<String> = vec![
        "restore".into(),
        format!("--pg1-path={}", data.display()),
        format!("--set={label}"),
        "--archive-mode=off".into(),
    ];
    args.extend(Target::Immediate.pgbackrest_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    pgb.run(&argv, timeout).await?;
    o.restore_ms = t.elapsed().as_millis() as u64;

    let left = timeout.saturating_sub(started.elapsed());
    let port = recovery::spare_port()?;
    let mut server = RecoveryRun::start(&pgb.pg, &data, &run, port, &scratch.join("postgresql.log"))?;
    let recovered = server.wait_recovered(Instant::now(), left).await;
    let stopped = server.stop(Duration::from_secs(60)).await;
    let recovered = recovered?;
    stopped?;
    o.recovery_ms = recovered.took.as_millis() as u64;
    anyhow::ensure!(recovered.relations > 0, "the restored server lists no relations");

    let t = Instant::now();
    let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(30));
    let out = pgb.run_output(&["verify", "--output=text", "--verbose", "--log-level-console=warn"], left).await?;
    o.verify_ms = t.elapsed().as_millis() as u64;
    // pgBackRest's own verdict decides (exit status, then its report's status); what it printed
    // is the reason. Its warnings on a pass are logged.
    let text = super::pgbackrest::output_text(&out);
    vigil_core::verify::repository_verdict(out.status.code(), &text).map_err(anyhow::Error::msg)?;
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN:")).collect();
    if !warnings.is_empty() {
        tracing::warn!("pgbackrest verify passed with warnings: {}", vigil_pg::tool::tail(&warnings.join("\n"), 5));
    }
    Ok(())
}
