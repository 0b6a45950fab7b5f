//! A model of one PostgreSQL server: its data directory (WAL as a hash chain, timeline and its
//! history, `standby.signal`), whether the postmaster runs or is stopped (SIGSTOP), what it
//! streams from, `synchronous_standby_names`, and the commits waiting for synchronous standbys.
//!
//! WAL is a list of records, one per commit; the LSN of a record is its 1-based position. Each
//! record carries the hash of the whole chain up to it, so "is this WAL a prefix of that one"
//! (can it stream from it, does it hold that commit) is one comparison.

use crate::rng::mix;

/// What the data directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Empty,
    /// No `standby.signal`: it was, or is, a primary's.
    Primary,
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The commit's id (unique in the run), or a promotion's end-of-recovery record.
    pub id: u64,
    /// The hash of the chain up to and including this record.
    pub chain: u64,
}

/// An operation that takes time; the agent's reconciler waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Starting up: accepts connections at `done_at`.
    Start,
    Promote,
    /// pg_basebackup from a member.
    Clone(usize),
    /// pg_rewind from a member.
    Rewind(usize),
}

/// A commit waiting for its synchronous standbys.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    pub id: u64,
    pub lsn: u64,
}

#[derive(Clone, Debug)]
pub struct Pg {
    pub dir: Dir,
    pub wal: Vec<Record>,
    pub timeline: u32,
    /// The timelines this one descends from, with where each ended (`<tli>.history`).
    pub history: Vec<(u32, u64)>,
    /// The postmaster runs (it may still be starting, see `op`).
    pub running: bool,
    /// Read-only (in recovery).
    pub recovery: bool,
    /// SIGSTOPped (by how many faults: the server alone, its whole host): runs, answers
    /// nothing, accepts nothing.
    pub frozen: u32,
    /// `primary_conninfo`: the member it streams from.
    pub upstream: Option<usize>,
    /// Its WAL receiver is connected and caught up with the upstream this tick.
    pub streaming: bool,
    /// When the WAL receiver tries again after its stream broke (virtual ms).
    pub retry_at: u64,
    pub sync_names: String,
    /// The operation in progress and when it ends (virtual ms).
    pub op: Option<(Op, u64)>,
    pub waiting: Vec<Waiting>,
}

impl Pg {
    pub fn empty() -> Self {
        Pg {
            dir: Dir::Empty,
            wal: Vec::new(),
            timeline: 0,
            history: Vec::new(),
            running: false,
            recovery: false,
            frozen: 0,
            upstream: None,
            streaming: false,
            retry_at: 0,
            sync_names: String::new(),
            op: None,
            waiting: Vec::new(),
        }
    }

    pub fn lsn(&self) -> u64 {
        self.wal.len() as u64
    }

    /// Up and answering (not starting, not stopped).
    pub fn answers(&self) -> bool {
        self.running && self.frozen == 0 && self.op.is_none_or(|(op, _)| op != Op::Start)
    }

    /// Takes writes right now.
    pub fn accepts_writes(&self) -> bool {
        self.answers() && !self.recovery
    }

    /// Writable as far as a fence is concerned: frozen or not, it would take writes again.
    pub fn writable_server(&self) -> bool {
        self.running && !self.recovery
    }

    pub fn append(&mut self, id: u64) -> u64 {
        let prev = self.wal.last().map_or(0, |r| r.chain);
        self.wal.push(Record { id, chain: mix(prev ^ id.rotate_left(17)) });
        self.lsn()
    }

    /// Whether this server's WAL holds the record `r` at `lsn`.
    pub fn holds(&self, lsn: u64, chain: u64) -> bool {
        lsn == 0 || self.wal.get(lsn as usize - 1).is_some_and(|r| r.chain == chain)
    }

    /// Whether every record here is also in `other`, in the same place.
    pub fn is_prefix_of(&self, other: &Pg) -> bool {
        self.wal.last().is_none_or(|r| other.holds(self.lsn(), r.chain))
    }

    /// How many records this WAL shares with `other` from the start.
    pub fn common_prefix(&self, other: &Pg) -> usize {
        // Chains are prefix-closed: equal at i means equal before i, so bisect.
        let (mut lo, mut hi) = (0usize, self.wal.len().min(other.wal.len()));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.wal[mid - 1].chain == other.wal[mid - 1].chain {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Stop at once (SIGKILL, immediate shutdown, a crash): commits still waiting are never
    /// acknowledged; an operation in progress is abandoned.
    /// SIGSTOP (`on`) or SIGCONT for one fault; only a running server can be stopped.
    pub fn freeze(&mut self, on: bool) {
        if on && self.running {
            self.frozen += 1;
        } else if !on {
            self.frozen = self.frozen.saturating_sub(1);
        }
    }

    pub fn kill(&mut self) {
        self.running = false;
        self.frozen = 0;
        self.streaming = false;
        self.waiting.clear();
        if matches!(self.op, Some((Op::Start | Op::Promote, _))) {
            self.op = None;
        }
    }

    /// The synchronous standbys named, and how many of them must confirm (`ANY n (...)`), as the
    /// core writes the setting. None: commits are acknowledged locally.
    pub fn sync_rule(&self) -> Option<(u32, std::collections::BTreeSet<String>)> {
        let v = self.sync_names.trim();
        if v.is_empty() {
            return None;
        }
        let count = v.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
        // An unparsable value keeps commits waiting, as a name no standby has would.
        let names = vigil_core::sync::parse_setting(v).unwrap_or_default();
        Some((count, names))
    }
}
