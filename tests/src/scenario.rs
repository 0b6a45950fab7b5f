//! Runs of the fault suite: one fault on a fresh cluster ([`run_fault`]), or a seeded random
//! schedule on one cluster ([`run_random`]), each judged by the independent checker.
//!
//! A run: start the cluster in its namespaces; wait until the checker sees it converged and the
//! coordinator sits off the primary's host; create the table; start the writer; inject; hold;
//! heal; wait (bounded) until the checker sees it converged again; write one more second; then
//! the verdicts (see [`crate::verdict`] and [`crate::probe`]).
//!
//! Figures of a run: *failover* = fault → first acknowledged write on another host; *outage* =
//! the longest stretch without any acknowledged write after the fault (the write unavailability,
//! also when the primary did not change); *converge* = heal → converged; *rejoin* = heal → the
//! old primary streams from the new one (only when the primary changed).

use crate::faults::{Fault, FaultKind, Injected, Roles, Schedule, Target};
use crate::nscluster::{Endpoints, Mode, NsCluster};
use crate::probe::{self, Probes};
use crate::verdict::{self, Overlap};
use crate::writer::{self, Ack, Writer};
use anyhow::Context;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds and knobs of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    pub members: usize,
    /// How long a fault stays; `None`: per kind (see [`default_hold`]).
    pub hold: Option<Duration>,
    pub flap_period: Duration,
    /// Heal → converged must take at most this.
    pub converge_bound: Duration,
    /// Where the daemons' and PostgreSQL's logs of a failed run are copied.
    pub logs: PathBuf,
    pub write_interval: Duration,
    pub write_timeout: Duration,
    /// Copy the logs of every run, not only of failed ones.
    pub save_logs: bool,
    /// `[backup]` on every member (a shared posix repository, a segment switch every 5 s while
    /// writes come): only the primary of the current epoch with its lease archives, and no push
    /// may ever conflict ("different checksum") whatever the fault.
    pub archive: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            mode: Mode::On,
            members: 3,
            hold: None,
            flap_period: Duration::from_secs(3),
            converge_bound: Duration::from_secs(60),
            logs: std::env::temp_dir().join("pgvigil-fault-logs"),
            write_interval: Duration::from_millis(50),
            write_timeout: Duration::from_secs(1),
            save_logs: false,
            archive: true,
        }
    }
}

/// The namespaces and the cluster for `s` (archiving on when `s.archive`).
pub fn prepare(s: &Settings) -> anyhow::Result<NsCluster> {
    let archive = s.archive;
    NsCluster::prepare_with(s.members, s.mode, move |spec| {
        if archive {
            spec.backup = vec![
                "stanza = \"main\"".into(),
                format!("repo_path = {:?}", spec.dir.join("repo").display().to_string()),
                "archive_timeout = \"30s\"".into(),
            ];
            spec.pg_parameters.push("archive_timeout = \"5s\"".into());
        }
    })
}

