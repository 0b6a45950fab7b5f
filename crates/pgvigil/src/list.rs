//! The cluster as the coordinator sees it: fetched over the peer protocol ([`fetch_with`], for the
//! HTTP API and the test harness), shaped for `GET /cluster` ([`ClusterView`]) and drawn as
//! `pgvigil list`'s table ([`render`]).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use vigil_core::proxy::ProxySummary;
use vigil_core::{ClusterState, HealthReport, MemberKind};
use vigil_raft::{proto, PeerClients};

/// The committed state plus the coordinator's latest reports.
pub struct View {
    pub state: ClusterState,
    pub reports: BTreeMap<String, HealthReport>,
    pub coordinator: String,
    pub term: u64,
}

async fn get_state(clients: &PeerClients, addr: &str) -> anyhow::Result<proto::StateReply> {
    let mut client = clients.client(addr)?;
    let reply = tokio::time::timeout(std::time::Duration::from_secs(3), client.get_state(proto::StateRequest {}))
        .await
        .with_context(|| format!("{addr} did not answer"))?
        .with_context(|| format!("ask {addr} for the cluster state"))?;
    Ok(reply.into_inner())
}

/// Ask `addr` over `clients` (plain or TLS, with the cluster's credential), then the
/// coordinator it names (only the coordinator has the reports).
pub async fn fetch_with(clients: &PeerClients, addr: &str) -> anyhow::Result<View> {
    let mut reply = get_state(clients, addr).await?;
    if !reply.leader_address.is_empty() && reply.leader_address != addr {
        // A coordinator that just died is still named until the next election: then show the
        // committed state as `addr` has it, without reports.
        if let Ok(r) = get_state(clients, &reply.leader_address.clone()).await {
            reply = r;
        }
    }
    let state: ClusterState = serde_json::from_str(&reply.cluster_json).context("decode the cluster state")?;
    let reports = serde_json::from_str(&reply.reports_json).context("decode the reports")?;
    let coordinator =
        state.members.keys().find(|n| vigil_core::node_id(n) == reply.leader_id).cloned().unwrap_or_default();
    Ok(View { state, reports, coordinator, term: reply.term })
}

/// The cluster as `GET /cluster` answers it and `pgvigil list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub epoch: u64,
    pub primary: Option<String>,
    /// The Raft leader, when known.
    pub coordinator: Option<String>,
    pub term: u64,
    /// Maintenance mode: no automatic failover.
    pub paused: bool,
    pub sync_standbys: Vec<String>,
    /// The switchover in progress or scheduled, described.
    #[serde(default)]
    pub switchover: Option<String>,
    /// Standbys waiting for an operator's re-initialisation.
    #[serde(default)]
    pub reinit: Vec<String>,
    pub members: Vec<MemberView>,
    /// The latest backup recorded, described (`[backup]`).
    #[serde(default)]
    pub last_backup: Option<String>,
    /// The latest verification of the backups, described.
    #[serde(default)]
    pub last_verification: Option<String>,
    /// The routing proxy of the member that answered (`GET /proxy`, with `member` added), if it
    /// runs one: `pgvigil list` shows its routes and sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub kind: MemberKind,
    /// PostgreSQL's address (empty for a witness).
    pub host: String,
    pub port: u16,
    /// "primary", "replica", "witness".
    pub role: String,
    /// "running", "streaming", "in recovery", "stopped", "needs rejoin", "voting", "no report".
    pub state: String,
    pub timeline: Option<u32>,
    /// The most WAL this member has (written on a primary, received or replayed on a standby).
    pub lsn: Option<u64>,
    pub received_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Bytes behind the primary's reported position (replicas only).
    pub lag_bytes: Option<u64>,
    pub tags: vigil_core::Tags,
    pub sync: bool,
    /// Its routing proxy, as its latest report to the coordinator summed it up (None: it runs
    /// none, or its reports do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySummary>,
}

