//! `pgvigil list`: the cluster as the coordinator sees it, as a table or JSON.

use anyhow::Context;
use std::collections::BTreeMap;
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

/// Ask `addr`, then the coordinator it names (only the coordinator has the reports).
pub async fn fetch(addr: &str) -> anyhow::Result<View> {
    let clients = PeerClients::new();
    let mut reply = get_state(&clients, addr).await?;
    if !reply.leader_address.is_empty() && reply.leader_address != addr {
        // A coordinator that just died is still named until the next election: then show the
        // committed state as `addr` has it, without reports.
        if let Ok(r) = get_state(&clients, &reply.leader_address.clone()).await {
            reply = r;
        }
    }
    let state: ClusterState = serde_json::from_str(&reply.cluster_json).context("decode the cluster state")?;
    let reports = serde_json::from_str(&reply.reports_json).context("decode the reports")?;
    let coordinator =
        state.members.keys().find(|n| vigil_core::node_id(n) == reply.leader_id).cloned().unwrap_or_default();
    Ok(View { state, reports, coordinator, term: reply.term })
}

pub async fn run(peer: &str, json: bool) -> anyhow::Result<()> {
    let view = fetch(peer).await?;
    if json {
        let out = serde_json::json!({
            "coordinator": view.coordinator,
            "term": view.term,
            "state": view.state,
            "reports": view.reports,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table(&view));
    }
    Ok(())
}

/// A `patronictl list`-like table.
pub fn table(view: &View) -> String {
    let s = &view.state;
    let primary_lsn = s.primary.as_ref().and_then(|p| view.reports.get(p)).map(|r| r.pg.current_lsn);
    let mut rows = vec![[
        "Member".to_string(),
        "Host".into(),
        "Role".into(),
        "State".into(),
        "TL".into(),
        "Lag (bytes)".into(),
        "Tags".into(),
    ]];
    for (name, m) in &s.members {
        let r = view.reports.get(name);
        let role = match (m.kind, s.is_primary(name)) {
            (MemberKind::Witness, _) => "Witness",
            (_, true) => "Primary",
            _ => "Replica",
        };
        let state = match r {
            None => "no report".to_string(),
            Some(_) if m.kind == MemberKind::Witness => "voting".into(),
            Some(r) if r.pg.needs_rejoin => "needs rejoin".into(),
            Some(r) if !r.pg.running => "stopped".into(),
            Some(r) if r.pg.in_recovery && r.pg.streaming => "streaming".into(),
            Some(r) if r.pg.in_recovery => "in recovery".into(),
            Some(_) => "running".into(),
        };
        let tl = r.filter(|r| r.pg.running).map(|r| r.pg.timeline.to_string()).unwrap_or_default();
        let lag = match (r, primary_lsn, role) {
            (Some(r), Some(p), "Replica") if r.pg.running => p.saturating_sub(r.pg.received_lsn).to_string(),
            _ => String::new(),
        };
        let mut tags = Vec::new();
        if m.nofailover {
            tags.push("nofailover".to_string());
        }
        if m.priority != 0 {
            tags.push(format!("priority={}", m.priority));
        }
        let host = if m.kind == MemberKind::Witness { String::new() } else { format!("{}:{}", m.pg_host, m.pg_port) };
        rows.push([name.clone(), host, role.into(), state, tl, lag, tags.join(",")]);
    }
    let widths: Vec<usize> = (0..7).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let line = |r: &[String; 7]| {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!(" {c:<w$} ")).collect();
        format!("|{}|\n", cells.join("|"))
    };
    let sep = format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let mut out = format!(
        "Cluster: epoch {}, coordinator {} (term {})\n{sep}",
        s.epoch,
        if view.coordinator.is_empty() { "unknown" } else { &view.coordinator },
        view.term
    );
    out.push_str(&line(&rows[0]));
    out.push_str(&sep);
    for r in &rows[1..] {
        out.push_str(&line(r));
    }
    out.push_str(&sep);
    out
}
