//! Conversions between the peer protocol's messages and the core's types.

use std::time::Duration;
use vigil_core::report::{BootstrapFailure, RejoinMethod, RejoinRecord, ReplicaStatus, SwitchoverStop};
use vigil_core::{DataDir, HealthReport, MemberKind, PgStatus};
use vigil_raft::proto;

pub fn kind_name(k: MemberKind) -> &'static str {
    match k {
        MemberKind::Postgres => "postgres",
        MemberKind::Witness => "witness",
    }
}

fn data_dir_name(d: DataDir) -> &'static str {
    match d {
        DataDir::Unknown => "unknown",
        DataDir::Empty => "empty",
        DataDir::Primary => "primary",
        DataDir::Standby => "standby",
        DataDir::Foreign => "foreign",
    }
}

pub fn to_proto(r: &HealthReport) -> proto::HealthReport {
    let p = &r.pg;
    proto::HealthReport {
        member: r.member.clone(),
        kind: kind_name(r.kind).into(),
        pg_host: r.pg_host.clone(),
        pg_port: u32::from(r.pg_port),
        nofailover: r.nofailover,
        priority: r.priority,
        noloadbalance: r.noloadbalance,
        pg: Some(proto::PgState {
            running: p.running,
            in_recovery: p.in_recovery,
            timeline: p.timeline,
            current_lsn: p.current_lsn,
            received_lsn: p.received_lsn,
            replay_lsn: p.replay_lsn,
            data_dir: data_dir_name(p.data_dir).into(),
            needs_rejoin: p.needs_rejoin,
            streaming: p.streaming,
            down_for_ms: u64::try_from(p.down_for.as_millis()).unwrap_or(u64::MAX),
            unresponsive: p.unresponsive,
            replicas: p
                .replicas
                .iter()
                .map(|r| proto::ReplicaState {
                    member: r.member.clone(),
                    flush_lsn: r.flush_lsn,
                    streaming: r.streaming,
                })
                .collect(),
            sync_names: p.sync_names.iter().flatten().cloned().collect(),
            sync_names_known: p.sync_names.is_some(),
            last_rejoin: p.last_rejoin.as_ref().map(|r| proto::RejoinRecord {
                started_unix_ms: r.started_unix_ms,
                method: match r.method {
                    RejoinMethod::Rewind => "rewind".into(),
                    RejoinMethod::Reclone => "reclone".into(),
                },
                ok: r.ok,
                took_ms: r.took_ms,
                detail: r.detail.clone(),
                reinit_id: r.reinit.unwrap_or(0),
            }),
            switchover_stop: p.switchover_stop.as_ref().map(|s| proto::SwitchoverStop {
                epoch: s.epoch,
                id: s.id,
                lsn: s.lsn,
                timeline: s.timeline,
            }),
            data_dir_problem: p.data_dir_problem.clone().unwrap_or_default(),
            bootstrap_failed: p
                .bootstrap_failed
                .as_ref()
                .map(|f| proto::BootstrapFailure { epoch: f.epoch, error: f.error.clone() }),
            replay_paused: p.replay_paused,
        }),
        epoch_seen: r.epoch_seen,
    }
}