impl ClusterView {
    pub fn from_view(view: &View) -> ClusterView {
        let s = &view.state;
        let primary_lsn = s.primary.as_ref().and_then(|p| view.reports.get(p)).map(|r| r.wal_position());
        let members = s
            .members
            .iter()
            .map(|(name, m)| {
                let r = view.reports.get(name).filter(|_| m.kind == MemberKind::Postgres);
                let role = match (m.kind, s.is_primary(name)) {
                    (MemberKind::Witness, _) => "witness",
                    (_, true) => "primary",
                    _ => "replica",
                };
                let state = match view.reports.get(name) {
                    None => "no report",
                    Some(_) if m.kind == MemberKind::Witness => "voting",
                    Some(r) if r.pg.needs_rejoin => "needs rejoin",
                    Some(r) if !r.pg.running => "stopped",
                    Some(r) if r.pg.in_recovery && r.pg.streaming => "streaming",
                    Some(r) if r.pg.in_recovery => "in recovery",
                    Some(_) => "running",
                };
                let running = r.filter(|r| r.pg.running);
                let lag_bytes = match (running, primary_lsn) {
                    (Some(r), Some(p)) if role == "replica" => Some(p.saturating_sub(r.wal_position())),
                    _ => None,
                };
                MemberView {
                    name: name.clone(),
                    kind: m.kind,
                    host: if m.kind == MemberKind::Witness { String::new() } else { m.pg_host.clone() },
                    port: m.pg_port,
                    role: role.into(),
                    state: state.into(),
                    timeline: running.map(|r| r.pg.timeline),
                    lsn: running.map(|r| r.wal_position()),
                    received_lsn: running.filter(|r| r.pg.in_recovery).map(|r| r.pg.received_lsn),
                    replay_lsn: running.filter(|r| r.pg.in_recovery).map(|r| r.pg.replay_lsn),
                    lag_bytes,
                    tags: m.tags.clone(),
                    sync: s.sync.standbys.contains(name),
                    proxy: view.reports.get(name).and_then(|r| r.proxy.clone()),
                }
            })
            .collect();
        ClusterView {
            epoch: s.epoch,
            primary: s.primary.clone(),
            coordinator: Some(view.coordinator.clone()).filter(|c| !c.is_empty()),
            term: view.term,
            paused: s.paused,
            sync_standbys: s.sync.standbys.iter().cloned().collect(),
            switchover: s.switchover.as_ref().map(|x| x.describe()),
            reinit: s.reinit.keys().cloned().collect(),
            members,
            last_backup: s.backup.done.last().map(|d| {
                let what = match &d.outcome.error {
                    None => format!(
                        "{} {} ok, {} bytes",
                        d.outcome.taken.unwrap_or(d.kind).name(),
                        d.outcome.label.as_deref().unwrap_or("?"),
                        d.outcome.size_bytes
                    ),
                    Some(e) => format!("{} failed: {}", d.kind.name(), e.lines().next().unwrap_or(e)),
                };
                format!("{what} (backup {} on {}, {})", d.id, d.member, vigil_core::format_unix_ms(d.finished_unix_ms))
            }),
            last_verification: s.backup.verify.done.last().map(|d| {
                let what = match &d.outcome.error {
                    None => format!("passed ({}, {} ms)", d.outcome.label.as_deref().unwrap_or("?"), d.duration_ms),
                    Some(e) => format!("failed: {}", e.lines().next().unwrap_or(e)),
                };
                format!(
                    "{what} (verification {} on {}, {})",
                    d.id,
                    d.member,
                    vigil_core::format_unix_ms(d.finished_unix_ms)
                )
            }),
            proxy: None,
        }
    }

    /// With the answering member's proxy status (`GET /proxy`).
    pub fn with_proxy(mut self, member: &str, status: Option<serde_json::Value>) -> ClusterView {
        self.proxy = status.map(|mut s| {
            if let Some(o) = s.as_object_mut() {
                o.insert("member".into(), member.into());
            }
            s
        });
        self
    }

