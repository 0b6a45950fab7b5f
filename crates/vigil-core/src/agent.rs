//! The agent reconciler: from the committed cluster state, the local PostgreSQL and the lease, the
//! actions that converge this member. Acts only on committed state.
//!
//! The rules, in order of precedence:
//! - A member that is not the committed primary never runs PostgreSQL as a primary: it is fenced
//!   and rejoined (rewound, or re-cloned after moving the old data aside). So is a primary data
//!   directory on a non-primary member, and a standby whose timeline forked from the primary's:
//!   they may hold writes the primary never had.
//! - The committed primary runs and promotes PostgreSQL only while it holds the lease for the
//!   current epoch, and records that epoch locally *before* acting, so a later start can tell its
//!   data directory was a primary's.
//! - Standbys clone when empty, start with a standby configuration pointing at the committed
//!   primary, and re-point (follow) a running server when the primary changes.

use crate::report::{DataDir, MemberKind, PgStatus};
use crate::slot_name;
use crate::state::ClusterState;
use crate::sync;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

/// What the agent remembers across restarts (kept in its state directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMemory {
    /// The latest epoch at which this data directory was (about to be) a primary.
    pub primary_epoch: Option<u64>,
    /// The primary this member's standby configuration points at.
    pub upstream: Option<Upstream>,
}

pub struct AgentInput<'a> {
    pub me: &'a str,
    pub kind: MemberKind,
    pub state: &'a ClusterState,
    pub pg: &'a PgStatus,
    /// The lease is held for `state.epoch`.
    pub lease_valid: bool,
    pub local: &'a LocalMemory,
    /// Why this standby's data cannot follow the primary's timeline (it forked), if it cannot.
    pub diverged: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentAction {
    /// Nothing to do now, and why.
    Wait(String),
    /// Stop PostgreSQL at once (immediate shutdown): it must not accept writes.
    Fence(String),
    /// Keep PostgreSQL down and say so in reports: it cannot rejoin now.
    NeedsRejoin(String),
    /// While stopped: make the data directory a standby of `from` again: `pg_rewind`, or if that
    /// fails, move it aside and clone. Reported as needing a rejoin until done.
    Rejoin {
        from: Upstream,
        slot: String,
        reason: String,
    },
    /// Remember locally that this data directory acts as primary of `epoch` (before acting).
    MarkPrimary(u64),
    InitDb,
    /// Start PostgreSQL with the data directory's own configuration.
    Start,
    /// Set `synchronous_standby_names` to `sync`, then promote.
    Promote {
        sync: String,
    },
    /// On the running primary: roles, a physical slot for every other PostgreSQL member, and
    /// `synchronous_standby_names` = `sync`.
    PrimaryHousekeeping {
        slots: Vec<String>,
        sync: String,
    },
    /// Copy the primary into the empty data directory, through this member's slot.
    Clone {
        from: Upstream,
        slot: String,
    },
    /// While stopped: write the standby configuration pointing at `from`.
    ConfigureStandby {
        from: Upstream,
        slot: String,
    },
    /// On a running standby: stream from `from` instead (reload, no restart).
    Follow {
        from: Upstream,
        slot: String,
    },
}

