//! Operators' requests that change the cluster: pause, resume, and the role changes of
//! [`crate::requests`] (switchover, failover, failback, reinit). The coordinator carries them
//! out; any other member forwards them to it over the peer service's `Admin` RPC, so a request
//! works whichever member it is sent to. The token is checked by the member that took the HTTP
//! request; the peer port is trusted as it is for Raft messages.

use crate::coordination::wall_ms;
use crate::daemon::Shared;
use crate::requests;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;
use vigil_core::Command;
use vigil_raft::{proto, RaftError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Switchover,
    Failover,
    Failback,
    Reinit,
    CancelSwitchover,
    /// `POST /backup`.
    Backup,
    /// A member's report of its backup stanza or of a backup's end (never from HTTP).
    BackupReport,
    /// `POST /backup/verify`.
    BackupVerify,
}

const ACTIONS: [Action; 10] = [
    Action::Pause,
    Action::Resume,
    Action::Switchover,
    Action::Failover,
    Action::Failback,
    Action::Reinit,
    Action::CancelSwitchover,
    Action::Backup,
    Action::BackupReport,
    Action::BackupVerify,
];

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Switchover => "switchover",
            Action::Failover => "failover",
            Action::Failback => "failback",
            Action::Reinit => "reinit",
            Action::CancelSwitchover => "cancel_switchover",
            Action::Backup => "backup",
            Action::BackupReport => "backup_report",
            Action::BackupVerify => "backup_verify",
        }
    }

    fn parse(name: &str) -> Option<Action> {
        ACTIONS.into_iter().find(|a| a.name() == name)
    }

    fn is_pause(self) -> bool {
        matches!(self, Action::Pause | Action::Resume)
    }

    fn is_backup(self) -> bool {
        matches!(self, Action::Backup | Action::BackupReport | Action::BackupVerify)
    }
}

/// A parsed request body.
enum Body {
    Pause(PauseBody),
    Request(vigil_core::Request),
    Backup(crate::backup::api::Body),
}

fn parse_any(action: Action, body: &[u8]) -> Result<Body, String> {
    if action.is_pause() {
        parse_body(body).map(Body::Pause)
    } else if action.is_backup() {
        crate::backup::api::parse(action.name(), body).map(Body::Backup)
    } else {
        requests::parse(action.name(), body, requests::now_ms()).map(Body::Request)
    }
}

/// The optional body of `POST /pause` and `POST /resume`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// Recorded in the history event.
    #[serde(default)]
    pub reason: String,
}

/// An HTTP answer: status and JSON body `{"status": "ok"|"error", "message": ..., ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// Why a request is refused: each kind is one HTTP status, so a call site says what went wrong
/// and never picks a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request itself is wrong (malformed body or query, unknown action).
    BadRequest(String),
    /// 401: no valid token.
    Unauthorized(String),
    /// 404: no such endpoint or member.
    NotFound(String),
    /// 409: the cluster's state does not allow it now.
    Conflict(String),
    /// 500: it was carried out and failed.
    Failed(String),
    /// 503: no coordinator, not reachable, not committed: try again.
    Unavailable(String),
    /// 503: no coordinator took the request (this one stopped being it before it proposed
    /// anything, or none is known during an election); the member that took the request tries
    /// the next coordinator ([`run`]).
    NotCoordinator(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::Failed(_) => 500,
            ApiError::Unavailable(_) | ApiError::NotCoordinator(_) => 503,
        }
    }

    pub fn not_coordinator() -> ApiError {
        ApiError::NotCoordinator("not the coordinator (any more); try again".into())
    }

    /// A proposal that did not commit.
    pub fn not_committed(e: &RaftError) -> ApiError {
        match e {
            RaftError::NotLeader { .. } => ApiError::not_coordinator(),
            e => ApiError::Unavailable(format!("not committed: {e}; try again")),
        }
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        let status = e.status();
        let handed_over = matches!(e, ApiError::NotCoordinator(_));
        let (ApiError::BadRequest(m)
        | ApiError::Unauthorized(m)
        | ApiError::NotFound(m)
        | ApiError::Conflict(m)
        | ApiError::Failed(m)
        | ApiError::Unavailable(m)
        | ApiError::NotCoordinator(m)) = e;
        let answer = Answer { status, body: json!({ "status": "error", "message": m }) };
        if handed_over {
            answer.with("not_coordinator", true)
        } else {
            answer
        }
    }
}

