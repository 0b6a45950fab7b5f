//! The agent's IO shell: observe PostgreSQL, report to the coordinator, hold the lease, and carry
//! out what the pure reconciler ([`vigil_core::agent::reconcile`]) decides.
//!
//! Two tasks: the *reporter* sends a report every loop (at once when the committed state changes,
//! and five times as often while a switchover runs), keeps the lease, and fences PostgreSQL the
//! moment the lease runs out, however busy the other task is; the *reconciler* observes PostgreSQL
//! and acts, one action at a time (a clone can take long). Each wakes the other when waiting would
//! only add latency: a clean stop for a switchover is reported at once, a new lease acted on at once.

mod rejoin;

use crate::daemon::Shared;
use crate::hooks::{Details, Event};
use crate::local::LocalFile;
use crate::reporter::{reporter, Link};
use anyhow::Context;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use vigil_core::agent::{divergence, reconcile, AgentAction, AgentInput};
use vigil_core::repeats::{Repeats, LOG_EVERY};
use vigil_core::report::{BootstrapFailure, RejoinMethod, RejoinRecord, SwitchoverStop};
use vigil_core::{ClusterState, EventKind, Lease, LocalMemory, MemberKind, PgStatus, Upstream};
use vigil_pg::{Observation, PgSettings, Postgres, RunAs, StopMode};

/// A standby not streaming for this long gets its timeline checked against the primary's.
const DIVERGENCE_CHECK_AFTER: Duration = Duration::from_secs(2);

/// With `[proxy]`: how long after the switchover's start the old primary keeps answering, for
/// sessions the proxies forwarded just before they saw it to finish authenticating.
const PROXY_DRAIN: Duration = Duration::from_millis(500);

pub async fn run_witness(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let status = shared.pg_status.subscribe();
    let link = Link {
        status,
        lease: shared.lease.clone(),
        acting_epoch: Default::default(),
        fencer: None,
        report_now: Default::default(),
        reconcile_now: Default::default(),
    };
    reporter(shared, link, shutdown).await;
    Ok(())
}

pub(crate) fn pg_settings(shared: &Shared) -> anyhow::Result<PgSettings> {
    pg_settings_of(&shared.settings)
}

/// This member's PostgreSQL settings from its configuration (also for `pgvigil restore`, which
/// runs without a daemon).
pub(crate) fn pg_settings_of(s: &crate::config::Settings) -> anyhow::Result<PgSettings> {
    let pg = s.raw.postgres.as_ref().context("config key `postgres`: missing")?;
    let run_as = if nix::unistd::geteuid().is_root() {
        let user = pg.run_as_user();
        Some(RunAs::user(user).with_context(|| format!("config key `postgres.run_as`: user {user:?}"))?)
    } else {
        None
    };
    Ok(PgSettings {
        member: s.raw.name.clone(),
        bin_dir: pg.bin_dir.clone(),
        data_dir: pg.data_dir.clone(),
        listen_address: pg.listen_address.clone(),
        port: pg.port,
        socket_dir: s.socket_dir(),
        run_as,
        superuser: pg.superuser.clone(),
        superuser_password: s.superuser_password.clone(),
        replication_user: pg.replication_user.clone(),
        replication_password: s.replication_password.clone(),
        log_file: s.pg_log_file(),
        hba_extra: pg.hba_extra.clone(),
        replication_sources: replication_sources(s),
        parameters: pg.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        start_parameters: crate::backup::postgres_parameters(s)?,
        keeper: vigil_pg::KeeperCommand {
            program: std::env::current_exe().context("locate the pgvigil binary (for its keeper)")?,
            args: vec!["keeper".into()],
            socket: s.raw.state_dir.join("keeper.sock"),
        },
    })
}

pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = pg_settings(&shared)?;
    prepare_dirs(&settings)?;
    let local = LocalFile::new(&shared.settings.raw.state_dir);
    let memory = local.load()?;
    let mut pg = Postgres::new(settings);
    // The keeper holds PostgreSQL across a restart of this daemon: leave it running when the
    // agent ends (the stop mode decides what a stop does), and take over one left running.
    pg.leave_running_on_drop();
    let adopted = pg.adopt().await;
    let mut lease = Lease::default();
    match adopted.as_ref().and_then(|a| a.lease) {
        // Still the lease that was granted before the restart: the coordinator's wait covers it.
        Some(l) if Some(l.epoch) == memory.primary_epoch && l.epoch != 0 => {
            lease.restore(l.epoch, vigil_pg::keeper::ns_to_instant(l.deadline_ns));
        }
        _ => {}
    }
    if adopted.is_none() {
        // Not writable until a lease says so (stored for the next start).
        let _ = pg.fencer().set_lease(None).await;
    }
    *shared.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    // Published through `Shared`, so the HTTP API and the metrics see it too.
    let status_tx = shared.pg_status.clone();
    let (dir, problem) = pg.data_dir_state().split();
    status_tx.send_replace(PgStatus { data_dir: dir, data_dir_problem: problem, ..Default::default() });
    let link = Link {
        status: status_tx.subscribe(),
        lease: shared.lease.clone(),
        acting_epoch: Arc::new(AtomicU64::new(memory.primary_epoch.unwrap_or(0))),
        fencer: Some(pg.fencer()),
        report_now: Default::default(),
        reconcile_now: Default::default(),
    };
    let mut agent = Agent {
        shared: shared.clone(),
        pg,
        local,
        memory,
        lease: link.lease.clone(),
        acting_epoch: link.acting_epoch.clone(),
        status_tx,
        needs_rejoin: false,
        unhealthy_since: Some(Instant::now()),
        roles_ready: false,
        slots_made: Vec::new(),
        last_note: String::new(),
        last_rejoin: None,
        diverged: None,
        not_streaming_since: None,
        divergence_checked: None,
        sync_seen: None,
        report_now: link.report_now.clone(),
        reconcile_now: link.reconcile_now.clone(),
        last_role: None,
        bootstrap_failed: None,
    };
    let reporter = tokio::spawn(reporter(shared.clone(), link, shutdown.clone()));
    agent.reconcile_loop(&shutdown).await;
    if shared.settings.raw.stop.mode == crate::config::StopModeConfig::LeavePostgres {
        tracing::warn!(
            pid = agent.pg.fencer().pid(),
            "leaving PostgreSQL running under its keeper (stop.mode = leave-postgres)"
        );
    } else if let Err(e) = agent.pg.stop(StopMode::Fast).await {
        tracing::error!("stopping PostgreSQL on shutdown: {e:#}");
    }
    let _ = reporter.await;
    Ok(())
}

