//! A model of the Raft group as raft-rs runs it for pgvigil (pre-vote, check-quorum): one
//! committed log, elections by timeouts drawn from the seed, a leader that keeps believing it
//! leads until check-quorum or a higher term tells it otherwise, commits that take a while and
//! need a quorum of the proposer's term, and followers that apply committed entries when they
//! hear from the leader.
//!
//! Not modelled: log replication itself (Raft's guarantee that a new leader holds every committed
//! entry is assumed, not simulated) and entries of a deposed leader committed by its successor.

use crate::net::Net;
use crate::rng::Rng;
use vigil_core::Command;

#[derive(Clone, Debug)]
pub struct Node {
    pub term: u64,
    /// This node believes it leads `term`.
    pub leader: bool,
    /// The leader this node last heard, for its term.
    pub leader_hint: Option<usize>,
    pub last_heard: u64,
    /// When it campaigns if it hears nothing (virtual ms).
    pub campaign_at: u64,
    /// Leader: when it last heard from a quorum, and when it next checks (check-quorum).
    pub quorum_seen: u64,
    pub next_quorum_check: u64,
    /// How many committed entries it has applied.
    pub applied: usize,
}

#[derive(Clone, Debug)]
struct Proposal {
    by: usize,
    term: u64,
    cmd: Command,
    at: u64,
}

