//! Synchronous replication: the mode, the committed synchronous set, and the coordinator's plan for
//! changing it.
//!
//! Two sets are committed through Raft:
//! - `standbys`: what the primary's `synchronous_standby_names` names (`ANY count (...)`);
//! - `holders`: the members that, between them, hold every acknowledged commit. It may contain the
//!   primary itself: commits that no standby is known to have.
//!
//! Invariant: `standbys ⊆ holders`, and PostgreSQL names a standby only after it is committed into
//! both. A member leaves `holders` only once the primary has stopped naming it (the change is
//! applied, as the primary reports) and a remaining standby has flushed WAL past the primary's
//! position at that moment. So in a synchronous mode, a failover that hears from every holder and
//! promotes the one with the most WAL loses no acknowledged commit; while the primary is a holder
//! (degraded, or just after a failover) no failover is possible.

use crate::report::{HealthReport, MemberKind};
use crate::state::ClusterState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// How the cluster uses synchronous replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication; failover bounded by `maximum_lag_on_failover`.
    #[default]
    Off,
    /// Synchronous while a standby is healthy; degrades to asynchronous (recorded) when none is.
    On,
    /// Synchronous always: with no healthy standby the primary keeps commits waiting.
    Strict,
}

impl SyncMode {
    pub fn is_sync(self) -> bool {
        self != SyncMode::Off
    }
}

/// The committed synchronous replication state of the current epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncState {
    pub mode: SyncMode,
    /// How many standbys confirm each commit (capped at the number named).
    pub count: u32,
    pub holders: BTreeSet<String>,
    pub standbys: BTreeSet<String>,
}

/// A name no standby uses: `strict` with no standby named keeps commits waiting with it.
pub const NOBODY: &str = "pgvigil:no-standby";

/// The `synchronous_standby_names` the primary runs with for `sync`.
pub fn setting(sync: &SyncState) -> String {
    let names: Vec<&str> = sync.standbys.iter().map(String::as_str).collect();
    let names = match (sync.mode, names.is_empty()) {
        (SyncMode::Off, _) | (SyncMode::On, true) => return String::new(),
        (SyncMode::Strict, true) => vec![NOBODY],
        _ => names,
    };
    let count = (sync.count.max(1) as usize).min(names.len());
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    format!("ANY {count} ({})", quoted.join(", "))
}

/// The standbys a `synchronous_standby_names` value names, for the forms [`setting`] writes (and
/// plain lists); None for forms it does not understand. [`NOBODY`] names no one.
pub fn parse_setting(value: &str) -> Option<BTreeSet<String>> {
    let v = value.trim();
    if v.is_empty() {
        return Some(BTreeSet::new());
    }
    let list = match v.find('(') {
        Some(open) => {
            let head = v[..open].trim();
            let mut words = head.split_whitespace();
            match (words.next().map(str::to_ascii_uppercase).as_deref(), words.next(), words.next()) {
                (Some("ANY" | "FIRST"), Some(n), None) if n.parse::<u32>().is_ok() => {}
                (Some(n), None, None) if n.parse::<u32>().is_ok() => {}
                _ => return None,
            }
            v[open + 1..].strip_suffix(')')?
        }
        None => v,
    };
    let mut out = BTreeSet::new();
    for item in split_names(list)? {
        if item != NOBODY {
            out.insert(item);
        }
    }
    Some(out)
}

/// Split `a, "b c", "d""e"` into names; None on an unterminated quote or an empty name.
fn split_names(list: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = list.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                name.push(c);
                chars.next();
            }
            // Unquoted names are case-folded by PostgreSQL.
            name = name.trim().to_ascii_lowercase();
        }
        if name.is_empty() {
            return None;
        }
        out.push(name);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// What the coordinator remembers between decisions: since when the primary runs with `standbys`
/// named, and its WAL position when it first reported so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub epoch: u64,
    pub standbys: BTreeSet<String>,
    pub lsn: u64,
}

/// The change to propose, as the new sync state and the reason (for the event history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub sync: SyncState,
    pub reason: String,
}

/// The configured mode and count, which the coordinator brings the committed state to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub mode: SyncMode,
    pub count: u32,
}