/// How long a fault of `kind` stays when no hold is given. Kills and cuts: until a write is
/// acknowledged elsewhere (or 30 s), plus 1 s of the new primary writing while the old one is
/// still cut off. The others: fixed, longer than `lease_timeout + lease_margin`.
pub fn default_hold(kind: FaultKind, flap_period: Duration) -> Option<Duration> {
    match kind {
        FaultKind::Freeze => Some(Duration::from_secs(5)),
        FaultKind::IsolateCoordinator => Some(Duration::from_secs(8)),
        FaultKind::Flap => Some(flap_period * 6),
        FaultKind::KillPostgres | FaultKind::KillDaemon | FaultKind::Isolate | FaultKind::CutPrimaryCoordinator => None,
    }
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub fault: String,
    pub kind: FaultKind,
    pub mode: Mode,
    pub old_primary: String,
    pub new_primary: Option<String>,
    pub failover: Option<Duration>,
    pub outage: Option<Duration>,
    pub acked: usize,
    pub lost: Vec<Ack>,
    pub overlaps: Vec<Overlap>,
    /// The smallest gap between one host's last and the next host's first ack (negative:
    /// intersecting intervals, not a proof).
    pub min_handover_ms: Option<i64>,
    pub converge: Result<Duration, String>,
    pub rejoin: Option<Duration>,
    /// Heal → the coordinator holds a report from the old primary that knows the new epoch: the
    /// peer transport's part of the rejoin (the rest is the rewind and the restart).
    pub heard: Option<Duration>,
    /// How the old primary rejoined, as the daemons recorded it (`rewind: done in 2725 ms`).
    pub rejoin_how: Option<String>,
    /// The committed history since the fault, as the daemons recorded it.
    pub events: Vec<String>,
    pub violations: Vec<String>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn summary(&self) -> String {
        let secs = |d: Option<Duration>| d.map(|d| format!("{:.2}s", d.as_secs_f64())).unwrap_or_else(|| "-".into());
        format!(
            "{} mode={}: failover {} ({}), outage {}, acked {}, lost {}, overlaps {}, min handover {}, converged {}, old primary heard {}, rejoined {}{}",
            self.fault,
            self.mode.name(),
            secs(self.failover),
            self.new_primary.as_deref().unwrap_or("-"),
            secs(self.outage),
            self.acked,
            self.lost.len(),
            self.overlaps.len(),
            self.min_handover_ms.map(|m| format!("{m}ms")).unwrap_or_else(|| "-".into()),
            match &self.converge {
                Ok(d) => format!("in {:.2}s", d.as_secs_f64()),
                Err(_) => "NO".into(),
            },
            secs(self.heard),
            secs(self.rejoin),
            self.rejoin_how.as_ref().map(|h| format!(" ({h})")).unwrap_or_default(),
        )
    }

    /// The summary, the events and every violation, one per line.
    pub fn details(&self) -> String {
        let mut out = vec![self.summary()];
        out.extend(self.events.iter().map(|e| format!("  event: {e}")));
        out.extend(self.violations.iter().map(|v| format!("  VIOLATION: {v}")));
        out.join("\n")
    }
}

/// Converged again after a heal (or not).
struct Convergence {
    result: Result<(String, Duration), String>,
    /// When `watch` (the old primary) first streamed from the primary of the moment.
    rejoin: Option<Duration>,
    /// When the coordinator first held a report of `watch` that knows the committed epoch.
    heard: Option<Duration>,
}

/// The coordinator holds a report from `old`, no longer the primary, sent after it learned the
/// committed epoch.
async fn coordinator_heard(c: &NsCluster, old: &str) -> bool {
    match c.view().await {
        Ok(v) => {
            v.state.primary.as_deref() != Some(old) && v.reports.get(old).is_some_and(|r| r.epoch_seen >= v.state.epoch)
        }
        Err(_) => false,
    }
}

