//! The simulated cluster: members (PostgreSQL model, keeper, daemon), the Raft model, the
//! network, clients, and the clock. [`World::tick`] advances virtual time by [`TICK_MS`].
//!
//! The daemon's calling order is the shell's (`crates/pgvigil/src/{agent,reporter,coordination}.rs`):
//! the reporter sends a report to the leader it knows; the coordinator brings its leadership up to
//! date (`set_leader`), takes the report (`on_report`), confirms its leadership with a quorum round
//! and only then records the grant (`granted`); its loop decides and proposes; the agent observes
//! PostgreSQL, runs the reconciler and carries the actions out one after another.

use crate::check::Failure;
use crate::faults::{self, Kind, Planned, Target, Weather};
use crate::net::Net;
use crate::pg::{Dir, Op, Pg};
use crate::raft::{self, Raft};
use crate::rng::Rng;
use crate::trace::Trace;
use crate::{Config, Planted};
use std::time::{Duration, Instant};
use vigil_core::agent::{divergence, reconcile, AgentAction, AgentInput};
use vigil_core::report::{RejoinMethod, RejoinRecord, ReplicaStatus};
use vigil_core::{
    ClusterState, Coordinator, DataDir, HealthReport, Input, Lease, LocalMemory, MemberKind, PgStatus, Timings,
    Upstream,
};

mod daemon;

/// The step of virtual time.
pub const TICK_MS: u64 = 10;
/// Clients write to every server that takes writes this often.
const WRITE_EVERY_MS: u64 = 50;
/// A standby not streaming for this long checks its timeline against the primary's (the shell's).
const DIVERGENCE_CHECK_AFTER: Duration = Duration::from_secs(2);
const PG_PORT: u16 = 5432;

/// The daemon's memory, lost when it is killed.
pub struct Daemon {
    pub coordinator: Coordinator,
    pub lease: Lease,
    /// The epoch it acts as primary for (0: none); the keeper is given this epoch's lease.
    pub acting: u64,
    /// The last observation, as the reporter sends it.
    pub status: PgStatus,
    unhealthy_since: Option<Instant>,
    needs_rejoin: bool,
    diverged: Option<String>,
    not_streaming_since: Option<Instant>,
    divergence_checked: Option<Instant>,
    next_loop: Instant,
    /// Run the loop at the next tick (a committed state changed, a lease was granted).
    wake: bool,
    last_rejoin: Option<RejoinRecord>,
    seen_applied: usize,
    /// The last action noted in the trace.
    last_action: String,
    /// As coordinator: the last answer to the primary's report, noted when it changes.
    last_answer: Option<bool>,
}

pub struct Member {
    pub name: String,
    pub kind: MemberKind,
    /// Clock-rate error in parts per million.
    pub ppm: i64,
    pub pg: Pg,
    /// The keeper's lease: (epoch, deadline on this host's clock). None: no writable server allowed.
    pub keeper: Option<(u64, Instant)>,
    /// `local.json`.
    pub local: LocalMemory,
    /// The committed state this member has applied.
    pub state: ClusterState,
    pub daemon: Option<Daemon>,
    /// The daemon is SIGSTOPped (alone, or with its host), by this many faults.
    pub stalled: u32,
    /// The whole host is SIGSTOPped (keeper and PostgreSQL too), by this many faults.
    pub frozen: u32,
    /// The daemon's Raft task is stalled, by this many faults.
    pub raft_stalled: u32,
    inbox: Vec<Msg>,
}

#[derive(Clone, Debug)]
enum Msg {
    Report { from: usize, report: Box<HealthReport>, sent: Instant },
    Ack { granted: bool, epoch: u64, sent: Instant },
}

struct InFlight {
    at: u64,
    to: usize,
    msg: Msg,
}

/// One acknowledged commit.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: u64,
    pub lsn: u64,
    pub chain: u64,
    pub by: usize,
    pub at: u64,
    /// Acknowledged after the synchronous mode was committed: a failover must keep it.
    pub protected: bool,
}

struct Active {
    planned: Planned,
    /// The hosts it was applied to.
    hosts: Vec<usize>,
    heal_at: u64,
    flap_down: bool,
    next_flap: u64,
}