/// One step towards the wanted synchronous state. `primary` is the primary's current report
/// (the caller passes it only when it is fresh); `current` the other members' current reports.
/// `applied` is updated from the primary's report.
pub fn plan(
    state: &ClusterState,
    primary: &HealthReport,
    current: &[&HealthReport],
    wanted: Wanted,
    applied: &mut Option<Applied>,
) -> Option<Change> {
    let sync = &state.sync;
    let p = state.primary.as_deref().filter(|p| *p == primary.member)?;
    if !primary.pg.running || primary.pg.in_recovery || primary.epoch_seen != state.epoch {
        return None;
    }
    // What the primary runs with now.
    let named = primary.pg.sync_names.clone();
    if named.as_ref() != Some(&sync.standbys) {
        *applied = None;
    } else if applied.as_ref().is_none_or(|a| a.epoch != state.epoch || a.standbys != sync.standbys) {
        *applied = Some(Applied { epoch: state.epoch, standbys: sync.standbys.clone(), lsn: primary.pg.current_lsn });
    }
    let change = |sync: SyncState, reason: String| Some(Change { sync, reason });

    if wanted.mode != sync.mode || (wanted.mode.is_sync() && wanted.count != sync.count) {
        return match (sync.mode.is_sync(), wanted.mode.is_sync()) {
            (false, true) => change(
                SyncState {
                    mode: wanted.mode,
                    count: wanted.count,
                    holders: BTreeSet::from([p.to_string()]),
                    standbys: BTreeSet::new(),
                },
                format!("synchronous mode {:?}", wanted.mode).to_lowercase(),
            ),
            (true, false) if !sync.standbys.is_empty() => change(
                SyncState { standbys: BTreeSet::new(), holders: with_primary(&sync.holders, p), ..sync.clone() },
                "turning synchronous replication off: the primary stops naming standbys".into(),
            ),
            (true, false) if applied.is_some() => change(SyncState::default(), "synchronous mode off".into()),
            (true, false) => None,
            _ => change(
                SyncState { mode: wanted.mode, count: wanted.count, ..sync.clone() },
                format!("synchronous mode {:?}, {} standby(s) per commit", wanted.mode, wanted.count).to_lowercase(),
            ),
        };
    }
    if !sync.mode.is_sync() {
        return None;
    }

    let healthy: Vec<&HealthReport> = current.iter().copied().filter(|r| healthy_standby(state, primary, r)).collect();
    let is_fit = |m: &str| current.iter().any(|r| r.member == m && fit_to_stay_named(state, primary, r));
    let flush = |m: &str| primary.pg.replicas.iter().find(|r| r.member == m).map_or(0, |r| r.flush_lsn);

    // Add standbys until `count` healthy ones are named: holders first, then PostgreSQL.
    let good = sync.standbys.iter().filter(|m| is_fit(m)).count();
    let want = sync.count.max(1) as usize;
    if good < want {
        let mut extra: Vec<&HealthReport> =
            healthy.iter().copied().filter(|r| !sync.standbys.contains(&r.member)).collect();
        // WAL as the primary sees it flushed: what a commit waits for.
        crate::candidate::rank(&mut extra, |r| (0, flush(&r.member)));
        let add: Vec<String> = extra.iter().take(want - good).map(|r| r.member.clone()).collect();
        if !add.is_empty() {
            let mut next = sync.clone();
            next.holders.extend(add.iter().cloned());
            next.standbys.extend(add.iter().cloned());
            return change(next, format!("{} now synchronous", add.join(", ")));
        }
    }

    // Stop naming unhealthy standbys (strict: only while enough stay named).
    let bad: Vec<String> = sync.standbys.iter().filter(|m| !is_fit(m)).cloned().collect();
    if !bad.is_empty() {
        let keep: BTreeSet<String> = sync.standbys.iter().filter(|m| is_fit(m)).cloned().collect();
        let allowed = match sync.mode {
            SyncMode::Strict => keep.len() >= want,
            _ => true,
        };
        if allowed {
            // With no standby named, `on` acknowledges commits on the primary alone from the
            // moment it applies this: the primary is a holder from the same commit, not only
            // once the shrink below is committed (a failover in between would lose them).
            let holders = if keep.is_empty() { with_primary(&sync.holders, p) } else { sync.holders.clone() };
            let reason = if keep.is_empty() {
                format!("degraded to asynchronous: no healthy synchronous standby ({} not)", bad.join(", "))
            } else {
                format!("{} no longer synchronous", bad.join(", "))
            };
            return change(SyncState { standbys: keep, holders, ..sync.clone() }, reason);
        }
    }

    // Shrink the holders to what PostgreSQL names, once that is applied and a named standby has
    // flushed past the primary's position at that moment; with none named, the primary alone.
    let a = applied.as_ref()?;
    let target: BTreeSet<String> =
        if sync.standbys.is_empty() { BTreeSet::from([p.to_string()]) } else { sync.standbys.clone() };
    if target != sync.holders && (sync.standbys.is_empty() || sync.standbys.iter().any(|m| flush(m) >= a.lsn)) {
        let gone: Vec<&str> = sync.holders.difference(&target).map(String::as_str).collect();
        let reason = if sync.standbys.is_empty() {
            format!("the primary alone holds every acknowledged commit (was also {})", gone.join(", "))
        } else {
            format!("{} hold(s) every acknowledged commit; {} no longer needed", join(&target), gone.join(", "))
        };
        return change(SyncState { holders: target, ..sync.clone() }, reason);
    }
    None
}

/// `holders` and the primary `p`.
fn with_primary(holders: &BTreeSet<String>, p: &str) -> BTreeSet<String> {
    let mut out = holders.clone();
    out.insert(p.to_string());
    out
}

fn join(s: &BTreeSet<String>) -> String {
    s.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// A standby that can confirm commits: a known, failover-eligible PostgreSQL member, streaming
/// from the primary on its timeline (by its own report and by the primary's).
fn healthy_standby(state: &ClusterState, primary: &HealthReport, r: &HealthReport) -> bool {
    r.pg.streaming && fit_to_stay_named(state, primary, r)
}

/// A named standby stays named while it is [`healthy_standby`], except that whether it streams
/// is the primary's word alone (its latest report lists it as streaming). When the primary dies,
/// its standbys lose the connection and say so before its last report goes stale: that is no
/// reason to stop naming them (it would only commit a needless "degraded" change).
fn fit_to_stay_named(state: &ClusterState, primary: &HealthReport, r: &HealthReport) -> bool {
    let known = state
        .members
        .get(&r.member)
        .is_some_and(|m| m.kind == MemberKind::Postgres && !m.tags.nofailover() && !m.tags.nosync());
    known
        && r.member != primary.member
        && !r.tags.nofailover()
        && !r.tags.nosync()
        && r.pg.running
        && r.pg.in_recovery
        && !r.pg.needs_rejoin
        && r.pg.timeline == primary.pg.timeline
        && primary.pg.replicas.iter().any(|x| x.member == r.member && x.streaming)
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
