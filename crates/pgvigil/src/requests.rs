//! The operators' role changes over HTTP: `POST /switchover`, `/failover`, `/failback`, `/reinit`,
//! `DELETE /switchover`. Bodies are parsed (400 with the reason) by whichever member takes the
//! request; the coordinator checks the request against the committed state and its reports
//! ([`vigil_core::Coordinator::request`]: 404, 409), proposes it, and answers once the outcome is
//! committed (the new primary, or why the switchover was cancelled), or 202 for a scheduled one.

use crate::admin::{Answer, ApiError};
use crate::coordination::wall_ms;
use crate::daemon::Shared;
use serde::Deserialize;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vigil_core::{ClusterState, Command, Decision, Input, Outcome, Refusal, Request};

/// How long a reinit request waits for the clone before answering 202 (still in progress).
const REINIT_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    /// The member to hand over to; none: the best standby.
    #[serde(default)]
    candidate: Option<String>,
    /// The primary the operator expects (Patroni calls it `leader`).
    #[serde(default, alias = "leader")]
    primary: Option<String>,
    /// RFC 3339 time to start at (Patroni: `scheduled_at`).
    #[serde(default, alias = "scheduled_at")]
    at: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    candidate: String,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FailbackBody {
    #[serde(default, alias = "scheduled_at")]
    at: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ReinitBody {
    member: String,
}

/// `body` as a JSON object of type T; an empty body is `{}`.
fn json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| format!("malformed body: {e}"))
}

fn name(field: &str, value: Option<String>) -> Result<Option<String>, String> {
    match value {
        Some(v) if v.trim().is_empty() => Err(format!("malformed body: `{field}` must not be empty")),
        v => Ok(v),
    }
}

/// 9999-12-31T23:59:59.999Z.
const LAST_RFC3339_MS: u64 = 253_402_300_799_999;

/// An RFC 3339 time (`2030-01-02T03:04:05Z`, `2030-01-02T05:04:05+02:00`, fractions allowed) as
/// Unix milliseconds, in the future of `now_ms`.
pub fn parse_at(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("malformed body: `at` {text:?} is not an RFC 3339 time (e.g. 2030-01-02T03:04:05Z)");
    // humantime reads the UTC forms; an offset is applied here.
    let (local, offset_s): (&str, i64) = match t.char_indices().rev().find(|(_, c)| *c == '+' || *c == '-') {
        Some((i, sign)) if i > 10 && t[i + 1..].len() == 5 && t.as_bytes()[i + 3] == b':' => {
            let h: i64 = t[i + 1..i + 3].parse().map_err(|_| bad())?;
            let m: i64 = t[i + 4..].parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let s = (h * 60 + m) * 60;
            (&t[..i], if sign == '+' { s } else { -s })
        }
        _ => (t, 0),
    };
    let local = local.strip_suffix('Z').or_else(|| local.strip_suffix('z')).unwrap_or(local);
    if !(local.contains('T') || local.contains('t')) {
        return Err(bad());
    }
    let wall = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    let ms = wall.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis() as i64 - offset_s * 1000;
    let ms = u64::try_from(ms).map_err(|_| bad())?;
    // An offset can carry 9999-12-31 past the last time RFC 3339 can write (the history does).
    if ms > LAST_RFC3339_MS {
        return Err(bad());
    }
    if ms <= now_ms {
        return Err(format!("`at` {text:?} is in the past"));
    }
    Ok(ms)
}

/// The request an action's body asks for.
pub fn parse(action: &str, body: &[u8], now_ms: u64) -> Result<Request, String> {
    let at = |a: Option<String>| a.map(|a| parse_at(&a, now_ms)).transpose().map(|t| t.unwrap_or(0));
    match action {
        "switchover" => {
            let b: SwitchoverBody = json(body)?;
            Ok(Request::Switchover {
                candidate: name("candidate", b.candidate)?,
                primary: name("primary", b.primary)?,
                not_before_unix_ms: at(b.at)?,
            })
        }
        "failover" => {
            let b: FailoverBody = json(body)?;
            Ok(Request::Failover { candidate: name("candidate", Some(b.candidate))?.unwrap_or_default() })
        }
        "failback" => {
            let b: FailbackBody = json(body)?;
            Ok(Request::Failback { not_before_unix_ms: at(b.at)? })
        }
        "reinit" => {
            let b: ReinitBody = json(body)?;
            Ok(Request::Reinit { member: name("member", Some(b.member))?.unwrap_or_default() })
        }
        "cancel_switchover" => json::<FailbackBody>(body).and_then(|b| match b.at {
            None => Ok(Request::CancelSwitchover),
            Some(_) => Err("malformed body: unknown field `at`".into()),
        }),
        other => Err(format!("unknown action {other:?}")),
    }
}

