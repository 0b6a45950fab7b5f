//! Where a backup runs (`[backup] run_on`): on the primary, or on the best streaming standby
//! reading from the primary through its pgBackRest TLS server; which standbys qualify, and
//! when a backup on a standby that went silent moves.

use serde::{Deserialize, Serialize};

/// Where backups run (`[backup] run_on`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RunOn {
    #[default]
    Primary,
    /// On the best streaming standby, with the primary reached through its pgBackRest TLS server
    /// (`backup-standby=y`); on the primary when no standby qualifies.
    Standby,
}

/// What another member's pgBackRest needs to reach this member's PostgreSQL through this
/// member's pgBackRest TLS server: reported by members that serve it (`run_on = "standby"`).
/// The paths are as they are on this member's host (`pg1-path`, `pg1-socket-path`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSource {
    /// The name its certificate carries (`pg1-host`; pgBackRest 2.45 checks DNS names only).
    pub host: String,
    /// Its TLS server's port (`pg1-host-port`).
    pub port: u16,
    pub data_dir: String,
    pub pg_port: u16,
    pub socket_dir: String,
    pub user: String,
}

/// Where the coordinator puts a backup: the member that runs it, and for a standby the primary
/// it reads from; `note` says why a backup meant for a standby runs on the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub member: String,
    pub source: Option<BackupSource>,
    pub note: Option<String>,
}

/// Place a backup: on the primary, or with [`RunOn::Standby`] on the first of `standbys` (best
/// first, see [`backup_standbys`]) other than `avoid` (the standby a retry moves away from),
/// reading from the primary through `source`. On the primary, with a note, when no standby
/// qualifies or the primary's TLS server is not known.
pub fn place(
    run_on: RunOn,
    primary: &str,
    standbys: &[&str],
    source: Option<&BackupSource>,
    avoid: Option<&str>,
) -> Placement {
    let on_primary = |note: Option<String>| Placement { member: primary.to_string(), source: None, note };
    if run_on == RunOn::Primary {
        return on_primary(None);
    }
    let Some(source) = source else {
        return on_primary(Some("the primary reports no pgBackRest TLS server".into()));
    };
    match standbys.iter().find(|s| Some(**s) != avoid && **s != primary) {
        Some(s) => Placement { member: s.to_string(), source: Some(source.clone()), note: None },
        None => on_primary(Some("no streaming standby with a fresh report and a pgBackRest TLS server".into())),
    }
}

/// The standbys a backup may run on, best first: PostgreSQL members other than the primary whose
/// report is current (`fresh`), running in recovery and streaming, replay not paused, not
/// needing a rejoin, and serving pgBackRest's TLS server. `nofailover` does not exclude: a
/// backup promotes nothing, and a replica kept out of failovers is the usual place to offload
/// backups. Lag does not exclude either (a standby under write load lags a little, and
/// pgBackRest waits for its replay to reach the backup's start, up to `archive-timeout`); it
/// ranks, as every choice of a member does ([`crate::candidate::rank`]): most WAL replayed (the
/// least lag) first, then `priority`, then name.
pub fn backup_standbys<'a>(
    state: &crate::ClusterState,
    reports: impl IntoIterator<Item = (&'a crate::HealthReport, bool)>,
) -> Vec<&'a str> {
    let mut ok: Vec<&crate::HealthReport> = reports
        .into_iter()
        .filter(|(r, fresh)| {
            *fresh
                && !state.is_primary(&r.member)
                && r.kind == crate::MemberKind::Postgres
                && state.members.get(&r.member).is_some_and(|m| m.kind == crate::MemberKind::Postgres)
                && r.backup_source.is_some()
                && r.pg.running
                && r.pg.in_recovery
                && r.pg.streaming
                && !r.pg.replay_paused
                && !r.pg.needs_rejoin
                && r.pg.data_dir == crate::DataDir::Standby
        })
        .map(|(r, _)| r)
        .collect();
    crate::candidate::rank(&mut ok, |r| (0, r.pg.replay_lsn));
    ok.into_iter().map(|r| r.member.as_str()).collect()
}

/// What the coordinator knows of the members' reports for backups at `now`.
pub(crate) struct Seen<'a> {
    pub backup_standbys: Vec<&'a str>,
    pub source: Option<&'a BackupSource>,
    pub gone: Vec<&'a str>,
}

impl crate::Coordinator {
    pub(crate) fn backup_seen<'a>(&'a self, now: std::time::Instant, state: &'a crate::ClusterState) -> Seen<'a> {
        let t = &self.timings;
        let primary = state.primary.as_deref().and_then(|p| self.reports.get(p));
        let fresh = |at: std::time::Instant| now.saturating_duration_since(at) <= t.report_timeout;
        let source = primary.filter(|r| fresh(r.at)).and_then(|r| r.report.backup_source.as_ref());
        let backup_standbys = backup_standbys(state, self.reports.values().map(|r| (&r.report, fresh(r.at))));
        // A standby's runner kills its backup once its reports went unacknowledged for
        // `report_timeout`; the coordinator moves the backup only after it has heard nothing for
        // longer than that plus `lease_timeout`, and only once it has led that long itself (a new
        // coordinator has no reports yet).
        let silence = t.report_timeout + t.lease_timeout;
        let led_long_enough = self.leader_for(now).is_some_and(|d| d > silence);
        let gone = state
            .members
            .iter()
            .filter(|(name, m)| {
                m.kind == crate::MemberKind::Postgres && led_long_enough && {
                    self.reports.get(*name).is_none_or(|r| now.saturating_duration_since(r.at) > silence)
                }
            })
            .map(|(name, _)| name.as_str())
            .collect();
        Seen { backup_standbys, source, gone }
    }

    /// Where a backup requested now would run (None: no primary, or not the coordinator's
    /// policy). The operator's `POST /backup` places it as the schedule does.
    pub fn backup_placement(&self, now: std::time::Instant, state: &crate::ClusterState) -> Option<Placement> {
        let primary = state.primary.as_deref()?;
        let run_on = self.backups.as_ref().map_or(RunOn::Primary, |p| p.run_on);
        let seen = self.backup_seen(now, state);
        Some(place(run_on, primary, &seen.backup_standbys, seen.source, None))
    }
}