pub struct World {
    pub cfg: Config,
    pub now: u64,
    origin: Instant,
    pub timings: Timings,
    pub members: Vec<Member>,
    pub raft: Raft,
    pub net: Net,
    /// The committed state as the whole log makes it (what a member that applied all would have).
    pub committed: ClusterState,
    committed_len: usize,
    pub acks: Vec<Ack>,
    pub trace: Trace,
    weather: Weather,
    rng: Rng,
    plan: Vec<Planned>,
    active: Vec<Active>,
    flight: Vec<InFlight>,
    next_id: u64,
    next_timeline: u32,
    /// When the last fault healed.
    pub last_heal: u64,
    pub failure: Option<Failure>,
    /// Whether each member took writes at the previous tick.
    pub writable_before: Vec<bool>,
}

impl World {
    pub fn new(cfg: Config, seed: u64, trace: bool) -> Self {
        let mut rng = Rng::new(seed);
        let mut fault_rng = rng.fork();
        let raft_rng = rng.fork();
        let timings = Timings::default();
        let mut names: Vec<(String, MemberKind)> =
            (1..=cfg.postgres).map(|k| (format!("pg{k}"), MemberKind::Postgres)).collect();
        if cfg.witness {
            names.push(("witness".into(), MemberKind::Witness));
        }
        let n = names.len();
        let expected: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        // The one read of the real clock: an origin for virtual time. Only differences matter.
        let origin = Instant::now();
        let members = names
            .into_iter()
            .map(|(name, kind)| {
                let ppm = rng.range(0, 2 * cfg.max_drift_ppm as u64) as i64 - cfg.max_drift_ppm;
                Member {
                    name,
                    kind,
                    ppm,
                    pg: Pg::empty(),
                    keeper: None,
                    local: LocalMemory::default(),
                    state: ClusterState::default(),
                    daemon: None,
                    stalled: 0,
                    frozen: 0,
                    raft_stalled: 0,
                    inbox: Vec::new(),
                }
            })
            .collect();
        let weather = if cfg.faults && cfg.script.is_none() { Weather::draw(&mut fault_rng) } else { Weather::calm() };
        let plan = match &cfg.script {
            Some(s) => s.clone(),
            None if cfg.faults => faults::schedule(&mut fault_rng, cfg.faults_from_ms, cfg.duration_ms - cfg.settle_ms),
            None => Vec::new(),
        };
        let election_ms = (timings.raft_tick * timings.election_ticks).as_millis() as u64;
        let heartbeat_ms = (timings.raft_tick * timings.heartbeat_ticks).as_millis() as u64;
        let mut w = World {
            now: 0,
            origin,
            timings,
            members,
            raft: Raft::new(n, election_ms, heartbeat_ms, raft_rng),
            net: Net::new(n),
            committed: ClusterState::default(),
            committed_len: 0,
            acks: Vec::new(),
            trace: Trace::new(trace),
            weather,
            rng,
            plan,
            active: Vec::new(),
            flight: Vec::new(),
            next_id: 1,
            next_timeline: 2,
            last_heal: 0,
            failure: None,
            writable_before: vec![false; n],
            cfg,
        };
        for i in 0..n {
            w.start_daemon(i, &expected);
        }
        w.trace.note(0, || {
            format!("weather {:?}, clocks (ppm) {:?}", w.weather, w.members.iter().map(|m| m.ppm).collect::<Vec<_>>())
        });
        w
    }

    /// This member's monotonic clock (`Instant`), running at its own rate.
    pub fn clock(&self, i: usize) -> Instant {
        let rate = 1_000_000 + self.members[i].ppm;
        let micros = self.now * rate as u64 / 1000;
        self.origin + Duration::from_micros(micros)
    }

