//! The daemon of each simulated member, in the shell's calling order: the agent observes its
//! PostgreSQL and carries out what the reconciler asks, the reporter sends reports and takes the
//! lease from the answers, and the coordinator takes reports, confirms its leadership and
//! proposes its decisions.

use super::*;

impl World {
    pub(super) fn daemon_loop(&mut self, i: usize) {
        let now_l = self.clock(i);
        let applied = self.raft.nodes[i].applied;
        let m = &mut self.members[i];
        let Some(d) = m.daemon.as_mut().filter(|_| m.stalled == 0) else { return };
        if d.seen_applied != applied {
            d.seen_applied = applied;
            d.wake = true;
        }
        if !d.wake && now_l < d.next_loop {
            return;
        }
        d.wake = false;
        d.next_loop = now_l + self.timings.loop_interval;
        if m.kind == MemberKind::Postgres {
            self.agent_step(i);
        }
        self.report(i);
        self.coordinate(i);
    }

    /// The reconciler: observe, decide, act (the shell's `Agent::step`).
    pub(super) fn agent_step(&mut self, i: usize) {
        if self.members[i].pg.op.is_some() {
            return; // still carrying out the last action
        }
        let now_l = self.clock(i);
        let status = self.observe(i, now_l);
        let m = &mut self.members[i];
        let Some(d) = m.daemon.as_mut() else { return };
        let lease_valid = d.lease.valid(m.state.epoch, now_l);
        let actions = reconcile(&AgentInput {
            me: &m.name,
            kind: m.kind,
            state: &m.state,
            pg: &status,
            lease_valid,
            local: &m.local,
            diverged: d.diverged.as_deref(),
        });
        d.needs_rejoin = actions.iter().any(|a| {
            matches!(a, AgentAction::NeedsRejoin(_) | AgentAction::Rejoin { .. } | AgentAction::Reinit { .. })
        });
        d.status = PgStatus { needs_rejoin: d.needs_rejoin, ..status };
        for action in actions {
            if !self.act(i, action) {
                break;
            }
        }
    }

    pub(super) fn observe(&mut self, i: usize, now_l: Instant) -> PgStatus {
        let m = &self.members[i];
        let pg = &m.pg;
        let am_primary = m.state.is_primary(&m.name);
        let running = pg.answers();
        let primary_now = running && !pg.recovery;
        let replicas: Vec<ReplicaStatus> = if primary_now {
            self.members
                .iter()
                .enumerate()
                .filter(|(j, s)| *j != i && s.pg.upstream == Some(i) && s.pg.streaming && s.pg.answers())
                .map(|(_, s)| ReplicaStatus { member: s.name.clone(), flush_lsn: s.pg.lsn(), streaming: true })
                .collect()
        } else {
            Vec::new()
        };
        // The timeline check of a standby that does not stream (the shell's `check_divergence`).
        let standby = running && pg.recovery && !am_primary;
        let primary = m.state.primary.as_deref().and_then(|p| self.index(p));
        let history = primary
            .filter(|p| self.members[*p].pg.answers() && self.net.connected(i, *p))
            .map(|p| (self.members[p].pg.timeline, self.members[p].pg.history.clone()));
        let (tli, lsn, streaming) = (pg.timeline, pg.lsn(), pg.streaming);
        let Some(d) = self.members[i].daemon.as_mut() else { return PgStatus::default() };
        if !standby || streaming {
            d.not_streaming_since = None;
            if streaming {
                d.diverged = None;
            }
        } else {
            let since = *d.not_streaming_since.get_or_insert(now_l);
            let due = d.divergence_checked.is_none_or(|t| now_l - t >= DIVERGENCE_CHECK_AFTER);
            if now_l - since >= DIVERGENCE_CHECK_AFTER && due {
                d.divergence_checked = Some(now_l);
                if let Some((primary_tli, history)) = history {
                    d.diverged = divergence(tli, lsn, primary_tli, &history);
                }
            }
        }
        let m = &mut self.members[i];
        let healthy = running && (m.pg.recovery != am_primary);
        let pg = &m.pg;
        let Some(d) = m.daemon.as_mut() else { return PgStatus::default() };
        d.unhealthy_since = if healthy { None } else { Some(d.unhealthy_since.unwrap_or(now_l)) };
        if !am_primary && (!running || pg.recovery) {
            d.acting = 0;
        }
        PgStatus {
            running,
            in_recovery: running && pg.recovery,
            timeline: pg.timeline,
            current_lsn: if primary_now { pg.lsn() } else { 0 },
            received_lsn: if running && pg.recovery { pg.lsn() } else { 0 },
            replay_lsn: if running && pg.recovery { pg.lsn() } else { 0 },
            data_dir: data_dir(pg.dir),
            needs_rejoin: d.needs_rejoin,
            streaming: running && pg.streaming,
            down_for: d.unhealthy_since.map_or(Duration::ZERO, |t| now_l - t),
            unresponsive: pg.running && !running,
            replicas,
            sync_names: if primary_now { vigil_core::sync::parse_setting(&pg.sync_names) } else { None },
            last_rejoin: d.last_rejoin.clone(),
            ..Default::default()
        }
    }

