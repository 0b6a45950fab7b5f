//! The checker's look at each PostgreSQL, asked directly over TCP from the client namespace (not
//! through the daemons): primary or standby, timeline, and what its WAL receiver streams from.
//!
//! **Converged** means: every member answers; exactly one is not in recovery (the primary);
//! every other one has a WAL receiver with status `streaming`, whose sender is the primary's
//! address, on the primary's current timeline.

use crate::nscluster::Endpoints;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// No answer (the reason).
    Down(String),
    /// Not in recovery, writing on this timeline.
    Primary { timeline: u32 },
    /// In recovery; the WAL receiver, if one runs.
    Standby { receiver: Option<Receiver> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receiver {
    pub status: String,
    pub sender: String,
    pub timeline: u32,
}

pub type Probes = BTreeMap<String, Probe>;

async fn probe_one(ep: &Endpoints, ip: &str) -> anyhow::Result<Probe> {
    let c = ep.connect(ip, Duration::from_secs(2)).await?;
    let row = c.query_one("SELECT pg_is_in_recovery()", &[]).await?;
    if !row.get::<_, bool>(0) {
        // The timeline of the WAL being written now (pg_control's may lag behind a promotion).
        let row = c
            .query_one("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int", &[])
            .await?;
        return Ok(Probe::Primary { timeline: row.get::<_, i32>(0) as u32 });
    }
    let rows = c
        .query("SELECT status, coalesce(sender_host, ''), coalesce(received_tli, 0) FROM pg_stat_wal_receiver", &[])
        .await?;
    let receiver =
        rows.first().map(|r| Receiver { status: r.get(0), sender: r.get(1), timeline: r.get::<_, i32>(2) as u32 });
    Ok(Probe::Standby { receiver })
}

/// Every member, concurrently, each bounded to 3 s.
pub async fn probe_all(ep: &Endpoints) -> Probes {
    let tasks: Vec<_> = ep
        .hosts
        .iter()
        .map(|(name, ip)| {
            let (ep, name, ip) = (ep.clone(), name.clone(), ip.clone());
            tokio::spawn(async move {
                let p = match tokio::time::timeout(Duration::from_secs(3), probe_one(&ep, &ip)).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => Probe::Down(format!("{e:#}")),
                    Err(_) => Probe::Down("no answer within 3 s".into()),
                };
                (name, p)
            })
        })
        .collect();
    let mut out = Probes::new();
    for t in tasks {
        if let Ok((name, p)) = t.await {
            out.insert(name, p);
        }
    }
    out
}

/// The primary if the members have converged, else why not.
pub fn converged(ep: &Endpoints, probes: &Probes) -> Result<String, String> {
    let primaries: Vec<(&String, u32)> = probes
        .iter()
        .filter_map(|(n, p)| match p {
            Probe::Primary { timeline } => Some((n, *timeline)),
            _ => None,
        })
        .collect();
    let [(primary, timeline)] = primaries[..] else {
        let names: Vec<&str> = primaries.iter().map(|(n, _)| n.as_str()).collect();
        return Err(format!("{} primaries {names:?}", primaries.len()));
    };
    let primary_ip = ep.ip(primary).unwrap_or_default();
    for (name, _) in &ep.hosts {
        if name == primary {
            continue;
        }
        if let Some(why) = not_following(probes.get(name), primary, primary_ip, timeline) {
            return Err(format!("{name} {why}"));
        }
    }
    Ok(primary.clone())
}

/// Why `probe` is not a standby streaming from `primary` on `timeline` (None: it is).
pub fn not_following(probe: Option<&Probe>, primary: &str, primary_ip: &str, timeline: u32) -> Option<String> {
    match probe {
        None => Some("was not probed".into()),
        Some(Probe::Down(e)) => Some(format!("is down ({e})")),
        Some(Probe::Primary { .. }) => Some("is a primary".into()),
        Some(Probe::Standby { receiver: None }) => Some("has no WAL receiver".into()),
        Some(Probe::Standby { receiver: Some(r) }) if r.status != "streaming" => {
            Some(format!("WAL receiver is {}", r.status))
        }
        Some(Probe::Standby { receiver: Some(r) }) if r.sender != primary_ip => {
            Some(format!("streams from {} instead of {primary} ({primary_ip})", r.sender))
        }
        Some(Probe::Standby { receiver: Some(r) }) if r.timeline != timeline => {
            Some(format!("streams timeline {} instead of {timeline}", r.timeline))
        }
        Some(_) => None,
    }
}

/// One line per member, for reports.
pub fn describe(ep: &Endpoints, probes: &Probes) -> String {
    probes
        .iter()
        .map(|(name, p)| {
            let what = match p {
                Probe::Down(e) => format!("down: {e}"),
                Probe::Primary { timeline } => format!("primary, timeline {timeline}"),
                Probe::Standby { receiver: None } => "standby, no WAL receiver".into(),
                Probe::Standby { receiver: Some(r) } => format!(
                    "standby, {} from {} ({}), timeline {}",
                    r.status,
                    ep.name_of(&r.sender).unwrap_or("?"),
                    r.sender,
                    r.timeline
                ),
            };
            format!("{name}: {what}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}
