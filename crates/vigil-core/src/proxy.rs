//! The routing proxy's decisions: where a new session on the read-write or the read-only port
//! goes, from what this member last heard from the coordinator. Pure: time is passed in.
//!
//! Read-write is fenced by the lease. The coordinator's answer to each of this member's reports
//! says how long, from the coordinator's now, the lease it last granted to the primary of the
//! answer's epoch still runs (`lease_left`: arrival of the granted report + `lease_timeout` −
//! now). This member counts it from the moment it *sent* the report, which precedes the
//! coordinator's now, so its bound ([`Fence::until`]) ends before `grant + lease_timeout`, at
//! least `lease_margin` before any coordinator may promote another member (see ARCHITECTURE.md,
//! "The proxy's lease fence").

use crate::coordinator::Coordinator;
use crate::report::MemberKind;
use crate::state::ClusterState;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// What the coordinator's last answer said about the primary's lease, dated on this member's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fence {
    /// The epoch the answer was about.
    pub epoch: u64,
    /// New read-write sessions may be forwarded to that epoch's primary before this instant.
    pub until: Option<Instant>,
    /// The primary's latest report to the coordinator showed it writable (it gets its lease
    /// before it is promoted).
    pub writable: bool,
    /// When the report whose answer said `writable` was sent.
    pub sent: Option<Instant>,
}

impl Fence {
    /// The bound from one answer: `lease_left` counted from when the report was sent.
    pub fn from_answer(sent_at: Instant, epoch: u64, lease_left: Duration, writable: bool) -> Fence {
        Fence { epoch, until: (!lease_left.is_zero()).then(|| sent_at + lease_left), writable, sent: Some(sent_at) }
    }

    /// Take a later answer. Answers can arrive out of order (a slow one after a quick one): within
    /// an epoch the later bound stands, a newer epoch replaces, an older one is ignored.
    pub fn merge(&mut self, other: Fence) {
        if other.epoch > self.epoch {
            *self = other;
        } else if other.epoch == self.epoch {
            self.until = match (self.until, other.until) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if other.sent >= self.sent {
                self.writable = other.writable;
                self.sent = other.sent;
            }
        }
    }

    pub fn valid(&self, epoch: u64, now: Instant) -> bool {
        self.epoch == epoch && self.until.is_some_and(|u| now < u)
    }
}

/// What a new read-write session waits for, if it may not be forwarded now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldReason {
    /// The committed state names no primary.
    NoPrimary,
    /// A planned switchover has started: the primary is shutting down.
    Switchover,
    /// The primary has its lease but did not report itself writable yet (being promoted).
    NotWritable,
    /// This member knows of no valid lease of the current primary (cut off from the quorum,
    /// a failover under way, or the answers are about another epoch).
    NoLease,
}

impl HoldReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            HoldReason::NoPrimary => "no_primary",
            HoldReason::Switchover => "switchover",
            HoldReason::NoLease => "no_lease",
            HoldReason::NotWritable => "not_writable",
        }
    }
}

/// Where a new read-write session goes now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RwRoute {
    /// To this member (the primary of `epoch`).
    Forward {
        member: String,
        epoch: u64,
    },
    Hold(HoldReason),
}

/// The committed state as far as the read-write route needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub epoch: u64,
    pub primary: Option<String>,
    /// A planned switchover has started (the old primary stops for it).
    pub switching_over: bool,
}

/// A new read-write session goes to the committed primary only while this member knows it holds
/// a lease for the committed epoch.
pub fn rw_route(committed: &Committed, fence: &Fence, now: Instant) -> RwRoute {
    let Some(primary) = &committed.primary else {
        return RwRoute::Hold(HoldReason::NoPrimary);
    };
    if committed.switching_over {
        return RwRoute::Hold(HoldReason::Switchover);
    }
    if !fence.valid(committed.epoch, now) {
        return RwRoute::Hold(HoldReason::NoLease);
    }
    if !fence.writable {
        return RwRoute::Hold(HoldReason::NotWritable);
    }
    RwRoute::Forward { member: primary.clone(), epoch: committed.epoch }
}

/// What to do when no standby qualifies for a read-only session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NoStandby {
    /// Send it to the primary (if a read-write session could go there now).
    #[default]
    Primary,
    /// Refuse it (the client's connection is closed).
    Refuse,
}