    /// Carry out one action; false when it failed (the rest of the step is skipped, as in the shell).
    pub(super) fn act(&mut self, i: usize, action: AgentAction) -> bool {
        let now = self.now;
        let epoch = self.members[i].state.epoch;
        let name = self.members[i].name.clone();
        let delay = |rng: &mut Rng, lo, hi| now + rng.range(lo, hi);
        let line = match &action {
            AgentAction::Wait(_) | AgentAction::PrimaryHousekeeping { .. } => None,
            a => Some(format!("AGENT {name} (epoch {epoch}): {a:?}")),
        };
        // An action repeated loop after loop (a clone waiting for its source) is noted once.
        if let Some(line) = line.filter(|l| self.members[i].daemon.as_ref().is_some_and(|d| d.last_action != *l)) {
            if let Some(d) = self.members[i].daemon.as_mut() {
                d.last_action = line.clone();
            }
            self.trace.note(now, || line);
        }
        match action {
            AgentAction::Wait(_) | AgentAction::NeedsRejoin(_) => true,
            AgentAction::Fence(_) => {
                let m = &mut self.members[i];
                m.pg.kill();
                m.keeper = None;
                true
            }
            AgentAction::MarkPrimary(e) => {
                let m = &mut self.members[i];
                m.local.primary_epoch = Some(e);
                m.local.upstream = None;
                if let Some(d) = m.daemon.as_mut() {
                    d.acting = e;
                }
                self.arm_keeper(i)
            }
            AgentAction::InitDb => {
                let id = self.fresh_id();
                let pg = &mut self.members[i].pg;
                pg.dir = Dir::Primary;
                pg.timeline = 1;
                pg.append(id);
                true
            }
            AgentAction::Start => {
                if self.members[i].pg.running {
                    return true; // runs but does not answer: never started again
                }
                if !self.arm_keeper(i) {
                    return false;
                }
                let done = delay(&mut self.rng, 100, 700);
                let pg = &mut self.members[i].pg;
                pg.running = true;
                pg.recovery = pg.dir == Dir::Standby;
                pg.op = Some((Op::Start, done));
                true
            }
            AgentAction::Promote { sync } => {
                if !self.arm_keeper(i) {
                    return false;
                }
                let done = delay(&mut self.rng, 50, 400);
                let pg = &mut self.members[i].pg;
                pg.sync_names = sync;
                pg.op = Some((Op::Promote, done));
                true
            }
            AgentAction::PrimaryHousekeeping { sync, .. } => {
                let pg = &mut self.members[i].pg;
                if pg.sync_names != sync {
                    let line = format!("PG {name} synchronous_standby_names = '{sync}'");
                    self.trace.note(now, || line);
                    self.members[i].pg.sync_names = sync;
                }
                true
            }
            AgentAction::Rejoin { from, .. } => {
                let Some(src) = self.reachable_primary(i, &from) else { return false };
                let done = delay(&mut self.rng, 300, 2000);
                let pg = &mut self.members[i].pg;
                pg.kill();
                pg.op = Some((Op::Rewind(src), done));
                true
            }
            AgentAction::Clone { from, .. } => {
                let Some(src) = self.reachable_primary(i, &from) else { return false };
                let done = delay(&mut self.rng, 500, 3000);
                self.members[i].pg.op = Some((Op::Clone(src), done));
                true
            }
            AgentAction::ConfigureStandby { from, .. } => {
                let src = self.upstream_of(&from);
                let m = &mut self.members[i];
                m.pg.dir = Dir::Standby;
                m.pg.upstream = src;
                m.local.upstream = Some(from);
                m.local.primary_epoch = None;
                m.local.switchover_stop = None;
                true
            }
            AgentAction::Follow { from, .. } => {
                let src = self.upstream_of(&from);
                let m = &mut self.members[i];
                m.pg.upstream = src;
                m.pg.streaming = false;
                m.local.upstream = Some(from);
                true
            }
            AgentAction::ForgetSwitchover => {
                self.members[i].local.switchover_stop = None;
                true
            }
            // No operator requests in the simulation yet.
            AgentAction::StopForSwitchover { .. } | AgentAction::Reinit { .. } => false,
        }
    }