/// The longest a request waits for a new coordinator to settle (it takes a couple of loops).
const SETTLE_WAIT: Duration = Duration::from_secs(10);

/// How long the coordinator waits for the outcome of `action` before answering.
pub fn wait_limit(shared: &Shared, action: &str) -> Duration {
    let t = &shared.settings.timings;
    match action {
        "reinit" => REINIT_WAIT,
        _ => t.switchover_timeout + t.promotion_wait() + Duration::from_secs(5),
    }
}

/// On the coordinator: check, propose, and wait for the outcome.
pub async fn execute(shared: &Shared, action: &str, req: Request) -> Answer {
    let t = &shared.settings.timings;
    // A new coordinator may not have applied everything its predecessor committed until a quorum
    // confirms it (ReadIndex), and has no reports yet: check the request against neither.
    match shared.raft.confirm_leadership(t.lease_timeout).await {
        Ok(()) => {}
        Err(vigil_raft::RaftError::NotLeader { .. }) => return ApiError::not_coordinator().into(),
        Err(e) => {
            return ApiError::Unavailable(format!("the coordinator's leadership is not confirmed ({e}); try again"))
                .into()
        }
    }
    // A new coordinator has requests wait until it heard the members (the core says how long,
    // a couple of loop intervals); never longer than SETTLE_WAIT.
    let settled_by = Instant::now() + SETTLE_WAIT;
    let cmd = loop {
        let input = Input::Request { request: req.clone(), wall_ms: wall_ms() };
        let Some(out) = shared.coordinator.step(input).await else { return ApiError::not_coordinator().into() };
        match out.decision {
            None => return ApiError::not_coordinator().into(),
            Some(Ok(Decision::Wait(left))) if Instant::now() + left <= settled_by => tokio::time::sleep(left).await,
            Some(Ok(Decision::Wait(_))) => {
                return ApiError::Unavailable("the coordinator has not heard every member yet; try again".into()).into()
            }
            Some(Err(Refusal::NotFound(m))) => return Answer::from(ApiError::NotFound(m)),
            Some(Err(Refusal::Conflict(m))) => return Answer::from(ApiError::Conflict(m)),
            Some(Ok(Decision::Nothing(m))) => return done(shared, 200, m),
            Some(Ok(Decision::Propose(cmd))) => break cmd,
        }
    };
    tracing::warn!(command = ?cmd, "operator request: {action}");
    match shared.propose(&cmd, shared.settings.timings.lease_timeout).await {
        Ok(_) => {}
        Err(e) => return ApiError::not_committed(&e).into(),
    }
    shared.coordinator.wake();
    let deadline = Instant::now() + wait_limit(shared, action);
    let mut state_rx = shared.raft.state();
    loop {
        let state = state_rx.borrow_and_update().state.clone();
        if let Some(answer) = outcome(shared, &cmd, &state) {
            return answer;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, state_rx.changed()).await.is_ok_and(|r| r.is_err()) {
            let what = match &cmd {
                Command::RequestReinit { member, .. } => format!("the re-initialisation of {member}"),
                _ => "the switchover".to_string(),
            };
            return done(shared, 202, format!("{what} is still in progress; see GET /cluster and GET /history"));
        }
    }
}

