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
}

const ACTIONS: [Action; 7] = [
    Action::Pause,
    Action::Resume,
    Action::Switchover,
    Action::Failover,
    Action::Failback,
    Action::Reinit,
    Action::CancelSwitchover,
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
        }
    }

    fn parse(name: &str) -> Option<Action> {
        ACTIONS.into_iter().find(|a| a.name() == name)
    }

    fn is_pause(self) -> bool {
        matches!(self, Action::Pause | Action::Resume)
    }
}

/// A parsed request body.
enum Body {
    Pause(PauseBody),
    Request(vigil_core::Request),
}

fn parse_any(action: Action, body: &[u8]) -> Result<Body, String> {
    if action.is_pause() {
        parse_body(body).map(Body::Pause)
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

impl Answer {
    pub fn new(status: u16, message: impl Into<String>) -> Answer {
        let kind = if (200..300).contains(&status) { "ok" } else { "error" };
        Answer { status, body: json!({ "status": kind, "message": message.into() }) }
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

/// Take a request on this member: carry it out if it is the coordinator, else forward it.
pub async fn run(shared: &Shared, action: Action, body: &[u8]) -> Answer {
    let parsed = match parse_any(action, body) {
        Ok(b) => b,
        Err(e) => return Answer::new(400, e),
    };
    if shared.raft.status().borrow().is_leader {
        return execute(shared, action, parsed).await;
    }
    let Some((name, addr)) = shared.leader().cloned() else {
        return Answer::new(503, "no coordinator is known (an election may be under way); try again");
    };
    let request =
        proto::AdminRequest { action: action.name().into(), body_json: String::from_utf8_lossy(body).into_owned() };
    let lease = shared.settings.timings.lease_timeout;
    let timeout = if action.is_pause() { lease * 2 } else { requests::wait_limit(shared, action.name()) + lease * 2 };
    let client =
        if action.is_pause() { shared.clients.client(&addr) } else { shared.clients.long_client(&addr, timeout) };
    let reply = match client {
        Ok(mut client) => tokio::time::timeout(timeout, client.admin(request)).await,
        Err(e) => return Answer::new(503, format!("cannot reach the coordinator {name} at {addr}: {e:#}")),
    };
    match reply {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            let body = serde_json::from_str(&r.body_json).unwrap_or_else(|_| json!({ "status": "error" }));
            Answer { status: u16::try_from(r.http_status).unwrap_or(502), body }.with("forwarded_to", name)
        }
        Ok(Err(e)) => Answer::new(503, format!("the coordinator {name} refused the request: {}", e.message())),
        Err(_) => Answer::new(503, format!("the coordinator {name} did not answer within {timeout:?}")),
    }
}

/// A request forwarded by another member (the `Admin` RPC): carried out only on the coordinator,
/// never forwarded again.
pub async fn run_forwarded(shared: &Shared, action: &str, body_json: &str) -> Answer {
    let Some(action) = Action::parse(action) else {
        return Answer::new(400, format!("unknown action {action:?}"));
    };
    let parsed = match parse_any(action, body_json.as_bytes()) {
        Ok(b) => b,
        Err(e) => return Answer::new(400, e),
    };
    if !shared.raft.status().borrow().is_leader {
        return Answer::new(503, "not the coordinator (any more); try again");
    }
    execute(shared, action, parsed).await
}

async fn execute(shared: &Shared, action: Action, body: Body) -> Answer {
    match body {
        Body::Pause(b) => pause(shared, action, b).await,
        Body::Request(r) => requests::execute(shared, action.name(), r).await,
    }
}

async fn pause(shared: &Shared, action: Action, body: PauseBody) -> Answer {
    let paused = action == Action::Pause;
    let done = |shared: &Shared, message: &str| {
        let s = shared.committed();
        Answer::new(200, message).with("paused", s.paused).with("epoch", s.epoch).with("coordinator", shared.name())
    };
    if shared.committed().paused == paused {
        return done(shared, if paused { "already paused" } else { "not paused" });
    }
    if let Some(s) = shared.committed().switchover.as_ref().filter(|s| paused && s.started) {
        return Answer::new(409, format!("{} is under way; pause once it has ended", s.describe()));
    }
    let cmd = Command::SetPaused { paused, reason: body.reason, at_unix_ms: wall_ms() };
    tracing::warn!(command = ?cmd, "operator request: {}", action.name());
    match shared.propose(&cmd, shared.settings.timings.lease_timeout).await {
        Ok(_) if paused => {
            done(shared, "paused: no automatic failover; agents leave PostgreSQL as it is (a primary without its lease is still fenced)")
        }
        Ok(_) => done(shared, "resumed: automatic failover is on"),
        Err(RaftError::NotLeader { .. }) => Answer::new(503, "not the coordinator (any more); try again"),
        Err(e) => Answer::new(503, format!("not committed: {e}; try again")),
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
        let a = Answer::new(401, "no").with("x", 1);
        assert_eq!(a.body, json!({"status": "error", "message": "no", "x": 1}));
        assert_eq!(Answer::new(200, "fine").body["status"], "ok");
        assert_eq!(Action::parse("pause"), Some(Action::Pause));
        assert_eq!(Action::parse("reboot"), None);
        for a in ACTIONS {
            assert_eq!(Action::parse(a.name()), Some(a));
        }
    }
}
