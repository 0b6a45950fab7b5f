//! The member's backup task. As the primary holding its lease it creates and checks the stanza
//! (once per epoch here; committed once for the cluster), runs the backup the committed state
//! assigns to it (member and epoch), and reports the outcome to the coordinator until it is
//! committed or the assignment is gone. A backup whose assignment moved away (this member was
//! deposed) is killed. Every pgBackRest call has a deadline.

use super::api::Report;
use super::pgbackrest::{latest_backup, PgBackRest};
use crate::admin::{self, Action};
use crate::config::BackupSettings;
use crate::coordination::wall_ms;
use crate::daemon::Shared;
use crate::hooks;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vigil_core::backup::{BackupCommand, BackupOutcome, BackupSource, BackupType};
use vigil_core::repeats::{Repeats, LOG_EVERY};
use vigil_core::ClusterState;

/// How long a failed stanza-create/check waits before the next attempt.
const STANZA_RETRY: Duration = Duration::from_secs(15);

struct Job {
    id: u64,
    epoch: u64,
    /// Taken on this standby from the primary (`run_on = "standby"`).
    on_standby: bool,
    task: JoinHandle<BackupOutcome>,
}

pub async fn run(shared: Arc<Shared>, pgb: PgBackRest, b: BackupSettings, shutdown: CancellationToken) {
    let pgb = Arc::new(pgb);
    let mut state_rx = shared.raft.state();
    let mut tick = vigil_raft::beat::interval(shared.settings.timings.loop_interval);
    let mut stanza_epoch: Option<u64> = None;
    let mut stanza_next_try = Instant::now();
    // Why the stanza failed last in this epoch: an assigned backup fails with it at once instead
    // of waiting for the coordinator's timeout.
    let mut stanza_error: Option<(u64, String)> = None;
    let mut job: Option<Job> = None;
    // (id, epoch) of the backup this member ran to its end: never run again, reported until
    // committed or no longer assigned here.
    let mut finished: Option<(u64, u64, BackupOutcome, u64)> = None;
    let mut failed: Repeats<String> = Repeats::new(LOG_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            r = state_rx.changed() => if r.is_err() { break },
        }
        let state = shared.committed();
        let me = shared.name().to_string();
        let pg = shared.pg_status.borrow().clone();
        let writable_primary =
            state.is_primary(&me) && shared.lease_valid(state.epoch, Instant::now()) && pg.running && !pg.in_recovery;
        // A backup on this standby runs only while the coordinator acknowledges its reports: one
        // that lost touch with it is killed before the coordinator moves the backup elsewhere
        // (it waits `report_timeout` + `lease_timeout`), so two never write at once.
        let report_timeout = shared.settings.timings.report_timeout;
        let in_touch = shared
            .report_acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|sent| sent.elapsed() <= report_timeout);
        let serving_standby = !state.is_primary(&me) && pg.running && pg.in_recovery && in_touch;

        // The stanza: created (idempotent) and checked by the primary once per epoch here.
        if writable_primary && stanza_epoch != Some(state.epoch) && Instant::now() >= stanza_next_try {
            match stanza(&pgb).await {
                Ok(()) => {
                    tracing::info!(stanza = %pgb.stanza, "backup stanza created and checked");
                    stanza_epoch = Some(state.epoch);
                    stanza_error = None;
                }
                Err(e) => {
                    stanza_next_try = Instant::now() + STANZA_RETRY;
                    stanza_error = Some((state.epoch, format!("{e:#}")));
                    if let Some(o) = failed.occurred(Instant::now(), format!("stanza: {e:#}")) {
                        tracing::warn!(suppressed = o.field(), "backup stanza not ready: {e:#}");
                    }
                }
            }
        }
        if stanza_epoch == Some(state.epoch) && state.backup.stanza_ready.is_none() && state.is_primary(&me) {
            let cmd = BackupCommand::StanzaReady { member: me.clone(), epoch: state.epoch, at_unix_ms: wall_ms() };
            report(&shared, cmd, &mut failed).await;
        }

        let assigned = state.backup.running.as_ref().filter(|r| r.member == me && r.epoch == state.epoch);
        // A job whose assignment moved away (a new primary retries it) is stopped: killed with its
        // task (pgBackRest is killed on drop).
        if let Some(j) = job.as_ref().filter(|j| assigned.is_none_or(|r| r.id != j.id || r.epoch != j.epoch)) {
            tracing::warn!(id = j.id, "backup no longer assigned to this member: stopping it");
            j.task.abort();
            job = None;
        }
        if let Some(j) = job.as_ref().filter(|j| j.on_standby && !serving_standby) {
            let why = if in_touch {
                "this standby stopped or was promoted"
            } else {
                "the coordinator stopped acknowledging this member's reports"
            };
            tracing::warn!(id = j.id, "backup on this standby stopped: {why}");
            j.task.abort();
            finished = Some(failed_at_once(j.id, j.epoch, format!("stopped on the standby: {why}")));
            job = None;
        }
        if let Some(j) = job.as_mut().filter(|j| j.task.is_finished()) {
            let outcome = (&mut j.task).await.unwrap_or_else(|e| BackupOutcome {
                error: Some(format!("the backup task failed: {e}")),
                ..Default::default()
            });
            let reason = match (&outcome.error, &outcome.label) {
                (Some(e), _) => format!("backup {} failed: {e}", j.id),
                (None, label) => format!("backup {} done: {}", j.id, label.as_deref().unwrap_or("?")),
            };
            let me = shared.name().to_string();
            let role = if j.on_standby { "replica" } else { "primary" };
            let details =
                hooks::Details { role: role.into(), previous_role: role.into(), epoch: j.epoch, primary: me, reason };
            shared.hooks.fire(hooks::Event::Backup, details);
            finished = Some((j.id, j.epoch, outcome, wall_ms()));
            job = None;
        }
        if let Some(r) = assigned {
            let done_here = finished.as_ref().is_some_and(|f| f.0 == r.id && f.1 == r.epoch);
            let stanza_failed = stanza_error.as_ref().filter(|(e, _)| *e == state.epoch).map(|(_, why)| why.clone());
            if job.is_none() && !done_here && writable_primary && stanza_epoch != Some(state.epoch) {
                if let Some(why) = stanza_failed {
                    finished =
                        Some(failed_at_once(r.id, r.epoch, format!("the stanza is not ready on this primary: {why}")));
                }
            } else if job.is_none() && !done_here && r.source.is_none() && writable_primary {
                tracing::warn!(id = r.id, kind = r.kind.name(), attempt = r.attempts, "taking backup");
                let task = tokio::spawn(take(pgb.clone(), r.kind, b.timeout, None));
                job = Some(Job { id: r.id, epoch: r.epoch, on_standby: false, task });
            } else if let Some(source) = r.source.as_ref().filter(|_| job.is_none() && !done_here && serving_standby) {
                tracing::warn!(
                    id = r.id,
                    kind = r.kind.name(),
                    attempt = r.attempts,
                    primary = %source.host,
                    "taking backup on this standby (backup-standby, the primary through its TLS server)"
                );
                let task = tokio::spawn(take(pgb.clone(), r.kind, b.timeout, Some((source.clone(), b.clone()))));
                job = Some(Job { id: r.id, epoch: r.epoch, on_standby: true, task });
            } else if r.source.is_some() && job.is_none() && !done_here && in_touch && !(pg.running && pg.in_recovery) {
                // Placed here from a report that no longer holds (PostgreSQL stopped, or this
                // member was promoted): say so now rather than let the coordinator wait hours.
                let why = "assigned to this standby, whose PostgreSQL is not running in recovery";
                finished = Some(failed_at_once(r.id, r.epoch, why.into()));
            }
        }
        if let Some((id, epoch, outcome, at)) = finished.clone() {
            if still_assigned(&state, &me, id, epoch) {
                let cmd = BackupCommand::Finish { id, member: me.clone(), epoch, outcome, at_unix_ms: at };
                report(&shared, cmd, &mut failed).await;
            } else {
                finished = None;
            }
        }
    }
    if let Some(j) = job {
        j.task.abort();
    }
}