    pub fn member(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// A `patronictl list`-like table.
pub fn table(view: &View) -> String {
    render(&ClusterView::from_view(view))
}

/// Rows of cells as a boxed table.
pub fn boxed(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..n).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let line = |r: &[String]| {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
        format!("|{}|\n", cells.join("|"))
    };
    let sep = format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let mut out = sep.clone();
    if let Some(head) = rows.first() {
        out.push_str(&line(head));
        out.push_str(&sep);
    }
    for r in rows.iter().skip(1) {
        out.push_str(&line(r));
    }
    out.push_str(&sep);
    out
}

pub fn render(v: &ClusterView) -> String {
    let mut rows = vec![["Member", "Host", "Role", "State", "TL", "Lag (bytes)", "Tags"].map(String::from).to_vec()];
    if v.proxy.is_some() {
        rows[0].push("Proxy".into());
    }
    for m in &v.members {
        // A set flag by its name alone, an unset one not at all, others as key=value.
        let tags: Vec<String> = m
            .tags
            .iter()
            .filter(|(_, v)| *v != "false")
            .map(|(k, v)| if v == "true" { k.to_string() } else { format!("{k}={v}") })
            .collect();
        let role = match m.role.as_str() {
            "primary" => "Primary",
            "witness" => "Witness",
            _ if m.sync => "Sync Standby",
            _ => "Replica",
        };
        let host = if m.kind == MemberKind::Witness { String::new() } else { format!("{}:{}", m.host, m.port) };
        rows.push(vec![
            m.name.clone(),
            host,
            role.into(),
            m.state.clone(),
            m.timeline.map(|t| t.to_string()).unwrap_or_default(),
            m.lag_bytes.map(|l| l.to_string()).unwrap_or_default(),
            tags.join(","),
        ]);
        if let Some(p) = &v.proxy {
            rows.last_mut().expect("a row").push(proxy_cell(p, &m.name));
        }
    }
    let mut out = format!(
        "Cluster: epoch {}, coordinator {} (term {})\n",
        v.epoch,
        v.coordinator.as_deref().unwrap_or("unknown"),
        v.term
    );
    out.push_str(&boxed(&rows));
    if v.paused {
        out.push_str(" Maintenance mode: on (automatic failover paused)\n");
    }
    if let Some(s) = &v.switchover {
        out.push_str(&format!(" Pending: {s}\n"));
    }
    if !v.reinit.is_empty() {
        out.push_str(&format!(" Re-initialisation pending: {}\n", v.reinit.join(", ")));
    }
    if let Some(b) = &v.last_backup {
        out.push_str(&format!(" Last backup: {b}\n"));
    }
    if let Some(b) = &v.last_verification {
        out.push_str(&format!(" Last verification: {b}\n"));
    }
    if let Some(p) = &v.proxy {
        out.push_str(&proxy_line(p));
    }
    // Every other member's proxy, as its latest report summed it up.
    let answering = v.proxy.as_ref().and_then(|p| p["member"].as_str());
    for m in v.members.iter().filter(|m| Some(m.name.as_str()) != answering) {
        if let Some(p) = &m.proxy {
            out.push_str(&summary_line(&m.name, p));
        }
    }
    out
}

/// One line for a member's proxy from its report: ports, where read-write goes, the read-only
/// pool, sessions, queue, refusals.
fn summary_line(member: &str, p: &ProxySummary) -> String {
    let rw = match (&p.rw_forward, &p.rw_hold) {
        (Some(to), _) => format!("rw to {to}"),
        (None, Some(why)) => format!("rw held: {why}"),
        (None, None) => "rw ?".to_string(),
    };
    let pool = if p.ro_pool.is_empty() { "none".to_string() } else { p.ro_pool.join(", ") };
    format!(
        " Proxy on {member} (its last report): rw port {}, ro port {}, {rw}, ro pool {pool}, sessions rw {} ro {}, \
         queued {}, refused {}\n",
        p.rw_port, p.ro_port, p.sessions_rw, p.sessions_ro, p.queued, p.refused
    )
}

/// Sessions through the proxy to `backend`, by port: `rw 2, ro 1`.
fn sessions_to(p: &serde_json::Value, backend: &str) -> Vec<String> {
    p["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["backend"] == backend)
        .map(|s| format!("{} {}", s["port"].as_str().unwrap_or("?"), s["sessions"]))
        .collect()
}

/// The Proxy column for member `name`, as the answering member's proxy sees it: whether new
/// sessions go there (read-write, the read-only pool, out and why) and the open sessions.
fn proxy_cell(p: &serde_json::Value, name: &str) -> String {
    let mut parts = Vec::new();
    if p["rw"]["forward"] == name {
        parts.push("rw".to_string());
    } else if p["primary"] == name {
        parts.push(format!("rw held: {}", p["rw"]["hold"].as_str().unwrap_or("?")));
    }
    if p["ro_pool"].as_array().is_some_and(|a| a.iter().any(|m| m == name)) {
        parts.push("ro pool".to_string());
    } else if let Some(why) = p["ro_out"][name].as_str() {
        parts.push(format!("ro out: {why}"));
    }
    let sessions = sessions_to(p, name);
    if !sessions.is_empty() {
        parts.push(format!("sessions {}", sessions.join(", ")));
    }
    parts.join("; ")
}

/// The line under the table: the answering member's proxy, its ports, lease, queue and refusals.
fn proxy_line(p: &serde_json::Value) -> String {
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let mut refused = Vec::new();
    for (port, reasons) in p["refused_total"].as_object().into_iter().flatten() {
        for (reason, n) in reasons.as_object().into_iter().flatten() {
            refused.push(format!("{port} {reason} {n}"));
        }
    }
    format!(
        " Proxy on {}: rw port {}, ro port {}, lease {} ms left, queued {} now ({} in all), refused {}\n",
        p["member"].as_str().unwrap_or("?"),
        p["rw_port"],
        p["ro_port"],
        count(&p["lease_left_ms"]),
        count(&p["queued"]["rw"]) + count(&p["queued"]["ro"]),
        count(&p["queued_total"]["rw"]) + count(&p["queued_total"]["ro"]),
        if refused.is_empty() { "none".to_string() } else { refused.join(", ") },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: &str, proxy: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "name": name, "kind": "postgres", "host": "10.0.0.1", "port": 5432, "role": role,
            "state": "running", "tags": {}, "sync": false, "proxy": proxy,
        })
    }