    pub(super) fn reachable_primary(&self, i: usize, from: &Upstream) -> Option<usize> {
        self.upstream_of(from).filter(|s| self.members[*s].pg.accepts_writes() && self.net.connected(i, *s))
    }

    /// Give the keeper this member's lease (the committed primary) or none, before a start or a
    /// promotion (the shell's `arm_keeper`). False: acting as primary without a lease.
    pub(super) fn arm_keeper(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        let Some(d) = m.daemon.as_ref() else { return false };
        if m.state.is_primary(&m.name) {
            match d.lease.expires_at(m.state.epoch) {
                Some(until) => m.keeper = Some((m.state.epoch, until)),
                None => return false,
            }
        } else {
            m.keeper = None;
        }
        true
    }

    /// The reporter's hand-over to the keeper: the acting epoch's lease, or none.
    pub(super) fn push_keeper(&mut self, i: usize) {
        let m = &mut self.members[i];
        let Some(d) = m.daemon.as_ref() else { return };
        if m.kind != MemberKind::Postgres {
            return;
        }
        m.keeper = if d.acting != 0 { d.lease.expires_at(d.acting).map(|t| (d.acting, t)) } else { None };
    }

    /// The reporter: one report to the coordinator this member knows of.
    pub(super) fn report(&mut self, i: usize) {
        let sent = self.clock(i);
        let m = &self.members[i];
        let Some(d) = m.daemon.as_ref() else { return };
        let report = HealthReport {
            member: m.name.clone(),
            kind: m.kind,
            pg_host: m.name.clone(),
            pg_port: if m.kind == MemberKind::Postgres { PG_PORT } else { 0 },
            tags: vigil_core::Tags::new(),
            pg: d.status.clone(),
            epoch_seen: m.state.epoch,
            proxy: None,
            backup_source: None,
        };
        let node = &self.raft.nodes[i];
        if node.leader {
            let (granted, epoch) = self.handle_report(i, report);
            self.take_ack(i, granted, epoch, sent);
        } else if let Some(l) = node.leader_hint {
            self.send(i, l, Msg::Report { from: i, report: Box::new(report), sent });
        }
        self.push_keeper(i);
    }