/// The read-only pool's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoRules {
    pub max_lag_bytes: u64,
    pub max_lag_time: Duration,
    pub no_standby: NoStandby,
    /// How old the coordinator's view may be before nobody is in the pool (this member cut off).
    pub stale_after: Duration,
}

/// One standby as the coordinator last heard of it.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StandbyView {
    pub member: String,
    pub running: bool,
    pub in_recovery: bool,
    pub streaming: bool,
    pub replay_lsn: u64,
    pub replay_paused: bool,
    pub noloadbalance: bool,
}

/// Why a standby is not in the read-only pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    NotStreaming,
    ReplayPaused,
    BehindBytes,
    BehindTime,
    NoLoadBalance,
    /// Not heard of recently enough.
    Stale,
}

/// The primary's WAL position over time, as the coordinator's answers told it: how long ago the
/// primary passed a given position is how far behind in time a standby replaying there is.
#[derive(Clone, Debug, Default)]
pub struct LsnHistory {
    /// (when, position), positions not decreasing; oldest first.
    samples: VecDeque<(Instant, u64)>,
}

/// Enough for lag bounds of minutes at one answer per loop interval.
const HISTORY_SAMPLES: usize = 4096;

impl LsnHistory {
    pub fn push(&mut self, at: Instant, lsn: u64) {
        if lsn == 0 {
            return;
        }
        if let Some(&(_, last)) = self.samples.back() {
            if lsn <= last {
                // Not a move: the earliest time a position was reached is what counts.
                if lsn < last {
                    // A new timeline (failover): start again.
                    self.samples.clear();
                    self.samples.push_back((at, lsn));
                }
                return;
            }
        }
        self.samples.push_back((at, lsn));
        if self.samples.len() > HISTORY_SAMPLES {
            self.samples.pop_front();
        }
    }

    pub fn latest(&self) -> u64 {
        self.samples.back().map_or(0, |s| s.1)
    }

    /// How long the primary has been past `replayed`: from the first sample beyond it (the
    /// oldest known, if every sample is beyond it) to `now`. Zero when it is not behind.
    pub fn lag_time(&self, replayed: u64, now: Instant) -> Duration {
        match self.samples.iter().find(|(_, lsn)| *lsn > replayed) {
            Some((at, _)) => now.saturating_duration_since(*at),
            None => Duration::ZERO,
        }
    }
}

/// The read-only pool: who may take read-only sessions, with hysteresis (a standby that left
/// returns only once it is within half of each bound).
#[derive(Clone, Debug, Default)]
pub struct RoPool {
    members: BTreeSet<String>,
    /// Why each known standby is out, for `GET /proxy`.
    out: BTreeMap<String, Out>,
}

impl RoPool {
    /// Judge every standby again on a fresh view (`heard_at`: when the answer carrying it came).
    pub fn update(
        &mut self,
        rules: &RoRules,
        now: Instant,
        heard_at: Option<Instant>,
        history: &LsnHistory,
        standbys: &[StandbyView],
    ) {
        let fresh = heard_at.is_some_and(|h| now.saturating_duration_since(h) <= rules.stale_after);
        let primary = history.latest();
        let mut members = BTreeSet::new();
        let mut out = BTreeMap::new();
        for s in standbys {
            let was_in = self.members.contains(&s.member);
            // Hysteresis: leaving at the bound, returning at half of it.
            let (bytes_limit, time_limit) = if was_in {
                (rules.max_lag_bytes, rules.max_lag_time)
            } else {
                (rules.max_lag_bytes / 2, rules.max_lag_time / 2)
            };
            let verdict = if s.noloadbalance {
                Some(Out::NoLoadBalance)
            } else if !fresh {
                Some(Out::Stale)
            } else if !(s.running && s.in_recovery && s.streaming) {
                Some(Out::NotStreaming)
            } else if s.replay_paused {
                Some(Out::ReplayPaused)
            } else if primary.saturating_sub(s.replay_lsn) > bytes_limit {
                Some(Out::BehindBytes)
            } else if history.lag_time(s.replay_lsn, now) > time_limit {
                Some(Out::BehindTime)
            } else {
                None
            };
            match verdict {
                None => {
                    members.insert(s.member.clone());
                }
                Some(why) => {
                    out.insert(s.member.clone(), why);
                }
            }
        }
        self.members = members;
        self.out = out;
    }

