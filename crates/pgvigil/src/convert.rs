//! The peer protocol's payloads that are core types: a health report and the proxies' part of
//! the coordinator's answer travel as JSON of `vigil_core`'s own types (see `proto/vigil.proto`),
//! so there is one definition of each.

use vigil_core::proxy::ProxyAnswer;
use vigil_core::{HealthReport, MemberKind};

pub fn kind_name(k: MemberKind) -> &'static str {
    match k {
        MemberKind::Postgres => "postgres",
        MemberKind::Witness => "witness",
    }
}

pub fn encode_report(r: &HealthReport) -> serde_json::Result<String> {
    serde_json::to_string(r)
}

/// A report from the network; a malformed one is refused with the reason.
pub fn decode_report(json: &str) -> Result<HealthReport, String> {
    let r: HealthReport = serde_json::from_str(json).map_err(|e| format!("malformed report: {e}"))?;
    if r.member.is_empty() {
        return Err("a report names no member".into());
    }
    Ok(r)
}

pub fn encode_proxy(a: &ProxyAnswer) -> serde_json::Result<String> {
    serde_json::to_string(a)
}

/// The proxies' part of an answer; empty (an answer from a coordinator that is not one) is none.
pub fn decode_proxy(json: &str) -> Result<Option<ProxyAnswer>, String> {
    if json.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(json).map(Some).map_err(|e| format!("malformed proxy answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vigil_core::proxy::StandbyView;
    use vigil_core::report::{BootstrapFailure, RejoinMethod, RejoinRecord, ReplicaStatus, SwitchoverStop};
    use vigil_core::{DataDir, PgStatus, Tags};

    fn full() -> HealthReport {
        HealthReport {
            member: "a".into(),
            kind: MemberKind::Postgres,
            pg_host: "10.0.0.1".into(),
            pg_port: 5432,
            tags: Tags::new().with("nofailover", true).with("priority", 3).with("zone", "b"),
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
            proxy: None,
            backup_source: None,
        }
    }

    #[test]
    fn reports_roundtrip() {
        let r = full();
        assert_eq!(decode_report(&encode_report(&r).expect("encodes")), Ok(r.clone()));
        let mut unknown = r;
        unknown.pg = PgStatus::default();
        unknown.tags = Tags::new();
        assert_eq!(decode_report(&encode_report(&unknown).expect("encodes")), Ok(unknown));
    }

    #[test]
    fn malformed_reports_are_refused_with_the_reason() {
        let json = encode_report(&full()).expect("encodes");
        for (bad, why) in [
            (json.replace("5432", "70000"), "invalid value"),
            (json.replace("\"postgres\"", "\"mainframe\""), "unknown variant"),
            (json.replace("\"member\":\"a\"", "\"member\":\"\""), "names no member"),
            (json[..json.len() - 1].to_string(), "EOF"),
        ] {
            let e = decode_report(&bad).expect_err("refused");
            assert!(e.contains(why), "{e}");
        }
        // A field this version does not know (sent by a newer one) is ignored.
        let newer = json.replacen('{', "{\"from_the_future\":1,", 1);
        assert_eq!(decode_report(&newer), Ok(full()));
    }

    #[test]
    fn proxy_answers_roundtrip() {
        let a = ProxyAnswer {
            lease_left: Duration::from_millis(2500),
            primary_writable: true,
            standbys: vec![StandbyView { member: "b".into(), streaming: true, replay_lsn: 9, ..Default::default() }],
        };
        assert_eq!(decode_proxy(&encode_proxy(&a).expect("encodes")), Ok(Some(a)));
        assert_eq!(decode_proxy(""), Ok(None));
        assert!(decode_proxy("{").is_err());
    }
}