    pub(super) fn take_ack(&mut self, i: usize, granted: bool, epoch: u64, sent: Instant) {
        let now_l = self.clock(i);
        let Some(lease_timeout) =
            self.members[i].state.lease_timings.map(|t| Duration::from_millis(t.lease_timeout_ms))
        else {
            return;
        };
        let m = &mut self.members[i];
        let Some(d) = m.daemon.as_mut() else { return };
        // The reporter waits two loops for the answer, then gives up on it.
        if now_l.saturating_duration_since(sent) > self.timings.loop_interval * 2 {
            return;
        }
        let held = d.lease.valid(m.state.epoch, now_l);
        d.lease.on_ack(sent, granted, epoch, lease_timeout);
        if !held && d.lease.valid(m.state.epoch, now_l) {
            d.wake = true;
        }
        self.push_keeper(i);
    }

    /// Raft's leadership as the coordinator on `c` sees it at `now_c` (the shell steps it before
    /// every input); None: no daemon there, or not the leader.
    fn leadership(&mut self, c: usize, now_c: Instant) -> Option<u64> {
        let node = &self.raft.nodes[c];
        let term = node.leader.then_some(node.term);
        let m = &mut self.members[c];
        let d = m.daemon.as_mut()?;
        d.coordinator.step(now_c, &m.state, Input::Leadership(term));
        term
    }

    /// The coordinator's side of a report (the shell's `handle_report`).
    pub(super) fn handle_report(&mut self, c: usize, report: HealthReport) -> (bool, u64) {
        let now_c = self.clock(c);
        if self.leadership(c, now_c).is_none() {
            return (false, 0);
        }
        let m = &mut self.members[c];
        let Some(d) = m.daemon.as_mut() else { return (false, 0) };
        let member = report.member.clone();
        let Some(answer) = d.coordinator.step(now_c, &m.state, Input::Report(Box::new(report))).answer else {
            return (false, 0);
        };
        // A change of the answer for the primary is worth a line.
        let grant = answer.pending.is_some();
        if m.state.is_primary(&member) && d.last_answer != Some(grant) {
            d.last_answer = Some(grant);
            let line = format!("LEASE {} would grant {member} (epoch {}): {grant}", m.name, answer.epoch);
            self.trace.note(self.now, || line);
        }
        let Some(pending) = answer.pending else {
            return (false, answer.epoch);
        };
        // The planted bug skips the quorum round: the grant is judged on the state it was
        // answered from.
        if !self.cfg.planted.contains(&Planted::GrantWithoutConfirm) {
            let up = self.up();
            let mut changes = Vec::new();
            let ok = self.raft.confirm(c, self.now, &self.net, &up, &mut changes);
            self.note_raft(changes);
            if !ok {
                return (false, answer.epoch);
            }
            // The quorum round confirmed an entry of this term: the leader has applied everything
            // committed before it (raft-rs confirms reads only then).
            self.apply_log(c);
        }
        let m = &mut self.members[c];
        let Some(d) = m.daemon.as_mut() else { return (false, 0) };
        let granted = d.coordinator.step(now_c, &m.state, Input::LeaseConfirmed(pending)).granted;
        (granted == Some(true), answer.epoch)
    }

    /// The coordinator's loop (the shell's `coordination::run`): decide, propose, hand off.
    pub(super) fn coordinate(&mut self, c: usize) {
        let now_c = self.clock(c);
        if self.leadership(c, now_c).is_none() {
            return;
        }
        let m = &mut self.members[c];
        let Some(d) = m.daemon.as_mut() else { return };
        let out = d.coordinator.step(now_c, &m.state, Input::Tick { wall_ms: self.now, keep_leadership: false });
        let commands = out.proposals;
        let target = out.transfer_to;
        for cmd in commands {
            if !matches!(cmd, vigil_core::Command::UpsertMember { .. }) {
                let line = format!("PROPOSE by {}: {}", self.members[c].name, describe(&cmd));
                self.trace.note(self.now, || line);
            }
            let delay = self.rng.range(2, 30);
            self.raft.propose(c, cmd, self.now, delay);
        }
        if let Some(t) = target.and_then(|t| self.index(&t)) {
            let up = self.up();
            let mut changes = Vec::new();
            self.raft.transfer(c, t, self.now, &self.net, &up, &mut changes);
            self.note_raft(changes);
        }
    }
}