    pub fn members(&self) -> &BTreeSet<String> {
        &self.members
    }

    pub fn out(&self) -> &BTreeMap<String, Out> {
        &self.out
    }
}

/// Where a new read-only session goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoRoute {
    Forward(String),
    /// Every backend it could go to is at `max_sessions_per_backend`: wait for a slot (this one
    /// is the least loaded, named if the wait ends in a refusal).
    Queue(String),
    Refuse,
}

/// The pool member with the fewest sessions through this proxy (ties: by name) among those not
/// `full`, else what `no_standby` says (the primary only if a read-write session could go there
/// now). A session that could only go to full backends queues.
pub fn ro_route(
    pool: &RoPool,
    sessions: &BTreeMap<String, usize>,
    rules: &RoRules,
    rw: &RwRoute,
    full: &BTreeSet<String>,
) -> RoRoute {
    let by_load = |m: &&String| (sessions.get(*m).copied().unwrap_or(0), (*m).clone());
    if let Some(m) = pool.members.iter().filter(|m| !full.contains(*m)).min_by_key(by_load) {
        return RoRoute::Forward(m.clone());
    }
    if let Some(m) = pool.members.iter().min_by_key(by_load) {
        return RoRoute::Queue(m.clone());
    }
    match (rules.no_standby, rw) {
        (NoStandby::Primary, RwRoute::Forward { member, .. }) if full.contains(member) => {
            RoRoute::Queue(member.clone())
        }
        (NoStandby::Primary, RwRoute::Forward { member, .. }) => RoRoute::Forward(member.clone()),
        _ => RoRoute::Refuse,
    }
}

/// The backends at the session limit: `open` counts every session through this proxy per backend
/// (both ports, including those still connecting); no limit, nobody is full.
pub fn full_backends(open: &BTreeMap<String, usize>, max: Option<usize>) -> BTreeSet<String> {
    match max {
        Some(max) => open.iter().filter(|(_, n)| **n >= max).map(|(b, _)| b.clone()).collect(),
        None => BTreeSet::new(),
    }
}

/// The backends a session may not take a slot on now: those at the limit, and those an earlier
/// queued session waits for. `waiting` holds, per backend, the tickets (arrival numbers) of the
/// sessions queued for it; `ticket` is this session's (None: not queued, so after all of them).
/// So sessions waiting for a backend get its slots in the order they arrived, and a newcomer
/// never takes a slot from under a queued one.
pub fn closed_backends(
    open: &BTreeMap<String, usize>,
    max: Option<usize>,
    waiting: &BTreeMap<String, BTreeSet<u64>>,
    ticket: Option<u64>,
) -> BTreeSet<String> {
    let mut closed = full_backends(open, max);
    for (backend, tickets) in waiting {
        if tickets.first().is_some_and(|first| ticket.is_none_or(|t| *first < t)) {
            closed.insert(backend.clone());
        }
    }
    closed
}

/// Why the proxy refused a new session: the metric's `reason` label, and the ErrorResponse the
/// client gets (SQLSTATE and message) instead of a bare close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Read-write: no primary could take the session within `hold_timeout`; why it was held last.
    Held { reason: HoldReason, hold: Duration },
    /// Read-only: no standby qualifies and `no_standby` does not allow the primary now.
    NoStandby,
    /// The backend chosen did not accept the connection (read-write: within the hold).
    Unreachable { member: String },
    /// Every backend the session could go to stayed at `max_sessions_per_backend` for `queue_timeout`.
    Full { member: String, max: usize, waited: Duration },
    /// A connection from a network of `proxy_protocol_from` without a valid PROXY protocol header.
    ProxyHeader(crate::proxy_header::BadHeader),
}