impl Answer {
    /// An [`ApiError::NotCoordinator`], also one forwarded by another member.
    pub fn is_not_coordinator(&self) -> bool {
        self.status == 503 && self.body.get("not_coordinator").and_then(Value::as_bool) == Some(true)
    }

    /// A success (2xx); refusals are [`ApiError`]s.
    pub fn ok(status: u16, message: impl Into<String>) -> Answer {
        debug_assert!((200..300).contains(&status), "Answer::ok({status}): use an ApiError");
        Answer { status, body: json!({ "status": "ok", "message": message.into() }) }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Answer {
        if let Some(o) = self.body.as_object_mut() {
            o.insert(key.into(), value.into());
        }
        self
    }
}

/// An empty body, or a JSON object with the known fields only.
pub fn parse_body(body: &[u8]) -> Result<PauseBody, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(PauseBody::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("malformed body: {e}"))
}

/// Take a request on this member: carry it out if it is the coordinator, else forward it. A
/// coordinator that hands its leadership over (it moves off the primary's host, or stops)
/// refuses what it has not proposed yet; nothing of the request happened, so it goes to the next
/// coordinator, for up to four election timeouts, instead of a 503 for an internal move.
pub async fn run(shared: &Shared, action: Action, body: &[u8]) -> Answer {
    let t = &shared.settings.timings;
    let deadline = Instant::now() + t.election_timeout() * 4;
    loop {
        let answer = dispatch(shared, action, body).await;
        if !answer.is_not_coordinator() || Instant::now() >= deadline {
            return answer;
        }
        // Until Raft has settled on the next leader: polled at its own tick, within the deadline.
        tokio::time::sleep(t.raft_tick).await;
    }
}

/// One attempt of [`run`].
async fn dispatch(shared: &Shared, action: Action, body: &[u8]) -> Answer {
    let parsed = match parse_any(action, body) {
        Ok(b) => b,
        Err(e) => return Answer::from(ApiError::BadRequest(e)),
    };
    if shared.raft.status().borrow().is_leader {
        return execute(shared, action, parsed).await;
    }
    let Some((name, addr)) = shared.leader().cloned() else {
        // Nothing happened yet: [`run`] tries again once the election is over.
        return ApiError::NotCoordinator("no coordinator is known (an election may be under way); try again".into())
            .into();
    };
    let request =
        proto::AdminRequest { action: action.name().into(), body_json: String::from_utf8_lossy(body).into_owned() };
    let lease = shared.settings.timings.lease_timeout;
    let timeout = if action.is_pause() || action.is_backup() {
        lease * 2
    } else {
        requests::wait_limit(shared, action.name()) + lease * 2
    };
    let client = if action.is_pause() || action.is_backup() {
        shared.clients.client(&addr)
    } else {
        shared.clients.long_client(&addr, timeout)
    };
    let reply = match client {
        Ok(mut client) => tokio::time::timeout(timeout, client.admin(request)).await,
        Err(e) => {
            return Answer::from(ApiError::Unavailable(format!("cannot reach the coordinator {name} at {addr}: {e:#}")))
        }
    };
    match reply {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let body = serde_json::from_str(&r.body_json).unwrap_or_else(|_| json!({ "status": "error" }));
            Answer { status: u16::try_from(r.http_status).unwrap_or(502), body }.with("forwarded_to", name)
        }
        Ok(Err(e)) => {
            Answer::from(ApiError::Unavailable(format!("the coordinator {name} refused the request: {}", e.message())))
        }
        Err(_) => {
            Answer::from(ApiError::Unavailable(format!("the coordinator {name} did not answer within {timeout:?}")))
        }
    }
}