    fn up(&self) -> Vec<bool> {
        self.members
            .iter()
            .map(|m| m.daemon.is_some() && m.stalled == 0 && m.frozen == 0 && m.raft_stalled == 0)
            .collect()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    fn upstream_of(&self, u: &Upstream) -> Option<usize> {
        self.index(&u.host)
    }

    fn expected(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    fn start_daemon(&mut self, i: usize, expected: &[String]) {
        let now_l = self.clock(i);
        let cfg_sync = self.cfg.sync;
        let m = &mut self.members[i];
        let mut lease = Lease::default();
        // Adoption: a running server's keeper still holds the lease of the epoch local.json names.
        if !m.pg.running {
            m.keeper = None;
        } else if let Some((epoch, until)) = m.keeper.filter(|(e, _)| Some(*e) == m.local.primary_epoch && *e != 0) {
            lease.restore(epoch, until);
        }
        let coordinator =
            Coordinator::new(expected.iter().cloned(), self.timings.clone()).with_sync(cfg_sync, 1).named(&m.name);
        m.daemon = Some(Daemon {
            coordinator,
            lease,
            acting: m.local.primary_epoch.unwrap_or(0),
            status: PgStatus { data_dir: data_dir(m.pg.dir), ..Default::default() },
            unhealthy_since: Some(now_l),
            needs_rejoin: false,
            diverged: None,
            not_streaming_since: None,
            divergence_checked: None,
            next_loop: now_l,
            wake: true,
            last_rejoin: None,
            seen_applied: 0,
            last_action: String::new(),
            last_answer: None,
        });
    }

    /// Advance by one tick and check the invariants.
    pub fn tick(&mut self) {
        self.now += TICK_MS;
        self.faults();
        self.deliver();
        self.raft_step();
        self.postgres();
        for i in 0..self.members.len() {
            self.daemon_loop(i);
        }
        if every(self.now, WRITE_EVERY_MS) {
            self.clients();
        }
        self.acknowledge();
        crate::check::after_tick(self);
    }

    // ---- faults ----

    fn resolve(&self, t: Target) -> usize {
        let n = self.members.len();
        match t {
            Target::Primary => self.committed.primary.as_deref().and_then(|p| self.index(p)).unwrap_or(0),
            Target::Coordinator => self.raft.true_leader().unwrap_or(0),
            Target::Member(k) => k % n,
        }
    }

    fn faults(&mut self) {
        while self.plan.first().is_some_and(|p| p.at_ms <= self.now) {
            let p = self.plan.remove(0);
            self.inject(p);
        }
        let now = self.now;
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].heal_at <= now {
                let a = self.active.remove(i);
                self.heal(a);
                continue;
            }
            if self.active[i].planned.kind == Kind::Flap && self.active[i].next_flap <= now {
                let host = self.active[i].hosts[0];
                let down = !self.active[i].flap_down;
                self.net.isolate(host, down);
                self.active[i].flap_down = down;
                self.active[i].next_flap = now + self.active[i].planned.flap_period_ms;
            }
            i += 1;
        }
    }

    fn inject(&mut self, p: Planned) {
        let t = self.resolve(p.target);
        let n = self.members.len();
        let mut hosts = vec![t];
        match p.kind {
            Kind::KillPostgres => self.members[t].pg.kill(),
            Kind::KillDaemon => self.kill_daemon(t),
            Kind::Freeze => {
                let m = &mut self.members[t];
                m.frozen += 1;
                m.stalled += 1;
                m.pg.freeze(true);
            }
            Kind::StallDaemon => self.members[t].stalled += 1,
            Kind::FreezePostgres => self.members[t].pg.freeze(true),
            Kind::StallRaft => self.members[t].raft_stalled += 1,
            Kind::Isolate | Kind::Flap => self.net.isolate(t, true),
            Kind::IsolateCoordinator => {
                hosts = vec![self.resolve(Target::Coordinator)];
                self.net.isolate(hosts[0], true);
            }
            Kind::CutPrimaryCoordinator => {
                let c = self.resolve(Target::Coordinator);
                let p = self.resolve(Target::Primary);
                hosts = vec![p, c];
                self.net.cut_pair(p, c, true);
            }
            Kind::OneWay => {
                let other = (t + 1 + p.other % (n - 1)) % n;
                hosts = vec![t, other];
                self.net.cut_one_way(t, other, true);
            }
        }
        let names: Vec<&str> = hosts.iter().map(|h| self.members[*h].name.as_str()).collect();
        let line = format!("FAULT {:?} on {} for {} ms", p.kind, names.join("->"), p.lasts_ms);
        self.trace.note(self.now, || line);
        self.active.push(Active {
            planned: p,
            hosts,
            heal_at: self.now + p.lasts_ms,
            flap_down: true,
            next_flap: self.now + p.flap_period_ms,
        });
    }