/// The hosts of every member (from `members`), this member's PostgreSQL address, and the
/// operator's `postgres.replication_networks`, without repeats.
fn replication_sources(s: &crate::config::Settings) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let hosts = s.raw.members.iter().filter_map(|m| m.address.rsplit_once(':').map(|(h, _)| h.to_string()));
    let own = s.raw.postgres.iter().flat_map(|p| p.listen_address.split(',').map(|a| a.trim().to_string()));
    let extra = s.raw.postgres.iter().flat_map(|p| p.replication_networks.iter().cloned());
    for a in hosts.chain(own).chain(extra) {
        // `*` and `0.0.0.0` are listen addresses, not where a peer connects from.
        if !a.is_empty() && a != "*" && a != "0.0.0.0" && a != "::" && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The socket dir and the data dir's parent must exist; PostgreSQL's user must own the socket dir.
fn prepare_dirs(s: &PgSettings) -> anyhow::Result<()> {
    // 0700 and PostgreSQL's: the superuser is trusted over this socket, so no other local user may
    // reach it. One that exists already is left as it is (it may be shared, like
    // /var/run/postgresql; starting PostgreSQL warns if others can reach it).
    if !s.socket_dir.exists() {
        vigil_pg::datadir::create_dir_owned(&s.socket_dir, 0o700, s.run_as)?;
    }
    if let Some(parent) = s.data_dir.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    if let Some(r) = &s.run_as {
        let (uid, gid) = (nix::unistd::Uid::from_raw(r.uid), nix::unistd::Gid::from_raw(r.gid));
        nix::unistd::chown(&s.socket_dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", s.socket_dir.display()))?;
    }
    Ok(())
}

struct Agent {
    shared: Arc<Shared>,
    pg: Postgres,
    local: LocalFile,
    memory: LocalMemory,
    lease: Arc<Mutex<Lease>>,
    acting_epoch: Arc<AtomicU64>,
    status_tx: watch::Sender<PgStatus>,
    needs_rejoin: bool,
    /// Since when PostgreSQL has not been running in the role the committed state gives it.
    unhealthy_since: Option<Instant>,
    roles_ready: bool,
    slots_made: Vec<String>,
    last_note: String,
    /// The latest rewind or re-clone, reported until the coordinator has recorded it.
    last_rejoin: Option<RejoinRecord>,
    /// Why this standby cannot follow the primary's timeline, when the last check found so.
    diverged: Option<String>,
    not_streaming_since: Option<Instant>,
    divergence_checked: Option<Instant>,
    /// `synchronous_standby_names` as PostgreSQL ran with it at the last observation.
    sync_seen: Option<String>,
    report_now: Arc<Notify>,
    reconcile_now: Arc<Notify>,
    /// The role PostgreSQL last ran in ("primary", "replica"), for the role-change hook.
    last_role: Option<&'static str>,
    /// The latest failed initdb as the bootstrap primary, reported until one succeeds.
    bootstrap_failed: Option<BootstrapFailure>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    async fn reconcile_loop(&mut self, shutdown: &CancellationToken) {
        let interval = self.shared.settings.timings.loop_interval;
        let mut state_rx = self.shared.raft.state();
        let mut failures: u32 = 0;
        // A step that keeps failing the same way (a clone the primary refuses, ...) is retried
        // every few seconds: its warning once a minute, by the first line of the error.
        let mut repeats: Repeats<String> = Repeats::new(LOG_EVERY);
        loop {
            let pause = interval * 2u32.saturating_pow(failures.min(4));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(vigil_raft::beat::next(pause).into()) => {}
                _ = self.reconcile_now.notified(), if failures == 0 => {}
                r = state_rx.changed(), if failures == 0 => if r.is_err() { return },
            }
            match self.step().await {
                Ok(()) => {
                    failures = 0;
                    for (cause, e) in repeats.resolved_all() {
                        tracing::info!(failures = e.total, "succeeds again after failing with: {cause}");
                    }
                }
                Err(e) => {
                    failures += 1;
                    let text = format!("{e:#}");
                    let cause = text.lines().next().unwrap_or_default().to_string();
                    match repeats.occurred(Instant::now(), cause) {
                        Some(o) => tracing::warn!(suppressed = o.field(), "{text}"),
                        None => tracing::debug!("{text}"),
                    }
                }
            }
            for (cause, e) in repeats.expired(Instant::now()) {
                tracing::info!(failures = e.total, suppressed = e.suppressed, "no longer failing: {cause}");
            }
        }
    }

    /// Observe, publish the status, decide, act.
    async fn step(&mut self) -> anyhow::Result<()> {
        let me = self.shared.name().to_string();
        let observe_started = Instant::now();
        let obs = self.pg.observe().await;
        crate::telemetry::health_check_took(observe_started.elapsed());
        let state = self.shared.committed();
        let now = Instant::now();
        let am_primary = state.is_primary(&me);
        let healthy = obs.running && (obs.in_recovery != am_primary);
        // Its postmaster runs, yet it did not answer: hung, not starting up. Never "started"
        // again (that would wait on it), reported so the coordinator fails over sooner.
        let unresponsive = !obs.running && self.pg.is_running_child();
        self.unhealthy_since = if healthy { None } else { Some(self.unhealthy_since.unwrap_or(now)) };
        if !(am_primary && obs.running && !obs.in_recovery) {
            self.roles_ready = false;
            self.slots_made.clear();
        }
        if !am_primary && (!obs.running || obs.in_recovery) {
            // Not the primary and not writable: nothing left for the lease watchdog to fence.
            self.acting_epoch.store(0, Ordering::SeqCst);
        }
        self.check_divergence(&state, &obs, now).await;
        self.role_hook(&state, &obs);
        self.sync_seen = obs.sync_standby_names.clone();
        let is_primary_now = obs.running && !obs.in_recovery;
        let dir_state =
            if obs.running { self.pg.data_dir_state_of_a_running_server() } else { self.pg.data_dir_state() };
        let (dir, dir_problem) = dir_state.split();
        let mut pg = PgStatus {
            running: obs.running,
            in_recovery: obs.in_recovery,
            timeline: obs.timeline,
            current_lsn: obs.current_lsn,
            received_lsn: obs.received_lsn,
            replay_lsn: obs.replay_lsn,
            data_dir: dir,
            data_dir_problem: dir_problem,
            bootstrap_failed: self.bootstrap_failed.clone(),
            needs_rejoin: self.needs_rejoin,
            streaming: obs.streaming,
            down_for: self.unhealthy_since.map_or(Duration::ZERO, |t| now - t),
            unresponsive,
            replicas: obs.replicas.clone(),
            sync_names: obs
                .sync_standby_names
                .as_deref()
                .filter(|_| is_primary_now)
                .and_then(vigil_core::sync::parse_setting),
            last_rejoin: self.last_rejoin.clone(),
            switchover_stop: self.memory.switchover_stop.clone().filter(|s| s.lsn != 0 && !obs.running),
            replay_paused: obs.replay_paused,
        };
        let lease_valid = self.lease.lock().unwrap_or_else(|p| p.into_inner()).valid(state.epoch, now);
        let actions = reconcile(&AgentInput {
            me: &me,
            kind: MemberKind::Postgres,
            state: &state,
            pg: &pg,
            lease_valid,
            local: &self.memory,
            diverged: self.diverged.as_deref(),
        });
        self.needs_rejoin = actions.iter().any(|a| {
            matches!(a, AgentAction::NeedsRejoin(_) | AgentAction::Rejoin { .. } | AgentAction::Reinit { .. })
        });
        pg.needs_rejoin = self.needs_rejoin;
        self.status_tx.send_replace(pg);
        for action in actions {
            self.act(action, &state).await?;
        }
        Ok(())
    }

    /// `on_role_change` when PostgreSQL runs in another role than at the last observation.
    fn role_hook(&mut self, state: &ClusterState, obs: &Observation) {
        let role = match (obs.running, obs.in_recovery) {
            (true, false) => "primary",
            (true, true) => "replica",
            _ => return,
        };
        if let Some(previous) = self.last_role.filter(|r| *r != role) {
            tracing::info!(epoch = state.epoch, "role changed from {previous} to {role}");
            self.shared.hooks.fire(
                Event::RoleChange,
                Details {
                    role: role.into(),
                    previous_role: previous.into(),
                    epoch: state.epoch,
                    primary: state.primary.clone().unwrap_or_default(),
                    reason: String::new(),
                },
            );
        }
        self.last_role = Some(role);
    }

    fn note(&mut self, level: tracing::Level, text: String) {
        if text != self.last_note {
            match level {
                tracing::Level::WARN => tracing::warn!(member = %self.shared.name(), "{text}"),
                _ => tracing::info!(member = %self.shared.name(), "{text}"),
            }
            self.last_note = text;
        }
    }

    /// Before a promotion with archiving on: the segments this standby received become ready to
    /// archive, so none the old primary had not archived yet is missing from the archive
    /// (`vigil_pg::datadir::mark_received_wal_ready`). A failure here is logged, not fatal: the
    /// promotion matters more than a hole in the archive, which the next full backup bounds.
    fn mark_received_wal_ready(&self) {
        match vigil_pg::datadir::mark_received_wal_ready(&self.pg.settings().data_dir) {
            Ok(n) => tracing::info!(segments = n, "marked received WAL ready to archive before the promotion"),
            Err(e) => tracing::warn!("cannot mark received WAL ready to archive; the archive may miss segments: {e:#}"),
        }
    }

    fn remember(&mut self, change: impl FnOnce(&mut LocalMemory)) -> anyhow::Result<()> {
        change(&mut self.memory);
        // An fsync: off the runtime's threads.
        vigil_pg::datadir::off_runtime(|| self.local.save(&self.memory)).context("save local memory")
    }

    async fn act(&mut self, action: AgentAction, state: &ClusterState) -> anyhow::Result<()> {
        let epoch = state.epoch;
        let started = Instant::now();
        match action {
            AgentAction::Wait(why) => self.note(tracing::Level::INFO, format!("waiting: {why}")),
            AgentAction::NeedsRejoin(why) => {
                self.note(tracing::Level::WARN, format!("needs rejoin, keeping PostgreSQL down: {why}"))
            }
            AgentAction::Fence(why) => {
                tracing::warn!(epoch, "fencing PostgreSQL: {why}");
                // SIGKILL to every process of the server: works on a hung or stopped one too.
                self.pg.fencer().fence_now();
                self.pg.stop(StopMode::Immediate).await.context("fence (immediate stop)")?;
                let _ = self.pg.fencer().set_lease(None).await;
                self.shared.hooks.fire(
                    Event::Fence,
                    Details {
                        role: "fenced".into(),
                        epoch,
                        primary: state.primary.clone().unwrap_or_default(),
                        reason: why,
                        ..Default::default()
                    },
                );
            }
            AgentAction::MarkPrimary(e) => {
                self.remember(|m| {
                    m.primary_epoch = Some(e);
                    m.upstream = None;
                })?;
                self.acting_epoch.store(e, Ordering::SeqCst);
                self.arm_keeper(state).await?;
            }
            AgentAction::InitDb => {
                // Reported, so the coordinator gives the bootstrap back; the reconciler does not
                // try again in this epoch (no loop of failing initdbs), and the error ends this
                // step before the epoch is marked.
                if let Err(e) = self.pg.initdb().await {
                    self.bootstrap_failed = Some(BootstrapFailure { epoch, error: format!("{e:#}") });
                    self.reconcile_now.notify_one();
                    return Err(e.context(format!("initdb as the bootstrap primary of epoch {epoch}")));
                }
                self.bootstrap_failed = None;
                tracing::info!(epoch, took_ms = started.elapsed().as_millis() as u64, "initialised a new cluster");
            }
            AgentAction::Start if self.pg.is_running_child() => {
                // It runs but did not answer the last check: hung or still recovering. Waiting
                // on it here would freeze the agent; the coordinator judges it from the reports.
                self.note(tracing::Level::WARN, "PostgreSQL runs but does not answer".into());
            }
            AgentAction::Start => {
                self.arm_keeper(state).await?;
                self.pg.start().await.context("start PostgreSQL")?;
                tracing::info!(epoch, took_ms = started.elapsed().as_millis() as u64, "PostgreSQL started");
            }
            AgentAction::Promote { sync } => {
                self.arm_keeper(state).await?;
                // Named before promotion, so the first commit on the new primary already waits for them.
                self.pg.set_sync_standby_names(&sync).await.context("set synchronous_standby_names")?;
                if self.shared.settings.backup.is_some() {
                    self.mark_received_wal_ready();
                }
                self.pg.promote(Duration::from_secs(60)).await.context("promote")?;
                tracing::warn!(epoch, took_ms = started.elapsed().as_millis() as u64, "promoted to primary");
                promotion_hook(&self.shared, state);
            }
            AgentAction::PrimaryHousekeeping { slots, sync } => {
                if self.sync_seen.as_deref() != Some(sync.as_str()) {
                    self.pg.set_sync_standby_names(&sync).await.context("set synchronous_standby_names")?;
                }
                if !self.roles_ready {
                    self.pg.setup_roles().await.context("set up roles")?;
                    self.roles_ready = true;
                }
                if slots != self.slots_made {
                    self.pg.ensure_slots(&slots).await.context("create replication slots")?;
                    self.slots_made = slots;
                }
                self.note(tracing::Level::INFO, format!("primary of epoch {epoch}"));
            }
            AgentAction::Rejoin { from, slot, reason } => self.rejoin(&from, &slot, &reason, epoch).await?,
            AgentAction::Clone { from, slot } => {
                tracing::info!(epoch, "cloning from {}:{} through slot {slot}", from.host, from.port);
                let how = self.clone_member(&from, &slot).await.context("clone")?;
                tracing::info!(epoch, took_ms = started.elapsed().as_millis() as u64, "cloned {how}");
                self.remember(|m| m.upstream = Some(from))?;
            }
            AgentAction::ConfigureStandby { from, slot } => {
                self.pg.configure_standby(&from, &slot).context("write standby configuration")?;
                if let Some(stop) = &self.memory.switchover_stop {
                    tracing::warn!(
                        epoch,
                        "stopped cleanly at {} for switchover {}: following {}:{} without a rewind",
                        vigil_core::format_lsn(stop.lsn),
                        stop.id,
                        from.host,
                        from.port
                    );
                }
                // A standby's data directory now: what it was as a primary no longer matters.
                self.remember(|m| {
                    m.upstream = Some(from);
                    m.primary_epoch = None;
                    m.switchover_stop = None;
                })?;
            }
            AgentAction::Follow { from, slot } => {
                self.pg.follow(&from, &slot).await.context("follow the new primary")?;
                tracing::info!(epoch, "now following {}:{}", from.host, from.port);
                self.remember(|m| m.upstream = Some(from))?;
            }
            AgentAction::StopForSwitchover { epoch, id } => self.stop_for_switchover(epoch, id).await?,
            AgentAction::ForgetSwitchover => {
                if let Some(stop) = &self.memory.switchover_stop {
                    tracing::warn!(epoch, "switchover {} did not happen: carrying on as the primary", stop.id);
                }
                self.remember(|m| m.switchover_stop = None)?;
            }
            AgentAction::Reinit { from, slot, id } => self.reinit(&from, &slot, id, epoch).await?,
        }
        Ok(())
    }

    /// Give the keeper this member's lease (the committed primary) or none (anyone else) before
    /// the server starts or may become writable: a writable server without a lease is killed.
    async fn arm_keeper(&self, state: &ClusterState) -> anyhow::Result<()> {
        let lease = if state.is_primary(self.shared.name()) {
            let until = self.lease.lock().unwrap_or_else(|p| p.into_inner()).expires_at(state.epoch);
            Some((state.epoch, until.context("acting as primary without a lease")?))
        } else {
            None
        };
        self.pg.fencer().set_lease(lease).await.context("give the lease to the keeper")
    }

    /// The old primary of switchover `id`: promise (locally, durably) not to start as primary of
    /// `epoch` again, checkpoint, shut down cleanly, and report where the shutdown checkpoint is.
    async fn stop_for_switchover(&mut self, epoch: u64, id: u64) -> anyhow::Result<()> {
        if self.memory.switchover_stop.as_ref().map(|s| (s.epoch, s.id)) != Some((epoch, id)) {
            self.remember(|m| m.switchover_stop = Some(SwitchoverStop { epoch, id, lsn: 0, timeline: 0 }))?;
        }
        let started = Instant::now();
        if self.pg.is_running_child() || vigil_pg::process::live_postmaster(&self.pg.settings().data_dir).is_some() {
            tracing::warn!(epoch, id, "switchover: checkpoint, then a clean (fast) shutdown");
            // Writes go on during this checkpoint, so the shutdown's own checkpoint is short.
            if let Err(e) = self.pg.checkpoint(Duration::from_secs(10)).await {
                tracing::warn!(epoch, id, "switchover: CHECKPOINT before the shutdown failed: {e:#}");
            }
            let checkpointed_ms = started.elapsed().as_millis() as u64;
            // The routing proxies stop forwarding new sessions once they apply the switchover's
            // start (a heartbeat); one forwarded a moment before may still be authenticating,
            // and a fast shutdown would cut it off: a connection error for the client.
            if self.shared.settings.raw.proxy.is_some() {
                tokio::time::sleep(PROXY_DRAIN.saturating_sub(started.elapsed())).await;
            }
            self.pg.stop(StopMode::Fast).await.context("switchover: fast shutdown")?;
            tracing::warn!(
                epoch,
                id,
                checkpointed_ms,
                took_ms = started.elapsed().as_millis() as u64,
                "switchover: stopped"
            );
        }
        let control = self.pg.control_data().await.context("switchover: read the control file")?;
        anyhow::ensure!(
            control.shut_down_cleanly(),
            "switchover: PostgreSQL is down but not cleanly shut down (control file: {:?})",
            control.state
        );
        let stop = SwitchoverStop { epoch, id, lsn: control.checkpoint_lsn, timeline: control.timeline };
        tracing::warn!(
            epoch,
            id,
            "switchover: cleanly shut down at {} on timeline {}",
            vigil_core::format_lsn(stop.lsn),
            stop.timeline
        );
        self.remember(|m| m.switchover_stop = Some(stop.clone()))?;
        self.status_tx.send_modify(|s| {
            s.running = false;
            s.switchover_stop = Some(stop);
        });
        self.report_now.notify_one();
        Ok(())
    }
}

/// `on_failover` / `on_switchover` on the new primary, from the event that made its epoch.
fn promotion_hook(shared: &Shared, state: &ClusterState) {
    let event = state
        .history
        .iter()
        .rev()
        .take_while(|e| e.epoch == state.epoch)
        .find(|e| matches!(e.kind, EventKind::Failover | EventKind::Switchover));
    let Some(e) = event else { return };
    let hook = if e.kind == EventKind::Switchover { Event::Switchover } else { Event::Failover };
    shared.hooks.fire(
        hook,
        Details {
            role: "primary".into(),
            previous_role: "replica".into(),
            epoch: state.epoch,
            primary: shared.name().to_string(),
            reason: e.detail.clone(),
        },
    );
}
