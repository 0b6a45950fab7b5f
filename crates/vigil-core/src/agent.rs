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
//! - A data directory that is neither empty nor PostgreSQL's ([`DataDir::Foreign`], a mount point
//!   holding only `lost+found` included) is never touched: no init, clone, start or adoption.
//! - Only the bootstrap primary, in the epoch of its bootstrap, initialises an empty data
//!   directory, and at most once per epoch: after a failed initdb it waits for the coordinator to
//!   give the bootstrap back ([`crate::state::Command::AbandonBootstrap`]) and choose again.
//! - Standbys clone when empty, start with a standby configuration pointing at the committed
//!   primary, and re-point (follow) a running server when the primary changes.
//! - Operators' requests ([`crate::switchover`]): the old primary of a started switchover stops
//!   cleanly and stays down for that epoch until the switchover completes (then it follows the
//!   new primary as it is, no rewind) or is cancelled (then it starts again as primary); a standby
//!   asked to re-initialise moves its data aside and clones again, once.

use crate::report::{DataDir, MemberKind, PgStatus, SwitchoverStop};
use crate::slot_name;
use crate::state::ClusterState;
use crate::switchover::clean_switchover_source;
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
    /// Stopped (or stopping) as the old primary of a switchover; see [`SwitchoverStop`].
    #[serde(default)]
    pub switchover_stop: Option<SwitchoverStop>,
    /// The latest reinit request this member has acted on (moved its data aside for).
    #[serde(default)]
    pub reinit_done: Option<u64>,
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
    /// The old primary of switchover `id` of `epoch`: remember it locally, checkpoint, shut
    /// PostgreSQL down cleanly (fast) if it runs, and record where it stopped (pg_controldata).
    StopForSwitchover {
        epoch: u64,
        id: u64,
    },
    /// The switchover this member stopped for was cancelled: forget the local record.
    ForgetSwitchover,
    /// An operator's reinit request `id`: stop PostgreSQL, move the data directory aside, clone
    /// from `from` again; reported (as a re-clone) until done.
    Reinit {
        from: Upstream,
        slot: String,
        id: u64,
    },
}

pub fn reconcile(input: &AgentInput<'_>) -> Vec<AgentAction> {
    use AgentAction::*;
    let AgentInput { me, kind, state, pg, lease_valid, local, diverged } = *input;
    if kind == MemberKind::Witness {
        return Vec::new();
    }
    if pg.data_dir == DataDir::Foreign {
        let found = pg.data_dir_problem.as_deref().unwrap_or("not a PostgreSQL data directory");
        return vec![NeedsRejoin(format!("cannot use the data directory: {found}"))];
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
        let reinit = state.reinit.get(me).copied().filter(|id| local.reinit_done != Some(*id));
        let rejoin = |reason: String| match (&from, reinit) {
            (Some(from), Some(id)) => Reinit { from: from.clone(), slot: slot.clone(), id },
            (Some(from), None) => Rejoin { from: from.clone(), slot: slot.clone(), reason },
            (None, _) => NeedsRejoin(format!("{reason}; no address known for {primary}")),
        };
        if pg.running && !pg.in_recovery {
            return vec![Fence(format!("running as a primary but {why}")), rejoin(format!("was a primary and {why}"))];
        }
        if reinit.is_some() {
            return vec![rejoin(format!("re-initialisation requested; {why}"))];
        }
        if pg.data_dir == DataDir::Primary {
            // The old primary of the switchover that made this epoch, stopped cleanly where the new
            // primary's timeline begins: it follows as it is.
            let clean = local.switchover_stop.as_ref().is_some_and(|s| clean_switchover_source(state, me, s));
            if let (true, false, Some(from)) = (clean, pg.running, from.clone()) {
                return vec![ConfigureStandby { from, slot }, Start];
            }
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
    let mut out: Vec<AgentAction> = Vec::new();
    if let Some(stop) = &local.switchover_stop {
        let pending = state.switchover.as_ref().is_some_and(|s| s.id == stop.id);
        if stop.epoch == epoch && pending {
            if pg.running || stop.lsn == 0 {
                return vec![StopForSwitchover { epoch, id: stop.id }];
            }
            let to = state.switchover.as_ref().map_or("", |s| s.to.as_str());
            return vec![Wait(format!(
                "stopped cleanly at {} for switchover {} to {to}; waiting for it to complete",
                crate::format_lsn(stop.lsn),
                stop.id
            ))];
        }
        if stop.epoch == epoch && state.requests < stop.id {
            return vec![Wait(format!(
                "stopped for switchover {}, which the committed state does not show yet",
                stop.id
            ))];
        }
        // Cancelled (or a stale record): this member carries on as the primary.
        out.push(ForgetSwitchover);
    }
    if let Some(s) = state.switchover.as_ref().filter(|s| s.started && s.from == me && s.from_epoch == epoch) {
        return vec![StopForSwitchover { epoch, id: s.id }];
    }
    let mark = (local.primary_epoch != Some(epoch)).then_some(MarkPrimary(epoch));
    let was_other_epochs_primary = local.primary_epoch.is_some_and(|e| e < epoch);
    let bootstrapping = state.bootstrapped_by.as_deref() == Some(me) && epoch == state.bootstrap_epoch;
    match (pg.data_dir, pg.running, pg.in_recovery) {
        (DataDir::Empty, _, _) => {
            if !bootstrapping || local.primary_epoch.is_some() {
                return vec![NeedsRejoin(format!("primary of epoch {epoch} but the data directory is empty"))];
            }
            if let Some(f) = pg.bootstrap_failed.as_ref().filter(|f| f.epoch == epoch) {
                return vec![Wait(format!("initdb failed ({}); waiting for the coordinator to choose again", f.error))];
            }
            // initdb first: a failed one leaves no primary epoch behind, so this member may be
            // chosen again once it is fixed. No server runs before the mark.
            out.push(InitDb);
            out.extend(mark);
        }
        (DataDir::Unknown | DataDir::Foreign, _, _) => return vec![Wait("data directory state unknown".into())],
        // A primary's data directory from an older epoch: another primary may have written since.
        (DataDir::Primary, _, _) if was_other_epochs_primary || (local.primary_epoch.is_none() && !bootstrapping) => {
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