    fn heal(&mut self, a: Active) {
        let t = a.hosts[0];
        match a.planned.kind {
            Kind::KillPostgres => {}
            Kind::KillDaemon => {
                let expected = self.expected();
                self.start_daemon(t, &expected);
                self.raft.restart(t, self.now);
            }
            Kind::Freeze => {
                let m = &mut self.members[t];
                m.frozen = m.frozen.saturating_sub(1);
                m.stalled = m.stalled.saturating_sub(1);
                m.pg.freeze(false);
            }
            Kind::StallDaemon => self.members[t].stalled = self.members[t].stalled.saturating_sub(1),
            Kind::FreezePostgres => self.members[t].pg.freeze(false),
            Kind::StallRaft => self.members[t].raft_stalled = self.members[t].raft_stalled.saturating_sub(1),
            Kind::Isolate | Kind::IsolateCoordinator => self.net.isolate(t, false),
            Kind::Flap => {
                if a.flap_down {
                    self.net.isolate(t, false);
                }
            }
            Kind::CutPrimaryCoordinator => self.net.cut_pair(a.hosts[0], a.hosts[1], false),
            Kind::OneWay => self.net.cut_one_way(a.hosts[0], a.hosts[1], false),
        }
        self.last_heal = self.now;
        let line = format!("HEAL {:?} on {}", a.planned.kind, self.members[t].name);
        self.trace.note(self.now, || line);
    }

    fn kill_daemon(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.daemon = None;
        m.inbox.clear();
        // Its pg_basebackup or pg_rewind dies with it; the postmaster lives on under its keeper.
        if matches!(m.pg.op, Some((Op::Clone(_) | Op::Rewind(_), _))) {
            m.pg.op = None;
        }
    }

