//! Operators' requests: planned switchover, forced failover, failback, reinit, cancel. The
//! coordinator checks a [`Request`] against the committed state and its reports and turns it into
//! a command or a refusal ([`Coordinator::request`], stepped as `Input::Request`); [`outcome`]
//! reads what became of the command in the committed state, for the answer to the operator.

use crate::candidate;
use crate::coordinator::Coordinator;
use crate::format_unix_ms;
use crate::report::{HealthReport, MemberKind};
use crate::state::{ClusterState, Command, EventKind};
use std::time::Instant;

/// What an operator asks the coordinator for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Planned, zero-loss. No candidate: the best standby. `primary`: the primary the operator
    /// expects (refused if it is not).
    Switchover {
        candidate: Option<String>,
        primary: Option<String>,
        not_before_unix_ms: u64,
    },
    /// Forced: for when the primary is gone.
    Failover {
        candidate: String,
    },
    /// A switchover back to `preferred_primary`, else to the primary before the last change.
    Failback {
        not_before_unix_ms: u64,
    },
    Reinit {
        member: String,
    },
    /// Cancel the pending switchover.
    CancelSwitchover,
}

/// Why a request is refused (the HTTP layer maps these to 404 and 409).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound(String),
    Conflict(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Propose(Command),
    /// Nothing to do (already so), and why.
    Nothing(String),
    /// Ask again after this long: the coordinator is new and may not have every member's report.
    Wait(std::time::Duration),
}

/// What became of a proposed request, as the committed state shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (HTTP 200), with the request's id when it has one.
    Done { message: String, id: Option<u64> },
    /// Committed, and due later (202).
    Scheduled { message: String, id: u64 },
    /// Not done, and why (409).
    Refused { message: String, id: Option<u64> },
    /// Carried out, and it failed (500).
    Failed(String),
}

/// What became of `cmd` (a request's command that was committed or overtaken) in `state`; None
/// while it is still under way.
pub fn outcome(cmd: &Command, state: &ClusterState) -> Option<Outcome> {
    let not_applied = || {
        Some(Outcome::Refused {
            message: "not applied: the cluster changed meanwhile (another request came first); try again".into(),
            id: None,
        })
    };
    match cmd {
        Command::BeginSwitchover { id, to, not_before_unix_ms, .. } => {
            if state.requests < *id {
                return not_applied();
            }
            if let Some(o) = state.last_switchover.as_ref().filter(|o| o.id == *id) {
                let what = if o.forced { "failed over" } else { "switched over" };
                return Some(if o.completed {
                    Outcome::Done { message: format!("{what} from {} to {}", o.from, o.to), id: Some(*id) }
                } else {
                    Outcome::Refused { message: o.detail.clone(), id: Some(*id) }
                });
            }
            match &state.switchover {
                Some(s) if s.id == *id && !s.started && *not_before_unix_ms > 0 => Some(Outcome::Scheduled {
                    message: format!("switchover {id} to {to} scheduled at {}", format_unix_ms(*not_before_unix_ms)),
                    id: *id,
                }),
                Some(s) if s.id == *id => None,
                // Neither pending nor ended: another request replaced it at once.
                _ => not_applied(),
            }
        }
        Command::CancelSwitchover { id, .. } => match &state.last_switchover {
            Some(o) if o.id == *id && o.completed => Some(Outcome::Refused {
                message: format!("switchover {id} completed before it could be cancelled"),
                id: None,
            }),
            Some(o) if o.id == *id => Some(Outcome::Done { message: o.detail.clone(), id: None }),
            _ if state.switchover.as_ref().is_some_and(|s| s.id == *id) => None,
            _ => not_applied(),
        },
        Command::RequestReinit { id, member, .. } => {
            if state.requests < *id {
                return not_applied();
            }
            if state.reinit.get(member) == Some(id) {
                return None;
            }
            let event = state.history.iter().rev().find(|e| e.kind == EventKind::Reclone && e.member == *member);
            let detail = event.map_or_else(|| format!("{member} re-initialised"), |e| e.detail.clone());
            Some(if detail.starts_with("failed") {
                Outcome::Failed(format!("re-initialisation of {member}: {detail}"))
            } else {
                Outcome::Done { message: format!("{member} re-initialised: {detail}"), id: None }
            })
        }
        _ => None,
    }
}

impl Coordinator {
    /// The best target of a planned switchover from `from`: most WAL, then priority, then name.
    fn best_planned(&self, now: Instant, state: &ClusterState, from: &str) -> Option<String> {
        let mut ok: Vec<&HealthReport> = state
            .members
            .keys()
            .filter(|m| self.planned_problem(now, state, from, m).is_none())
            .filter_map(|m| self.reports.get(m).map(|r| &r.report))
            .collect();
        candidate::rank(&mut ok, |r| (0, r.wal_position()));
        ok.first().map(|r| r.member.clone())
    }