pub fn reconcile(input: &AgentInput<'_>) -> Vec<AgentAction> {
    use AgentAction::*;
    let AgentInput { me, kind, state, pg, lease_valid, local, diverged } = *input;
    if kind == MemberKind::Witness {
        return Vec::new();
    }
    let Some(primary) = state.primary.as_deref() else {
        return vec![Wait("no primary decided yet".into())];
    };
    let epoch = state.epoch;
    if state.paused {
        return paused(me, primary, epoch, pg, lease_valid);
    }

    if primary != me {
        let why = format!("{primary} is the primary at epoch {epoch}");
        let from = state.members.get(primary).map(|m| Upstream { host: m.pg_host.clone(), port: m.pg_port });
        let slot = slot_name(me);
        let rejoin = |reason: String| match &from {
            Some(from) => Rejoin { from: from.clone(), slot: slot.clone(), reason },
            None => NeedsRejoin(format!("{reason}; no address known for {primary}")),
        };
        if pg.running && !pg.in_recovery {
            return vec![Fence(format!("running as a primary but {why}")), rejoin(format!("was a primary and {why}"))];
        }
        if pg.data_dir == DataDir::Primary {
            return vec![rejoin(format!("the data directory was a primary's and {why}"))];
        }
        if let Some(d) = diverged.filter(|_| pg.data_dir == DataDir::Standby) {
            let reason = format!("its timeline forked from {primary}'s: {d}");
            return if pg.running { vec![Fence(reason.clone()), rejoin(reason)] } else { vec![rejoin(reason)] };
        }
        let Some(from) = from else {
            return vec![Wait(format!("no address known for {primary}"))];
        };
        return match (pg.data_dir, pg.running) {
            (DataDir::Empty, _) => vec![Clone { from, slot }],
            (DataDir::Standby, false) => vec![ConfigureStandby { from, slot }, Start],
            (DataDir::Standby, true) if local.upstream.as_ref() != Some(&from) => {
                vec![Follow { from, slot }]
            }
            (DataDir::Standby, true) => Vec::new(),
            _ => vec![Wait("data directory state unknown".into())],
        };
    }

    // This member is the committed primary.
    if !lease_valid {
        // A standby not yet promoted is read-only and harmless; only a writable server is fenced.
        return if pg.running && !pg.in_recovery {
            vec![Fence(format!("no lease for epoch {epoch}"))]
        } else {
            vec![Wait(format!("waiting for the lease of epoch {epoch}"))]
        };
    }
    let mark = (local.primary_epoch != Some(epoch)).then_some(MarkPrimary(epoch));
    let was_other_epochs_primary = local.primary_epoch.is_some_and(|e| e < epoch);
    let mut out: Vec<AgentAction> = Vec::new();
    match (pg.data_dir, pg.running, pg.in_recovery) {
        (DataDir::Empty, _, _) => {
            let first = state.bootstrapped_by.as_deref() == Some(me) && epoch == 1 && local.primary_epoch.is_none();
            if !first {
                return vec![NeedsRejoin(format!("primary of epoch {epoch} but the data directory is empty"))];
            }
            out.extend(mark);
            out.push(InitDb);
        }
        (DataDir::Unknown, _, _) => return vec![Wait("data directory state unknown".into())],
        // A primary's data directory from an older epoch: another primary may have written since.
        (DataDir::Primary, _, _) if was_other_epochs_primary || (local.primary_epoch.is_none() && epoch > 1) => {
            let why = format!("the data directory was primary at an older epoch than {epoch}");
            return if pg.running { vec![Fence(why.clone()), NeedsRejoin(why)] } else { vec![NeedsRejoin(why)] };
        }
        (_, false, _) => {
            out.extend(mark);
            out.push(Start);
        }
        (_, true, true) => {
            out.extend(mark);
            out.push(Promote { sync: sync::setting(&state.sync) });
        }
        (_, true, false) => {
            out.extend(mark);
            let slots = state
                .members
                .iter()
                .filter(|(name, m)| name.as_str() != me && m.kind == MemberKind::Postgres)
                .map(|(name, _)| slot_name(name))
                .collect();
            out.push(PrimaryHousekeeping { slots, sync: sync::setting(&state.sync) });
        }
    }
    out
}

/// Why a standby on timeline `tli` with WAL up to `lsn` cannot follow a primary on `primary_tli`
/// whose timeline history is `history` (`(timeline, where it ended)`), if it cannot: it has WAL
/// the primary's timeline never had.
pub fn divergence(tli: u32, lsn: u64, primary_tli: u32, history: &[(u32, u64)]) -> Option<String> {
    if tli == 0 || primary_tli == 0 || tli == primary_tli {
        return None;
    }
    if tli > primary_tli {
        return Some(format!("it is on timeline {tli}, the primary on the older {primary_tli}"));
    }
    match history.iter().find(|(t, _)| *t == tli) {
        None => Some(format!("timeline {tli} is not in the primary's history")),
        Some((_, end)) if lsn > *end => Some(format!(
            "it has WAL up to {} on timeline {tli}, which the primary left at {}",
            crate::format_lsn(lsn),
            crate::format_lsn(*end)
        )),
        Some(_) => None,
    }
}

/// Maintenance mode: PostgreSQL is left as it is (no start, promote, follow, clone), except that
/// nothing stays writable without the right to: a writable non-primary and a primary without its
/// lease are still fenced.
fn paused(me: &str, primary: &str, epoch: u64, pg: &PgStatus, lease_valid: bool) -> Vec<AgentAction> {
    use AgentAction::*;
    let writable = pg.running && !pg.in_recovery;
    if primary != me {
        let why = format!("{primary} is the primary at epoch {epoch}");
        if writable {
            return vec![Fence(format!("running as a primary but {why}")), NeedsRejoin(why)];
        }
        if pg.data_dir == DataDir::Primary {
            return vec![NeedsRejoin(format!("the data directory was a primary's and {why}"))];
        }
    } else if writable && !lease_valid {
        return vec![Fence(format!("no lease for epoch {epoch}"))];
    }
    vec![Wait("paused: PostgreSQL is left as it is".into())]
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