/// The outcome of backup `id` of `epoch` that ended before pgBackRest ran (or was stopped), now:
/// what the loop reports as finished.
fn failed_at_once(id: u64, epoch: u64, error: String) -> (u64, u64, BackupOutcome, u64) {
    let now = wall_ms();
    let outcome =
        BackupOutcome { started_unix_ms: now, stopped_unix_ms: now, error: Some(error), ..Default::default() };
    (id, epoch, outcome, now)
}

fn still_assigned(state: &ClusterState, me: &str, id: u64, epoch: u64) -> bool {
    state.backup.running.as_ref().is_some_and(|r| r.id == id && r.member == me && r.epoch == epoch)
}

async fn stanza(pgb: &PgBackRest) -> anyhow::Result<()> {
    pgb.run(&["stanza-create"], Duration::from_secs(60)).await?;
    // `check` switches WAL and waits for it in the archive: archiving works end to end.
    pgb.run(&["check"], Duration::from_secs(120)).await?;
    Ok(())
}

/// Take one backup of `kind`; the outcome from pgBackRest's `info` (the newest backup, which
/// must have started after this one did), or the error. With `standby`, on this standby from
/// the primary `source` (`backup-standby=y`, the primary as `pg1` over TLS, this one as `pg2`).
async fn take(
    pgb: Arc<PgBackRest>,
    kind: BackupType,
    timeout: Duration,
    standby: Option<(BackupSource, BackupSettings)>,
) -> BackupOutcome {
    let started = wall_ms();
    let failure = |e: String| BackupOutcome {
        started_unix_ms: started,
        stopped_unix_ms: wall_ms(),
        error: Some(e),
        ..Default::default()
    };
    let mut args = vec!["backup".to_string(), format!("--type={}", kind.name())];
    match &standby {
        // Right after a promotion pg_control still names the old timeline until the first
        // checkpoint, and pgBackRest refuses that ("WAL timeline 2 does not match pg_control
        // timeline 1").
        None => {
            if let Err(e) = checkpoint(&pgb).await {
                return failure(format!("CHECKPOINT before the backup: {e:#}"));
            }
        }
        // pgBackRest checkpoints the primary itself (`start-fast`) and waits for this standby to
        // replay up to the backup's start.
        Some((source, b)) => {
            let dir = pgb.config.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            if let Some(srv) = &b.server {
                if let Err(e) = super::pgbackrest::copy_tls_files(srv, &dir, pgb.run_as) {
                    return failure(format!("the [tls] files for pgBackRest: {e:#}"));
                }
            }
            args.extend(super::pgbackrest::standby_args(source, &pgb.pg, &dir));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = pgb.run(&args, timeout).await {
        tracing::error!("backup failed: {e:#}");
        return failure(format!("{e:#}"));
    }
    match pgb.info().await {
        // pgBackRest's times are whole seconds.
        Ok(info) => match latest_backup(&info).filter(|o| o.started_unix_ms + 1000 >= started) {
            Some(o) => {
                tracing::warn!(label = ?o.label, size = o.size_bytes, "backup done");
                o
            }
            None => failure("the backup ran, but pgbackrest info lists no backup that started after it".into()),
        },
        Err(e) => failure(format!("backup done, but {e:#}")),
    }
}

async fn checkpoint(pgb: &PgBackRest) -> anyhow::Result<()> {
    let pg = &pgb.pg;
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&pg.socket_dir)
        .port(pg.port)
        .user(&pg.superuser)
        .dbname("postgres")
        .application_name("pgvigil backup")
        .connect_timeout(Duration::from_secs(5));
    let work = async {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.batch_execute("CHECKPOINT").await
    };
    tokio::time::timeout(vigil_pg::observe::CHECKPOINT_DEADLINE, work)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", vigil_pg::observe::CHECKPOINT_DEADLINE))?
        .map_err(anyhow::Error::from)
}

/// Hand `cmd` to the coordinator (directly, or forwarded); a failure is logged (thinned) and the
/// caller tries again on its next round.
pub(super) async fn report(shared: &Shared, cmd: BackupCommand, failed: &mut Repeats<String>) {
    let body = match serde_json::to_vec(&Report { command: cmd }) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot encode a backup report: {e}");
            return;
        }
    };
    let answer = admin::run(shared, Action::BackupReport, &body).await;
    if !(200..300).contains(&answer.status) {
        let why = format!("backup report not taken: {} {}", answer.status, answer.body);
        if let Some(o) = failed.occurred(Instant::now(), why.clone()) {
            tracing::warn!(suppressed = o.field(), "{why}");
        }
    }
}