/// The answer for `cmd` once `state` shows its outcome ([`vigil_core::request::outcome`]); None
/// while it is still under way.
fn outcome(shared: &Shared, cmd: &Command, state: &ClusterState) -> Option<Answer> {
    let with_id = |a: Answer, id: Option<u64>| match id {
        Some(id) => a.with("id", id),
        None => a,
    };
    Some(match vigil_core::request::outcome(cmd, state)? {
        Outcome::Done { message, id } => with_id(done(shared, 200, message), id),
        Outcome::Scheduled { message, id } => done(shared, 202, message).with("id", id),
        Outcome::Refused { message, id } => with_id(Answer::from(ApiError::Conflict(message)), id),
        Outcome::Failed(message) => Answer::from(ApiError::Failed(message)),
    })
}

fn done(shared: &Shared, status: u16, message: String) -> Answer {
    let s = shared.committed();
    Answer::ok(status, message)
        .with("epoch", s.epoch)
        .with("primary", s.primary.unwrap_or_default())
        .with("coordinator", shared.name())
}

/// Now, as Unix milliseconds (for checking a scheduled time where the request arrives).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_with_offsets() {
        let base = parse_at("2030-01-02T03:04:05Z", 0).expect("utc");
        assert_eq!(parse_at("2030-01-02T05:04:05+02:00", 0), Ok(base));
        assert_eq!(parse_at("2030-01-02T01:34:05-01:30", 0), Ok(base));
        assert_eq!(parse_at("2030-01-02T03:04:05.500Z", 0), Ok(base + 500));
        assert!(parse_at("2030-01-02T03:04:05Z", base).is_err_and(|e| e.contains("past")));
        // Found by the fuzz targets: an offset beyond 23:59 was taken, and one could carry the
        // last day of 9999 into the year 10000, a time the history cannot write.
        let last_day = parse_at("9999-12-31T00:00:00Z", 0).expect("the last day");
        assert_eq!(parse_at("9999-12-31T23:59:59.999Z", 0), Ok(last_day + 86_399_999));
        assert_eq!(parse_at("9999-12-31T22:13:13+01:00", 0), Ok(last_day + 76_393_000));
        for bad in [
            "tomorrow",
            "2030-01-02",
            "2030-13-02T03:04:05Z",
            "2030-01-02T03:04:05+2",
            "2030-01-02T03:04:05+24:00",
            "2030-01-02T03:04:05-01:60",
            "9999-12-31T22:13:13-01:47",
            "9999-12-31T22:13:13-23:01",
        ] {
            assert!(parse_at(bad, 0).is_err_and(|e| e.contains("RFC 3339")), "{bad}");
        }
    }

    #[test]
    fn bodies_name_what_is_wrong() {
        let now = 1_000;
        assert_eq!(
            parse("switchover", br#"{"candidate": "b"}"#, now),
            Ok(Request::Switchover { candidate: Some("b".into()), primary: None, not_before_unix_ms: 0 })
        );
        assert_eq!(
            parse("switchover", br#"{"leader": "a", "candidate": "b"}"#, now),
            Ok(Request::Switchover { candidate: Some("b".into()), primary: Some("a".into()), not_before_unix_ms: 0 })
        );
        assert_eq!(
            parse("switchover", b"", now),
            Ok(Request::Switchover { candidate: None, primary: None, not_before_unix_ms: 0 })
        );
        assert!(parse("switchover", br#"{"candidate": "b", "at": "soon"}"#, now).is_err_and(|e| e.contains("RFC 3339")));
        assert!(parse("switchover", br#"{"canditate": "b"}"#, now).is_err_and(|e| e.contains("canditate")));
        assert!(parse("switchover", br#"{"candidate": ""}"#, now).is_err_and(|e| e.contains("empty")));
        assert!(parse("failover", b"", now).is_err_and(|e| e.contains("missing field `candidate`")));
        assert!(parse("failover", b"{not json", now).is_err_and(|e| e.starts_with("malformed body")));
        assert!(parse("reinit", br#"{"member": 3}"#, now).is_err());
        assert_eq!(parse("reinit", br#"{"member": "c"}"#, now), Ok(Request::Reinit { member: "c".into() }));
        assert_eq!(parse("failback", b"{}", now), Ok(Request::Failback { not_before_unix_ms: 0 }));
        assert_eq!(parse("cancel_switchover", b"", now), Ok(Request::CancelSwitchover));
    }
}