/// Poll the members until they converge, at most `bound`.
async fn wait_converged(c: &NsCluster, bound: Duration, watch: Option<&str>) -> Convergence {
    let ep = &c.endpoints;
    let start = Instant::now();
    let mut rejoin = None;
    let mut heard = None;
    loop {
        if let (Some(old), None) = (watch, heard) {
            if coordinator_heard(c, old).await {
                heard = Some(start.elapsed());
            }
        }
        let probes = probe::probe_all(ep).await;
        let verdict = probe::converged(ep, &probes);
        if let (Some(old), None) = (watch, rejoin) {
            if let Some(p) = unique_primary(&probes) {
                let ip = ep.ip(&p).unwrap_or_default();
                if p != old && probe::not_following(probes.get(old), &p, ip, primary_timeline(&probes)).is_none() {
                    rejoin = Some(start.elapsed());
                }
            }
        }
        match verdict {
            Ok(p) => {
                if let (Some(old), None) = (watch, heard) {
                    // Streaming again before the check above saw it: it is heard by now.
                    if coordinator_heard(c, old).await {
                        heard = Some(start.elapsed());
                    }
                }
                return Convergence { result: Ok((p, start.elapsed())), rejoin, heard };
            }
            Err(why) if start.elapsed() >= bound => {
                let (daemons, rejoin_hint) = match c.view().await {
                    Ok(v) => {
                        let waiting: Vec<&String> =
                            v.reports.iter().filter(|(_, r)| r.pg.needs_rejoin).map(|(n, _)| n).collect();
                        let hint = if waiting.is_empty() {
                            String::new()
                        } else {
                            format!(" [the daemons report {waiting:?} as needs_rejoin: not rejoined automatically]")
                        };
                        (pgvigil::list::table(&v), hint)
                    }
                    Err(e) => (format!("(no daemon view: {e:#})\n"), String::new()),
                };
                let msg = format!(
                    "not converged {:.0}s after the heal: {why}{rejoin_hint}\n    checker: {}\n    daemons' view (a hint only):\n{}",
                    bound.as_secs_f64(),
                    probe::describe(ep, &probes),
                    daemons.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
                );
                return Convergence { result: Err(msg), rejoin, heard };
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn unique_primary(probes: &Probes) -> Option<String> {
    let ps: Vec<&String> =
        probes.iter().filter(|(_, p)| matches!(p, probe::Probe::Primary { .. })).map(|(n, _)| n).collect();
    (ps.len() == 1).then(|| ps[0].clone())
}

fn primary_timeline(probes: &Probes) -> u32 {
    probes
        .values()
        .find_map(|p| match p {
            probe::Probe::Primary { timeline } => Some(*timeline),
            _ => None,
        })
        .unwrap_or(0)
}

/// The ids on `host`'s PostgreSQL.
async fn ids_on(ep: &Endpoints, host: &str) -> anyhow::Result<HashSet<i64>> {
    let ip = ep.ip(host).context("no such host")?;
    let c = ep.connect(ip, Duration::from_secs(2)).await?;
    let rows = c.query(&format!("SELECT id FROM {}", writer::TABLE), &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// Who is primary (checker) and coordinator (daemons). With `steady`, waits up to 30 s for the
/// steady state a measured run starts from: the coordinator off the primary's host and, in a
/// synchronous mode, a committed synchronous standby that holds every acknowledged commit (the
/// primary no longer in `sync.holders`; until then the daemons refuse any failover by design).
/// This reads the daemons' state, but only to aim and to time the fault, never for a verdict.
async fn roles(c: &NsCluster, primary: &str, steady: bool, mode: Mode) -> anyhow::Result<Roles> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = c.view().await.ok();
        let coordinator = view.as_ref().map(|v| v.coordinator.clone()).unwrap_or_default();
        let sync_ready = view.as_ref().is_some_and(|v| {
            !mode.synchronous() || (!v.state.sync.standbys.is_empty() && !v.state.sync.holders.contains(primary))
        });
        let good = !coordinator.is_empty() && (!steady || (coordinator != primary && sync_ready));
        if good || (Instant::now() >= deadline && !coordinator.is_empty()) {
            if !good {
                println!("  (not in steady state after 30 s: coordinator {coordinator}, sync ready {sync_ready})");
            }
            return Ok(Roles { primary: primary.to_string(), coordinator, members: c.names() });
        }
        anyhow::ensure!(Instant::now() < deadline, "no coordinator known after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait (up to `bound`) for a converged cluster: its primary.
pub async fn converged_primary(c: &NsCluster, bound: Duration) -> anyhow::Result<String> {
    let conv = wait_converged(c, bound, None).await;
    conv.result.map(|(primary, _)| primary).map_err(|e| anyhow::anyhow!("not converged: {e}"))
}

/// Start the daemons, wait for a converged cluster, create the table and start writing.
pub async fn start(c: &Arc<NsCluster>, s: &Settings) -> anyhow::Result<(Writer, String)> {
    c.start_all()?;
    let conv = wait_converged(c, Duration::from_secs(120), None).await;
    let primary = match conv.result {
        Ok((p, _)) => p,
        Err(e) => {
            let mut saved = Vec::new();
            save_logs(c, s, "start", &mut saved).await;
            anyhow::bail!("the new cluster: {e}\n    {}", saved.join("; "));
        }
    };
    writer::create_table(&c.endpoints, c.endpoints.ip(&primary).unwrap_or_default()).await?;
    let local: Vec<(String, String)> = c.net.hosts.iter().map(|h| (h.name.clone(), h.ns.clone())).collect();
    let w = Writer::start(&c.endpoints, &local, Instant::now(), s.write_interval, s.write_timeout)?;
    w.wait_acks(&primary, Duration::ZERO, 20, Duration::from_secs(20)).await?;
    Ok((w, primary))
}

/// The committed history since `since_unix_ms` (minus a second of clock slack).
async fn history_since(c: &NsCluster, since_unix_ms: u64) -> anyhow::Result<Vec<vigil_core::Event>> {
    let v = c.view().await?;
    Ok(v.state.history.into_iter().filter(|e| e.at_unix_ms + 1000 >= since_unix_ms).collect())
}

/// An event kind's name as the daemons write it (`rewind`, `reclone`, ...).
fn kind_name(kind: vigil_core::EventKind) -> String {
    serde_json::to_value(kind).ok().and_then(|k| k.as_str().map(str::to_string)).unwrap_or_else(|| format!("{kind:?}"))
}

fn event_line(e: &vigil_core::Event, since_unix_ms: u64) -> String {
    format!(
        "+{:.2}s {} {} (epoch {}): {}",
        (e.at_unix_ms as f64 - since_unix_ms as f64) / 1000.0,
        kind_name(e.kind),
        e.member,
        e.epoch,
        e.detail
    )
}

/// How `old` rejoined, from the history: the first rewind/re-clone event of it.
fn rejoin_how(history: &[vigil_core::Event], old: &str) -> Option<String> {
    history
        .iter()
        .find(|e| e.member == old && matches!(e.kind, vigil_core::EventKind::Rewind | vigil_core::EventKind::Reclone))
        .map(|e| format!("{}: {}", kind_name(e.kind), e.detail.split(':').next().unwrap_or("")))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// (failover, new primary, outage) for a fault at `t_fault` on `old`'s watch.
fn fault_figures(acks: &[Ack], old: &str, t_fault: Duration) -> (Option<Duration>, Option<String>, Option<Duration>) {
    let first_elsewhere = acks.iter().filter(|a| a.host != old && a.acked > t_fault).min_by_key(|a| a.acked);
    (
        first_elsewhere.map(|a| a.acked - t_fault),
        first_elsewhere.map(|a| a.host.clone()),
        verdict::longest_gap(acks, t_fault),
    )
}

/// Hold the fault: a fixed time, or until a write is acknowledged on another host (kills/cuts).
async fn hold(w: &Writer, kind: FaultKind, old: &str, t_fault: Duration, s: &Settings) {
    if let Some(d) = s.hold.or_else(|| default_hold(kind, s.flap_period)) {
        tokio::time::sleep(d).await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let acks = w.acks();
        let done = match kind {
            FaultKind::KillPostgres => acks.iter().any(|a| a.sent >= t_fault),
            _ => acks.iter().any(|a| a.host != old && a.acked > t_fault),
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if kind != FaultKind::KillPostgres {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The verdicts common to both kinds of run; pushes violations.
async fn judge(
    c: &NsCluster,
    s: &Settings,
    acks: &[Ack],
    primary: Option<&str>,
    violations: &mut Vec<String>,
) -> (Vec<Ack>, Vec<Overlap>, Option<i64>) {
    // Archiving: a conflicting push means two members wrote different WAL under one name.
    // Each log read once: the conflicts, and (with archiving) how many pushes there were.
    let mut pushed = 0;
    for name in c.names() {
        let log = std::fs::read_to_string(c.state_dir(&name).join("postgresql.log")).unwrap_or_default();
        pushed += log.lines().filter(|l| l.contains("pushed (epoch")).count();
        if let Some(line) = log.lines().find(|l| l.contains("different checksum")) {
            violations.push(format!("a conflicting archive push on {name}: {line}"));
        }
    }
    if s.archive {
        println!("  archive: {pushed} WAL files pushed by the members");
    }
    let overlaps = verdict::overlaps(acks, verdict::PERIOD_GAP);
    for o in overlaps.iter().take(5) {
        violations.push(format!("two writable primaries: {o}"));
    }
    if overlaps.len() > 5 {
        violations.push(format!("... {} overlapping commits in all", overlaps.len()));
    }
    let min_handover = verdict::handovers(acks).iter().map(|h| h.gap_ms).min();
    let mut lost = Vec::new();
    match primary {
        Some(p) => match ids_on(&c.endpoints, p).await {
            Ok(present) => {
                lost = verdict::lost(acks, &present);
                if !lost.is_empty() {
                    let ids: Vec<String> = lost
                        .iter()
                        .take(10)
                        .map(|a| format!("{} on {} at {:.3}s", a.id, a.host, a.acked.as_secs_f64()))
                        .collect();
                    let msg = format!("{} acknowledged commits missing on {p}: {}", lost.len(), ids.join(", "));
                    if s.mode.synchronous() {
                        violations.push(msg);
                    } else {
                        println!("  (async mode, reported, not a violation) {msg}");
                    }
                }
            }
            Err(e) => violations.push(format!("cannot read the ids on the final primary {p}: {e:#}")),
        },
        None => violations.push("no single primary to check the acknowledged commits against".into()),
    }
    (lost, overlaps, min_handover)
}

async fn save_logs(c: &NsCluster, s: &Settings, what: &str, violations: &mut Vec<String>) {
    let dest = s.logs.join(format!("{}-{what}", c.net.id));
    match c.save_logs(&dest) {
        Ok(()) => violations.push(format!("logs saved in {}", dest.display())),
        Err(e) => violations.push(format!("could not save the logs: {e:#}")),
    }
}

/// One fault of `kind` on a fresh cluster.
pub async fn run_fault(c: Arc<NsCluster>, kind: FaultKind, s: Settings) -> anyhow::Result<RunReport> {
    let (mut w, primary) = start(&c, &s).await?;
    let roles = roles(&c, &primary, true, s.mode).await?;
    let fault = Fault::aim(kind, Target::Primary, &roles, s.flap_period);
    let old = primary.clone();

    let (t_fault, wall_fault) = (w.now(), unix_ms());
    let injected: Injected = fault.inject(&c).with_context(|| format!("inject {fault}"))?;
    hold(&w, kind, &old, t_fault, &s).await;
    injected.heal(&c).await.with_context(|| format!("heal {fault}"))?;
    let t_heal = w.now();

    let conv = wait_converged(&c, s.converge_bound, Some(&old)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.stop().await;
    let acks = w.acks();

    let mut violations = Vec::new();
    let final_primary = match &conv.result {
        Ok((p, _)) => Some(p.clone()),
        Err(why) => {
            violations.push(why.clone());
            unique_primary(&probe::probe_all(&c.endpoints).await)
        }
    };
    if !acks.iter().any(|a| a.sent >= t_heal) {
        violations.push("no write was acknowledged after the heal".into());
    }
    let (lost, overlaps, min_handover_ms) = judge(&c, &s, &acks, final_primary.as_deref(), &mut violations).await;
    let (failover, new_primary, outage) = fault_figures(&acks, &old, t_fault);
    let (events, rejoin_how) = match history_since(&c, wall_fault).await {
        Ok(h) => (h.iter().map(|e| event_line(e, wall_fault)).collect(), rejoin_how(&h, &old)),
        Err(e) => (vec![format!("(history unavailable: {e:#})")], None),
    };
    if !violations.is_empty() {
        save_logs(&c, &s, kind.name(), &mut violations).await;
    } else if s.save_logs {
        let dest = s.logs.join(format!("{}-{}", c.net.id, kind.name()));
        if let Err(e) = c.save_logs(&dest) {
            println!("  could not save the logs: {e:#}");
        }
    }
    let moved = final_primary.as_deref().is_some_and(|p| p != old);
    Ok(RunReport {
        fault: fault.to_string(),
        kind,
        mode: s.mode,
        old_primary: old,
        new_primary,
        failover,
        outage,
        acked: acks.len(),
        lost,
        overlaps,
        min_handover_ms,
        converge: conv.result.map(|(_, d)| d),
        rejoin: if moved { conv.rejoin } else { None },
        heard: if moved { conv.heard } else { None },
        rejoin_how,
        events,
        violations,
    })
}

/// A seeded random run.
pub struct RandomReport {
    pub seed: u64,
    pub steps: usize,
    pub acked: usize,
    pub lost: usize,
    pub violations: Vec<String>,
}

/// Steps of `Schedule::new(seed)` on one cluster until `duration` is over (or `max_steps` ran);
/// after each heal the cluster must converge within the bound, and the verdicts must hold on
/// everything written so far. Stops at the first violation.
pub async fn run_random(
    c: Arc<NsCluster>,
    seed: u64,
    duration: Duration,
    max_steps: Option<usize>,
    s: Settings,
) -> anyhow::Result<RandomReport> {
    let (mut w, mut primary) = start(&c, &s).await?;
    let begin = Instant::now();
    let mut violations = Vec::new();
    let mut steps = 0;
    let mut lost_total = 0;
    for (i, step) in Schedule::new(seed).enumerate() {
        if begin.elapsed() >= duration || max_steps.is_some_and(|n| i >= n) {
            break;
        }
        steps = i + 1;
        let roles = roles(&c, &primary, step.kind == FaultKind::CutPrimaryCoordinator, s.mode).await?;
        let fault = Fault::aim(step.kind, step.target, &roles, step.flap_period);
        let old = primary.clone();
        println!("step {i}: {step} -> {fault}");
        if fault.kind == FaultKind::CutPrimaryCoordinator && roles.primary == roles.coordinator {
            println!("  skipped: the coordinator is on the primary's host");
            continue;
        }
        let t_fault = w.now();
        let injected = fault.inject(&c).with_context(|| format!("step {i}: inject {fault}"))?;
        tokio::time::sleep(step.hold).await;
        injected.heal(&c).await.with_context(|| format!("step {i}: heal {fault}"))?;
        let conv = wait_converged(&c, s.converge_bound, Some(&old)).await;
        let acks = w.acks();
        let (failover, new, outage) = fault_figures(&acks, &old, t_fault);
        let current = match &conv.result {
            Ok((p, _)) => Some(p.clone()),
            Err(why) => {
                violations.push(format!("step {i} ({fault}): {why}"));
                None
            }
        };
        // Not converged: still check the acknowledged commits against a single writable primary.
        let check_on = match &current {
            Some(p) => Some(p.clone()),
            None => unique_primary(&probe::probe_all(&c.endpoints).await),
        };
        let (lost, _, _) = judge(&c, &s, &acks, check_on.as_deref(), &mut violations).await;
        lost_total = lost.len();
        let secs = |d: Option<Duration>| d.map(|d| format!("{:.2}s", d.as_secs_f64())).unwrap_or_else(|| "-".into());
        println!(
            "  outage {}, failover {} ({}), converged {}, old primary rejoined {}, acked so far {}, lost {}",
            secs(outage),
            secs(failover),
            new.as_deref().unwrap_or("-"),
            conv.result.as_ref().map(|(_, d)| format!("in {:.2}s", d.as_secs_f64())).unwrap_or_else(|_| "NO".into()),
            secs(conv.rejoin),
            acks.len(),
            lost.len()
        );
        if !violations.is_empty() {
            for v in &violations {
                println!("  VIOLATION: {v}");
            }
            save_logs(&c, &s, &format!("seed{seed}-step{i}"), &mut violations).await;
            break;
        }
        if let Some(p) = current {
            primary = p;
        }
        tokio::time::sleep(step.pause).await;
    }
    w.stop().await;
    let acks = w.acks();
    if violations.is_empty() {
        // Everything written up to the end, against the final primary.
        let conv = wait_converged(&c, s.converge_bound, None).await;
        let p = match conv.result {
            Ok((p, _)) => Some(p),
            Err(why) => {
                violations.push(format!("at the end: {why}"));
                None
            }
        };
        let (lost, _, _) = judge(&c, &s, &acks, p.as_deref(), &mut violations).await;
        lost_total = lost.len();
        if !violations.is_empty() {
            save_logs(&c, &s, &format!("seed{seed}-end"), &mut violations).await;
        }
    }
    Ok(RandomReport { seed, steps, acked: acks.len(), lost: lost_total, violations })
}

/// `min / median / max` of the present values, in seconds.
pub fn spread(values: &[Option<Duration>]) -> String {
    let mut v: Vec<Duration> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2 };
    let s = |d: Duration| format!("{:.2}", d.as_secs_f64());
    let missing = values.len() - v.len();
    let note = if missing > 0 { format!(" ({missing} without)") } else { String::new() };
    format!("{} / {} / {} s{note}", s(v[0]), s(median), s(v[v.len() - 1]))
}

/// The figures of several runs of one kind, as a Markdown table row:
/// `| fault | mode | runs | failover | outage | lost/acked | converge | rejoin | violations |`.
pub fn figures_row(reports: &[RunReport]) -> String {
    let Some(first) = reports.first() else { return String::new() };
    let pick = |f: &dyn Fn(&RunReport) -> Option<Duration>| reports.iter().map(f).collect::<Vec<_>>();
    format!(
        "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
        first.kind.name(),
        first.mode.name(),
        reports.len(),
        spread(&pick(&|r| r.failover)),
        spread(&pick(&|r| r.outage)),
        reports.iter().map(|r| r.lost.len()).sum::<usize>(),
        reports.iter().map(|r| r.acked).sum::<usize>(),
        spread(&pick(&|r| r.converge.as_ref().ok().copied())),
        spread(&pick(&|r| r.rejoin)),
        rejoin_counts(reports),
        reports.iter().filter(|r| !r.ok()).count(),
    )
}

/// `rewind 4, reclone 1`: how the old primaries rejoined.
fn rejoin_counts(reports: &[RunReport]) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for how in reports.iter().filter_map(|r| r.rejoin_how.as_deref()) {
        *counts.entry(how.split(':').next().unwrap_or(how).to_string()).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
}

pub const FIGURES_HEADER: &str = "| fault | mode | runs | failover min/median/max | outage min/median/max | lost / acked | converge after heal | old primary rejoin | rejoined by | failed runs |\n|---|---|---|---|---|---|---|---|---|---|";