/// An event worth a line in the trace.
#[derive(Clone, Debug)]
pub enum Change {
    Elected { node: usize, term: u64 },
    SteppedDown { node: usize, term: u64, why: &'static str },
    Committed { index: usize, by: usize },
    Dropped { by: usize },
}

#[derive(Debug)]
pub struct Raft {
    /// The highest term any node has reached.
    pub term: u64,
    pub log: Vec<Command>,
    pub nodes: Vec<Node>,
    pending: Vec<Proposal>,
    election_ms: u64,
    /// A leader's heartbeat period: `heartbeat_ticks` x `raft_tick`.
    pub heartbeat_ms: u64,
    rng: Rng,
}

impl Raft {
    pub fn new(n: usize, election_ms: u64, heartbeat_ms: u64, mut rng: Rng) -> Self {
        let nodes = (0..n)
            .map(|_| Node {
                term: 0,
                leader: false,
                leader_hint: None,
                last_heard: 0,
                campaign_at: rng.range(election_ms, 2 * election_ms),
                quorum_seen: 0,
                next_quorum_check: 0,
                applied: 0,
            })
            .collect();
        Raft { term: 0, log: Vec::new(), nodes, pending: Vec::new(), election_ms, heartbeat_ms, rng }
    }

    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// The node that leads the highest term and believes so, if any.
    pub fn true_leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|i| self.nodes[*i].leader && self.nodes[*i].term == self.term)
    }

    /// One tick. `up[i]`: node i's daemon runs (not dead, not stopped).
    pub fn step(&mut self, now: u64, net: &Net, up: &[bool], out: &mut Vec<Change>) {
        let n = self.nodes.len();
        // Leaders: heartbeats, and check-quorum at each election timeout.
        for l in 0..n {
            if !up[l] || !self.nodes[l].leader {
                continue;
            }
            if crate::world::every(now, self.heartbeat_ms) {
                let mut acks = 1;
                for f in (0..n).filter(|f| *f != l && up[*f] && net.connected(l, *f)) {
                    if self.nodes[f].term > self.nodes[l].term {
                        self.step_down(l, self.nodes[f].term, now, "a higher term", out);
                        break;
                    }
                    self.hear(f, l, now, out);
                    acks += 1;
                }
                if self.nodes[l].leader && acks >= self.majority() {
                    self.nodes[l].quorum_seen = now;
                }
            }
            let node = &self.nodes[l];
            if node.leader && now >= node.next_quorum_check {
                if now.saturating_sub(node.quorum_seen) >= self.election_ms {
                    self.step_down(l, node.term, now, "check-quorum", out);
                } else {
                    self.nodes[l].next_quorum_check = now + self.election_ms;
                }
            }
        }
        // Followers that heard no leader for their timeout campaign (pre-vote first).
        for c in 0..n {
            let node = &self.nodes[c];
            if !up[c] || node.leader || now < node.campaign_at {
                continue;
            }
            let mut votes = vec![c];
            for v in (0..n).filter(|v| *v != c && up[*v] && net.connected(c, *v)) {
                let voter = &self.nodes[v];
                // A leader, or a follower that heard one within the election timeout, refuses.
                if !voter.leader && now.saturating_sub(voter.last_heard) >= self.election_ms {
                    votes.push(v);
                }
            }
            if votes.len() >= self.majority() {
                self.elect(c, &votes, now, out);
            } else {
                self.nodes[c].campaign_at = now + self.rng.range(self.election_ms, 2 * self.election_ms);
            }
        }
        self.commit_due(now, net, up, out);
    }

    fn elect(&mut self, c: usize, voters: &[usize], now: u64, out: &mut Vec<Change>) {
        self.term += 1;
        let term = self.term;
        for v in voters {
            let node = &mut self.nodes[*v];
            if node.leader {
                node.leader = false;
            }
            node.term = term;
            node.leader_hint = Some(c);
            node.last_heard = now;
        }
        let node = &mut self.nodes[c];
        node.leader = true;
        node.quorum_seen = now;
        node.next_quorum_check = now + self.election_ms;
        // Raft's guarantee, that the new leader holds every committed entry, is kept by the world:
        // a leader applies the whole log at its next tick.
        out.push(Change::Elected { node: c, term });
    }

    fn hear(&mut self, f: usize, l: usize, now: u64, out: &mut Vec<Change>) {
        let term = self.nodes[l].term;
        let node = &mut self.nodes[f];
        if node.leader && node.term < term {
            node.leader = false;
            out.push(Change::SteppedDown { node: f, term: node.term, why: "a higher term" });
        }
        node.term = term;
        node.leader_hint = Some(l);
        node.last_heard = now;
        node.campaign_at = now + self.rng.range(self.election_ms, 2 * self.election_ms);
    }

    fn step_down(&mut self, l: usize, term: u64, now: u64, why: &'static str, out: &mut Vec<Change>) {
        let node = &mut self.nodes[l];
        out.push(Change::SteppedDown { node: l, term: node.term, why });
        node.leader = false;
        node.term = node.term.max(term);
        node.leader_hint = None;
        node.last_heard = now;
        node.campaign_at = now + self.rng.range(self.election_ms, 2 * self.election_ms);
    }

    /// Whether `l` still leads with a quorum behind it (a ReadIndex round, as `confirm_leadership`).
    /// A node that learns of a higher term on the way steps down.
    pub fn confirm(&mut self, l: usize, now: u64, net: &Net, up: &[bool], out: &mut Vec<Change>) -> bool {
        if !self.nodes[l].leader || !up[l] {
            return false;
        }
        let mut acks = 1;
        for f in (0..self.nodes.len()).filter(|f| *f != l && up[*f] && net.connected(l, *f)) {
            if self.nodes[f].term > self.nodes[l].term {
                self.step_down(l, self.nodes[f].term, now, "a higher term", out);
                return false;
            }
            acks += 1;
        }
        acks >= self.majority()
    }

    /// Propose `cmd` as leader `by`; it commits after `delay_ms` if `by` still leads its term
    /// with a quorum then.
    pub fn propose(&mut self, by: usize, cmd: Command, now: u64, delay_ms: u64) {
        let term = self.nodes[by].term;
        self.pending.push(Proposal { by, term, cmd, at: now + delay_ms });
    }

    fn commit_due(&mut self, now: u64, net: &Net, up: &[bool], out: &mut Vec<Change>) {
        let due: Vec<Proposal> = {
            let (due, later): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.pending).into_iter().partition(|p| p.at <= now);
            self.pending = later;
            due
        };
        for p in due {
            let node = &self.nodes[p.by];
            let quorum = 1
                + (0..self.nodes.len())
                    .filter(|f| *f != p.by && up[*f] && net.connected(p.by, *f) && self.nodes[*f].term <= p.term)
                    .count();
            if node.leader && node.term == p.term && p.term == self.term && up[p.by] && quorum >= self.majority() {
                self.log.push(p.cmd);
                out.push(Change::Committed { index: self.log.len(), by: p.by });
            } else {
                out.push(Change::Dropped { by: p.by });
            }
        }
    }

    /// Hand leadership to `to` (raft-rs `transfer_leader`): it campaigns at once and wins with
    /// the votes it can reach.
    pub fn transfer(&mut self, from: usize, to: usize, now: u64, net: &Net, up: &[bool], out: &mut Vec<Change>) {
        if !self.nodes[from].leader || !up[to] || !net.connected(from, to) {
            return;
        }
        let votes: Vec<usize> =
            (0..self.nodes.len()).filter(|v| *v == to || (up[*v] && net.connected(to, *v))).collect();
        if votes.len() >= self.majority() {
            self.nodes[from].leader = false;
            out.push(Change::SteppedDown { node: from, term: self.nodes[from].term, why: "leadership transfer" });
            self.elect(to, &votes, now, out);
        }
    }

    /// A restarted daemon: a follower with its durable term and log, leader unknown.
    pub fn restart(&mut self, i: usize, now: u64) {
        let node = &mut self.nodes[i];
        node.leader = false;
        node.leader_hint = None;
        node.last_heard = now;
        node.campaign_at = now + self.rng.range(self.election_ms, 2 * self.election_ms);
    }
}