/// A report from the network; a malformed one is refused with the reason.
pub fn from_proto(r: proto::HealthReport) -> Result<HealthReport, String> {
    let kind = match r.kind.as_str() {
        "postgres" => MemberKind::Postgres,
        "witness" => MemberKind::Witness,
        other => return Err(format!("unknown member kind {other:?}")),
    };
    let pg_port = u16::try_from(r.pg_port).map_err(|_| format!("bad pg_port {}", r.pg_port))?;
    let p = r.pg.unwrap_or_default();
    let data_dir = match p.data_dir.as_str() {
        "empty" => DataDir::Empty,
        "primary" => DataDir::Primary,
        "standby" => DataDir::Standby,
        "foreign" => DataDir::Foreign,
        _ => DataDir::Unknown,
    };
    Ok(HealthReport {
        member: r.member,
        kind,
        pg_host: r.pg_host,
        pg_port,
        nofailover: r.nofailover,
        priority: r.priority,
        noloadbalance: r.noloadbalance,
        pg: PgStatus {
            running: p.running,
            in_recovery: p.in_recovery,
            timeline: p.timeline,
            current_lsn: p.current_lsn,
            received_lsn: p.received_lsn,
            replay_lsn: p.replay_lsn,
            data_dir,
            needs_rejoin: p.needs_rejoin,
            streaming: p.streaming,
            down_for: Duration::from_millis(p.down_for_ms),
            unresponsive: p.unresponsive,
            replicas: p
                .replicas
                .into_iter()
                .map(|r| ReplicaStatus { member: r.member, flush_lsn: r.flush_lsn, streaming: r.streaming })
                .collect(),
            sync_names: p.sync_names_known.then(|| p.sync_names.into_iter().collect()),
            last_rejoin: match p.last_rejoin {
                None => None,
                Some(r) => Some(RejoinRecord {
                    started_unix_ms: r.started_unix_ms,
                    method: match r.method.as_str() {
                        "rewind" => RejoinMethod::Rewind,
                        "reclone" => RejoinMethod::Reclone,
                        other => return Err(format!("unknown rejoin method {other:?}")),
                    },
                    ok: r.ok,
                    took_ms: r.took_ms,
                    detail: r.detail,
                    reinit: Some(r.reinit_id).filter(|id| *id != 0),
                }),
            },
            switchover_stop: p.switchover_stop.map(|s| SwitchoverStop {
                epoch: s.epoch,
                id: s.id,
                lsn: s.lsn,
                timeline: s.timeline,
            }),
            data_dir_problem: Some(p.data_dir_problem).filter(|w| !w.is_empty()),
            bootstrap_failed: p.bootstrap_failed.map(|f| BootstrapFailure { epoch: f.epoch, error: f.error }),
            replay_paused: p.replay_paused,
        },
        epoch_seen: r.epoch_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_roundtrip() {
        let r = HealthReport {
            member: "a".into(),
            kind: MemberKind::Postgres,
            pg_host: "10.0.0.1".into(),
            pg_port: 5432,
            nofailover: true,
            priority: 3,
            noloadbalance: true,
            pg: PgStatus {
                running: true,
                in_recovery: true,
                timeline: 2,
                current_lsn: 0,
                received_lsn: 99,
                replay_lsn: 98,
                data_dir: DataDir::Standby,
                needs_rejoin: false,
                streaming: true,
                down_for: Duration::from_millis(1500),
                unresponsive: true,
                replicas: vec![ReplicaStatus { member: "b".into(), flush_lsn: 5, streaming: true }],
                sync_names: Some(["b".to_string()].into()),
                last_rejoin: Some(RejoinRecord {
                    started_unix_ms: 1,
                    method: RejoinMethod::Reclone,
                    ok: false,
                    took_ms: 2,
                    detail: "x".into(),
                    reinit: Some(4),
                }),
                switchover_stop: Some(SwitchoverStop { epoch: 3, id: 4, lsn: 5, timeline: 6 }),
                data_dir_problem: Some("found: x".into()),
                bootstrap_failed: Some(BootstrapFailure { epoch: 1, error: "initdb: exit 1".into() }),
                replay_paused: true,
            },
            epoch_seen: 7,
        };
        assert_eq!(from_proto(to_proto(&r)), Ok(r.clone()));
        let mut unknown = r;
        unknown.pg.sync_names = None;
        unknown.pg.last_rejoin = None;
        unknown.pg.switchover_stop = None;
        unknown.pg.data_dir_problem = None;
        unknown.pg.bootstrap_failed = None;
        assert_eq!(from_proto(to_proto(&unknown)), Ok(unknown));
    }

    #[test]
    fn malformed_reports_are_refused() {
        let mut p = to_proto(&HealthReport {
            member: "a".into(),
            kind: MemberKind::Witness,
            pg_host: String::new(),
            pg_port: 0,
            nofailover: false,
            priority: 0,
            noloadbalance: false,
            pg: PgStatus::default(),
            epoch_seen: 0,
        });
        p.pg_port = 70_000;
        assert!(from_proto(p.clone()).is_err());
        p.pg_port = 1;
        p.kind = "mainframe".into();
        assert!(from_proto(p).is_err());
    }
}