/// A request forwarded by another member (the `Admin` RPC): carried out only on the coordinator,
/// never forwarded again.
pub async fn run_forwarded(shared: &Shared, action: &str, body_json: &str) -> Answer {
    let Some(action) = Action::parse(action) else {
        return Answer::from(ApiError::BadRequest(format!("unknown action {action:?}")));
    };
    let parsed = match parse_any(action, body_json.as_bytes()) {
        Ok(b) => b,
        Err(e) => return Answer::from(ApiError::BadRequest(e)),
    };
    if !shared.raft.status().borrow().is_leader {
        return ApiError::not_coordinator().into();
    }
    execute(shared, action, parsed).await
}

async fn execute(shared: &Shared, action: Action, body: Body) -> Answer {
    match body {
        Body::Pause(b) => pause(shared, action, b).await,
        Body::Request(r) => requests::execute(shared, action.name(), r).await,
        Body::Backup(b) => crate::backup::api::execute(shared, b).await,
    }
}

async fn pause(shared: &Shared, action: Action, body: PauseBody) -> Answer {
    let paused = action == Action::Pause;
    let done = |shared: &Shared, message: &str| {
        let s = shared.committed();
        Answer::ok(200, message).with("paused", s.paused).with("epoch", s.epoch).with("coordinator", shared.name())
    };
    if shared.committed().paused == paused {
        return done(shared, if paused { "already paused" } else { "not paused" });
    }
    if let Some(s) = shared.committed().switchover.as_ref().filter(|s| paused && s.started) {
        return Answer::from(ApiError::Conflict(format!("{} is under way; pause once it has ended", s.describe())));
    }
    let cmd = Command::SetPaused { paused, reason: body.reason, at_unix_ms: wall_ms() };
    tracing::warn!(command = ?cmd, "operator request: {}", action.name());
    match shared.propose(&cmd, shared.settings.timings.lease_timeout).await {
        Ok(_) if paused => {
            done(shared, "paused: no automatic failover; agents leave PostgreSQL as it is (a primary without its lease is still fenced)")
        }
        Ok(_) => done(shared, "resumed: automatic failover is on"),
        Err(e) => ApiError::not_committed(&e).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_empty_or_known_json() {
        assert_eq!(parse_body(b""), Ok(PauseBody::default()));
        assert_eq!(parse_body(b" \n"), Ok(PauseBody::default()));
        assert_eq!(parse_body(b"{}"), Ok(PauseBody::default()));
        assert_eq!(parse_body(br#"{"reason":"upgrade"}"#), Ok(PauseBody { reason: "upgrade".into() }));
        assert!(parse_body(b"{not json").is_err_and(|e| e.starts_with("malformed body")));
        assert!(parse_body(br#"{"resaon":"x"}"#).is_err_and(|e| e.contains("resaon")));
        assert!(parse_body(br#"{"reason":5}"#).is_err());
    }

    #[test]
    fn answers_have_status_and_message() {
        let a = Answer::from(ApiError::Unauthorized("no".into())).with("x", 1);
        assert_eq!((a.status, a.body), (401, json!({"status": "error", "message": "no", "x": 1})));
        assert_eq!(Answer::ok(200, "fine").body["status"], "ok");
        let statuses = [
            ApiError::BadRequest(String::new()),
            ApiError::Unauthorized(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::Failed(String::new()),
            ApiError::Unavailable(String::new()),
            ApiError::NotCoordinator(String::new()),
        ]
        .map(|e| Answer::from(e).status);
        assert_eq!(statuses, [400, 401, 404, 409, 500, 503, 503]);
        let lost = ApiError::not_committed(&RaftError::NotLeader { leader_id: 0 });
        assert_eq!(lost, ApiError::not_coordinator());
        let handed_over = Answer::from(lost);
        assert!(handed_over.is_not_coordinator(), "{:?}", handed_over.body);
        assert!(!Answer::from(ApiError::Unavailable("x".into())).is_not_coordinator());
        assert!(!Answer::from(ApiError::not_committed(&RaftError::Timeout)).is_not_coordinator());
        assert_eq!(Action::parse("pause"), Some(Action::Pause));
        assert_eq!(Action::parse("reboot"), None);
        for a in ACTIONS {
            assert_eq!(Action::parse(a.name()), Some(a));
        }
    }
}