impl Refused {
    /// The `reason` label of `pgvigil_proxy_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Held { reason, .. } => reason.as_str(),
            Refused::NoStandby => "no_standby",
            Refused::Unreachable { .. } => "backend_unreachable",
            Refused::Full { .. } => "backend_full",
            Refused::ProxyHeader(bad) => bad.reason(),
        }
    }

    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refused::Full { .. } => crate::pgwire::TOO_MANY_CONNECTIONS,
            Refused::ProxyHeader(_) => crate::pgwire::PROTOCOL_VIOLATION,
            _ => crate::pgwire::CANNOT_CONNECT_NOW,
        }
    }

    /// What the client reads (after `FATAL:`).
    pub fn message(&self) -> String {
        match self {
            Refused::Held { reason, hold } => {
                let why = match reason {
                    HoldReason::NoPrimary => "the cluster has no primary",
                    HoldReason::Switchover => "a switchover is under way",
                    HoldReason::NotWritable => "the primary is not writable yet",
                    HoldReason::NoLease => "this member knows of no valid lease of the primary (cut off from the coordinator, or a failover under way)",
                };
                format!("pgvigil proxy: no primary may take writes: {why}; held {hold:?} (proxy.hold_timeout)")
            }
            Refused::NoStandby => {
                "pgvigil proxy: no standby is within the read-only pool's bounds (proxy.no_standby)".to_string()
            }
            Refused::Unreachable { member } => format!("pgvigil proxy: backend {member} does not accept connections"),
            Refused::Full { member, max, waited } => format!(
                "pgvigil proxy: backend {member} has {max} sessions through this proxy (proxy.max_sessions_per_backend); \
                 none freed within {waited:?} (proxy.queue_timeout)"
            ),
            Refused::ProxyHeader(bad) => format!(
                "pgvigil proxy: a connection from a network of proxy.proxy_protocol_from must start with a PROXY \
                 protocol header; this one has {}",
                bad.message()
            ),
        }
    }
}

/// A member's routing proxy in a few numbers, carried in its reports so that `GET /cluster` on any
/// member (and `pgvigil list`) shows every member's proxy without asking each one.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxySummary {
    pub rw_port: u16,
    pub ro_port: u16,
    /// Where new read-write sessions go (a member), if they are forwarded now.
    #[serde(default)]
    pub rw_forward: Option<String>,
    /// Why they are held, if they are.
    #[serde(default)]
    pub rw_hold: Option<String>,
    /// The read-only pool's members.
    #[serde(default)]
    pub ro_pool: Vec<String>,
    /// Open sessions by port.
    pub sessions_rw: u64,
    pub sessions_ro: u64,
    /// Sessions waiting for a slot now.
    pub queued: u64,
    /// Sessions refused since start, every port and reason.
    pub refused: u64,
}

/// What the coordinator's answer to every report carries for the members' routing proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyAnswer {
    /// How long from the coordinator's now the lease it last granted (confirmed) to the primary
    /// of the committed epoch still runs ([`Coordinator::primary_lease_left`]).
    #[serde(with = "crate::report::duration_ms")]
    pub lease_left: Duration,
    /// The primary's latest current report shows it writable.
    pub primary_writable: bool,
    /// Every other PostgreSQL member with a current report.
    pub standbys: Vec<StandbyView>,
}

/// The coordinator's part of an answer to a report judged on `state`.
pub(crate) fn answer(c: &Coordinator, now: Instant, state: &ClusterState) -> ProxyAnswer {
    let mut a = ProxyAnswer { lease_left: c.primary_lease_left(now, state), ..Default::default() };
    for (name, r) in c.reports().iter().filter(|(_, r)| c.is_current(now, r)) {
        let pg = &r.report.pg;
        if state.is_primary(name) {
            a.primary_writable = pg.running && !pg.in_recovery;
        } else if r.report.kind == MemberKind::Postgres {
            a.standbys.push(StandbyView {
                member: name.clone(),
                running: pg.running,
                in_recovery: pg.in_recovery,
                streaming: pg.streaming,
                replay_lsn: pg.replay_lsn,
                replay_paused: pg.replay_paused,
                noloadbalance: r.report.tags.noloadbalance(),
            });
        }
    }
    a
}

/// The first 8 bytes of a connection's first packet: length and code. A CancelRequest is
/// (16, 80877102); SSLRequest, GSSENCRequest and startup packets are forwarded as they are.
pub use crate::pgwire::CANCEL_REQUEST_CODE;

pub fn is_cancel_request(first8: &[u8; 8]) -> bool {
    let len = u32::from_be_bytes([first8[0], first8[1], first8[2], first8[3]]);
    let code = u32::from_be_bytes([first8[4], first8[5], first8[6], first8[7]]);
    len == 16 && code == CANCEL_REQUEST_CODE
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