    // ---- messages ----

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.net.delivers(from, to) || self.rng.chance(self.weather.loss_per_mille) {
            return;
        }
        let delay = if self.rng.chance(self.weather.slow_per_mille) {
            self.rng.range(200, 800)
        } else {
            self.rng.range(1, self.weather.max_delay_ms)
        };
        self.flight.push(InFlight { at: self.now + delay, to, msg });
    }

    fn deliver(&mut self) {
        let now = self.now;
        let (due, later): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.flight).into_iter().partition(|f| f.at <= now);
        self.flight = later;
        for f in due {
            let m = &mut self.members[f.to];
            if m.daemon.is_some() {
                m.inbox.push(f.msg);
            }
        }
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if m.daemon.is_none() || m.stalled > 0 || m.inbox.is_empty() {
                continue;
            }
            let inbox = std::mem::take(&mut self.members[i].inbox);
            for msg in inbox {
                match msg {
                    Msg::Report { from, report, sent } => {
                        let (granted, epoch) = self.handle_report(i, *report);
                        self.send(i, from, Msg::Ack { granted, epoch, sent });
                    }
                    Msg::Ack { granted, epoch, sent } => self.take_ack(i, granted, epoch, sent),
                }
            }
        }
    }

    // ---- Raft ----

    fn raft_step(&mut self) {
        let up = self.up();
        let mut changes = Vec::new();
        self.raft.step(self.now, &self.net, &up, &mut changes);
        self.note_raft(changes);
        while self.committed_len < self.raft.log.len() {
            let cmd = self.raft.log[self.committed_len].clone();
            let _ = self.committed.apply(&cmd);
            self.committed_len += 1;
        }
        // Followers apply what their leader has committed, when they hear from it.
        for i in 0..self.members.len() {
            let node = &self.raft.nodes[i];
            let current = if !up[i] {
                false
            } else if node.leader {
                true
            } else {
                node.leader_hint.is_some_and(|l| {
                    up[l]
                        && self.raft.nodes[l].leader
                        && self.raft.nodes[l].term == node.term
                        && self.net.connected(i, l)
                        && every(self.now, self.raft.heartbeat_ms)
                })
            };
            if current {
                self.apply_log(i);
            }
        }
    }

    fn apply_log(&mut self, i: usize) {
        let target = self.raft.log.len();
        let m = &mut self.members[i];
        let mut applied = self.raft.nodes[i].applied;
        while applied < target {
            let _ = m.state.apply(&self.raft.log[applied]);
            applied += 1;
        }
        self.raft.nodes[i].applied = applied;
    }

    fn note_raft(&mut self, changes: Vec<raft::Change>) {
        for c in changes {
            let line = match c {
                raft::Change::Elected { node, term } => {
                    format!("RAFT {} elected, term {term}", self.members[node].name)
                }
                raft::Change::SteppedDown { node, term, why } => {
                    format!("RAFT {} steps down from term {term} ({why})", self.members[node].name)
                }
                raft::Change::Committed { index, by } => {
                    let cmd = &self.raft.log[index - 1];
                    if matches!(cmd, vigil_core::Command::UpsertMember { .. }) {
                        continue;
                    }
                    format!("COMMIT #{index} by {}: {}", self.members[by].name, describe(cmd))
                }
                raft::Change::Dropped { by } => format!("RAFT proposal by {} not committed", self.members[by].name),
            };
            self.trace.note(self.now, || line);
        }
    }

    // ---- PostgreSQL, keepers, replication ----

    fn postgres(&mut self) {
        let now = self.now;
        for i in 0..self.members.len() {
            if self.members[i].frozen > 0 {
                continue;
            }
            // The keeper first: it wakes at the deadline, before the server takes another write.
            let clock = self.clock(i);
            let m = &mut self.members[i];
            if m.pg.writable_server() && m.keeper.is_none_or(|(_, until)| clock >= until) {
                m.pg.kill();
                let name = m.name.clone();
                self.trace.note(now, || format!("KEEPER {name}: writable without a lease, killed"));
            }
            if let Some((op, done)) = self.members[i].pg.op.filter(|(_, at)| *at <= now) {
                self.members[i].pg.op = None;
                self.finish(i, op, done);
            }
        }
        // Standbys stream from their upstream: a primary that answers, over a working connection,
        // whose WAL continues theirs.
        for i in 0..self.members.len() {
            let pg = &self.members[i].pg;
            let Some(u) = pg.upstream.filter(|_| pg.answers() && pg.recovery) else {
                self.members[i].pg.streaming = false;
                continue;
            };
            let src = &self.members[u].pg;
            let ok = u != i && src.accepts_writes() && self.net.connected(i, u) && pg.is_prefix_of(src);
            // A broken stream is retried after a while (wal_retrieve_retry_interval, reconnect).
            let retry = !pg.streaming && now < pg.retry_at;
            if !ok || retry {
                let pg = &mut self.members[i].pg;
                if pg.streaming {
                    pg.retry_at = now + self.rng.range(100, 3000);
                }
                pg.streaming = false;
                continue;
            }
            let (wal, tli, history) = (src.wal.clone(), src.timeline, src.history.clone());
            let pg = &mut self.members[i].pg;
            if !pg.streaming {
                let (name, from) = (self.members[i].name.clone(), self.members[u].name.clone());
                self.trace.note(now, || format!("PG {name} streams from {from}"));
            }
            let pg = &mut self.members[i].pg;
            pg.streaming = true;
            // Received and flushed in this tick, most of the time.
            if self.rng.chance(800) {
                pg.wal = wal;
                pg.timeline = tli;
                pg.history = history;
            }
        }
    }

    fn finish(&mut self, i: usize, op: Op, _done: u64) {
        let now = self.now;
        let name = self.members[i].name.clone();
        match op {
            Op::Start => self.trace.note(now, || format!("PG {name} accepts connections")),
            Op::Promote => {
                let id = self.fresh_id();
                let tli = self.next_timeline;
                self.next_timeline += 1;
                let pg = &mut self.members[i].pg;
                pg.history.push((pg.timeline, pg.lsn()));
                pg.timeline = tli;
                pg.append(id);
                pg.recovery = false;
                pg.dir = Dir::Primary;
                pg.upstream = None;
                pg.streaming = false;
                self.trace.note(now, || format!("PG {name} promoted, timeline {tli}"));
            }
            Op::Clone(src) | Op::Rewind(src) => {
                let from = &self.members[src];
                let ok = from.pg.accepts_writes() && self.net.connected(i, src);
                let (wal, tli, history) = (from.pg.wal.clone(), from.pg.timeline, from.pg.history.clone());
                let upstream = Upstream { host: from.name.clone(), port: PG_PORT };
                let rewind = matches!(op, Op::Rewind(_));
                let m = &mut self.members[i];
                if ok {
                    if rewind {
                        let keep = m.pg.common_prefix(&Pg { wal: wal.clone(), ..Pg::empty() });
                        m.pg.wal.truncate(keep);
                    } else {
                        m.pg.wal = wal;
                    }
                    m.pg.timeline = tli;
                    m.pg.history = history;
                    m.pg.dir = Dir::Standby;
                    m.pg.upstream = Some(src);
                    m.local.upstream = Some(upstream);
                    if rewind {
                        m.local.primary_epoch = None;
                        m.local.switchover_stop = None;
                    }
                }
                if let Some(d) = m.daemon.as_mut() {
                    if rewind {
                        d.last_rejoin = Some(RejoinRecord {
                            started_unix_ms: now,
                            method: RejoinMethod::Rewind,
                            ok,
                            took_ms: 0,
                            detail: "simulated".into(),
                            reinit: None,
                        });
                        d.diverged = None;
                        d.not_streaming_since = None;
                    }
                    d.wake = true;
                }
                let what = if rewind { "rewound" } else { "cloned" };
                let from = self.members[src].name.clone();
                self.trace.note(now, || format!("PG {name} {what} from {from}: {}", if ok { "ok" } else { "failed" }));
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn clients(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].pg.accepts_writes() {
                continue;
            }
            let id = self.fresh_id();
            let pg = &mut self.members[i].pg;
            let lsn = pg.append(id);
            pg.waiting.push(crate::pg::Waiting { id, lsn });
        }
    }

    /// Commits whose synchronous standbys have flushed them (or that need none) are acknowledged.
    fn acknowledge(&mut self) {
        let protected = self.cfg.sync.is_sync() && self.committed.sync.mode.is_sync();
        for i in 0..self.members.len() {
            if self.members[i].pg.waiting.is_empty() || !self.members[i].pg.accepts_writes() {
                continue;
            }
            let rule = self.members[i].pg.sync_rule();
            let waiting = std::mem::take(&mut self.members[i].pg.waiting);
            let mut still = Vec::new();
            for w in waiting {
                let chain = self.members[i].pg.wal[w.lsn as usize - 1].chain;
                let confirmed = match &rule {
                    None => true,
                    Some((count, names)) => {
                        let flushed = names
                            .iter()
                            .filter_map(|n| self.index(n))
                            .filter(|s| {
                                let pg = &self.members[*s].pg;
                                pg.upstream == Some(i) && pg.streaming && pg.holds(w.lsn, chain)
                            })
                            .count();
                        flushed >= *count as usize && *count > 0
                    }
                };
                if confirmed {
                    self.acks.push(Ack { id: w.id, lsn: w.lsn, chain, by: i, at: self.now, protected });
                } else {
                    still.push(w);
                }
            }
            self.members[i].pg.waiting = still;
        }
    }

    /// Whether the cluster is whole again: one primary (the committed one) that takes writes,
    /// every other PostgreSQL member streaming from it.
    pub fn converged(&self) -> Result<(), String> {
        let Some(p) = self.committed.primary.as_deref().and_then(|p| self.index(p)) else {
            return Err("no primary committed".into());
        };
        if !self.members[p].pg.accepts_writes() {
            return Err(format!("the primary {} does not take writes", self.members[p].name));
        }
        for (i, m) in self.members.iter().enumerate() {
            if i == p || m.kind != MemberKind::Postgres {
                continue;
            }
            if !(m.pg.answers() && m.pg.recovery && m.pg.streaming && m.pg.upstream == Some(p)) {
                return Err(format!(
                    "{} is not streaming from {} (running {}, recovery {}, streaming {}, upstream {:?}, dir {:?})",
                    m.name,
                    self.members[p].name,
                    m.pg.answers(),
                    m.pg.recovery,
                    m.pg.streaming,
                    m.pg.upstream.map(|u| self.members[u].name.as_str()),
                    m.pg.dir
                ));
            }
        }
        Ok(())
    }
}