    /// An operator's request, checked against the committed state and the latest reports.
    pub(crate) fn request(
        &self,
        now: Instant,
        state: &ClusterState,
        req: &Request,
        wall_ms: u64,
    ) -> Result<Decision, Refusal> {
        let known = |m: &str| -> Result<(), Refusal> {
            match state.members.get(m) {
                None => Err(Refusal::NotFound(format!("no member {m:?} in the cluster"))),
                Some(x) if x.kind != MemberKind::Postgres => {
                    Err(Refusal::Conflict(format!("{m} is a witness: it runs no PostgreSQL")))
                }
                Some(_) => Ok(()),
            }
        };
        let conflict = |m: String| Err(Refusal::Conflict(m));
        let (candidate, forced, not_before, reason) = match req {
            Request::CancelSwitchover => {
                return match &state.switchover {
                    None => Err(Refusal::NotFound("no switchover is pending".into())),
                    Some(s) => Ok(Decision::Propose(Command::CancelSwitchover {
                        id: s.id,
                        reason: "cancelled by the operator".into(),
                        at_unix_ms: wall_ms,
                    })),
                };
            }
            Request::Reinit { member } => {
                known(member)?;
                return self.reinit(now, state, member, wall_ms);
            }
            Request::Switchover { candidate, primary: expected, not_before_unix_ms } => {
                if let Some(c) = candidate {
                    known(c)?;
                }
                if let Some(e) = expected.as_ref().filter(|e| state.primary.as_ref() != Some(*e)) {
                    return conflict(format!(
                        "the primary is {}, not {e}",
                        state.primary.as_deref().unwrap_or("nobody")
                    ));
                }
                (candidate.clone(), false, *not_before_unix_ms, "requested by the operator".to_string())
            }
            Request::Failover { candidate } => {
                known(candidate)?;
                (Some(candidate.clone()), true, 0, "forced failover requested by the operator".to_string())
            }
            Request::Failback { not_before_unix_ms } => {
                let (to, why) = match (&self.preferred_primary, &state.previous_primary) {
                    (Some(p), _) => (p.clone(), "failback to the preferred primary"),
                    (None, Some(p)) => (p.clone(), "failback to the primary before the last change"),
                    (None, None) => {
                        return conflict("no preferred_primary is configured and no earlier primary is known".into())
                    }
                };
                known(&to)?;
                if state.is_primary(&to) {
                    return Ok(Decision::Nothing(format!("{to} is already the primary")));
                }
                (Some(to), false, *not_before_unix_ms, why.to_string())
            }
        };
        let Some(primary) = state.primary.clone() else { return conflict("the cluster has no primary yet".into()) };
        if state.paused {
            return conflict("the cluster is paused: resume it first".into());
        }
        if let Some(s) = &state.switchover {
            return conflict(format!("{} is pending; cancel it first (DELETE /switchover)", s.describe()));
        }
        let to = match candidate {
            Some(c) => c,
            None => match self.best_planned(now, state, &primary) {
                Some(c) => c,
                None => return conflict(format!("no standby can take over from {primary} now")),
            },
        };
        if to == primary {
            return conflict(format!("{to} is already the primary"));
        }
        if state.members.get(&to).is_some_and(|m| m.tags.nofailover()) {
            return conflict(format!("{to} is tagged nofailover"));
        }
        // A scheduled switchover is checked again when it is due.
        let problem = match (forced, not_before) {
            (true, _) => self.forced_problem(now, state, &to),
            (false, 0) => self.planned_problem(now, state, &primary, &to),
            (false, t) if t <= wall_ms => Some("the scheduled time has passed".into()),
            (false, _) => None,
        };
        if let Some(p) = problem {
            return conflict(p);
        }
        Ok(Decision::Propose(Command::BeginSwitchover {
            // At u64::MAX (a damaged snapshot) this wraps, and applying refuses it as stale.
            id: state.requests.wrapping_add(1),
            from_epoch: state.epoch,
            to,
            forced,
            not_before_unix_ms: not_before,
            reason,
            at_unix_ms: wall_ms,
        }))
    }

    fn reinit(&self, now: Instant, state: &ClusterState, member: &str, wall_ms: u64) -> Result<Decision, Refusal> {
        let conflict = |m: String| Err(Refusal::Conflict(m));
        let Some(primary) = state.primary.as_deref() else { return conflict("the cluster has no primary yet".into()) };
        if state.paused {
            return conflict("the cluster is paused: resume it first".into());
        }
        if member == primary {
            return conflict(format!("{member} is the primary: only a standby can be re-initialised"));
        }
        if state.reinit.contains_key(member) {
            return Ok(Decision::Nothing(format!("a re-initialisation of {member} is already pending")));
        }
        if !self.current_report(now, primary).is_some_and(|p| p.pg.running && !p.pg.in_recovery) {
            return conflict(format!("the primary {primary} is not running: there is nothing to clone from"));
        }
        let id = state.requests.wrapping_add(1);
        Ok(Decision::Propose(Command::RequestReinit { id, member: member.to_string(), at_unix_ms: wall_ms }))
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