    #[test]
    fn every_members_proxy_gets_a_line_the_answering_one_its_own() {
        let summary = |forward: Option<&str>, hold: Option<&str>, ro: u64| {
            serde_json::json!({
                "rw_port": 6432, "ro_port": 6433, "rw_forward": forward, "rw_hold": hold,
                "ro_pool": ["b"], "sessions_rw": 2, "sessions_ro": ro, "queued": 1, "refused": 3,
            })
        };
        let v: ClusterView = serde_json::from_value(serde_json::json!({
            "epoch": 2, "primary": "a", "coordinator": "a", "term": 1, "paused": false,
            "sync_standbys": [],
            "members": [
                member("a", "primary", summary(Some("a"), None, 0)),
                member("b", "replica", summary(None, Some("no_lease"), 4)),
                member("c", "replica", serde_json::Value::Null),
            ],
            "proxy": { "member": "a", "rw_port": 6432, "ro_port": 6433, "rw": { "forward": "a" } },
        }))
        .expect("a cluster view");
        let text = render(&v);
        assert!(text.contains(" Proxy on a: rw port 6432, ro port 6433,"), "{text}");
        assert!(!text.contains("Proxy on a (its last report)"), "{text}");
        assert!(
            text.contains(
                " Proxy on b (its last report): rw port 6432, ro port 6433, rw held: no_lease, ro pool b, \
                 sessions rw 2 ro 4, queued 1, refused 3\n"
            ),
            "{text}"
        );
        // A member without a proxy (or whose reports do not carry it) has no line.
        assert!(!text.contains("Proxy on c"), "{text}");
    }
}