/// Whether `now` is a multiple of `period` (`u64::is_multiple_of` needs rust 1.87; the
/// workspace's `rust-version` is 1.85).
#[allow(clippy::manual_is_multiple_of)]
pub(crate) fn every(now: u64, period: u64) -> bool {
    now % period == 0
}

fn data_dir(d: Dir) -> DataDir {
    match d {
        Dir::Empty => DataDir::Empty,
        Dir::Primary => DataDir::Primary,
        Dir::Standby => DataDir::Standby,
    }
}

/// A command in a line of the trace.
pub fn describe(cmd: &vigil_core::Command) -> String {
    use vigil_core::Command as C;
    match cmd {
        C::Failover { from_epoch, to, reason, .. } => format!("failover from epoch {from_epoch} to {to}: {reason}"),
        C::Sync { epoch, sync, reason, .. } => format!(
            "sync (epoch {epoch}) mode {:?} standbys {:?} holders {:?}: {reason}",
            sync.mode, sync.standbys, sync.holders
        ),
        C::Bootstrap { member, .. } => format!("bootstrap by {member}"),
        C::AgreeTimings { .. } => "lease timings".into(),
        C::RecordRejoin { member, .. } => format!("rejoin of {member} recorded"),
        other => format!("{other:?}"),
    }
}
