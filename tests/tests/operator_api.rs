//! The operators' role-change endpoints and CLI verbs on real three-member clusters: tokens (401),
//! malformed bodies (400), unknown members (404) and impossible requests (409) change nothing;
//! `pgvigil switchover | failover | failback | reinit` against a running cluster.

use std::time::Duration;
use vigil_core::EventKind;
use vigil_tests::{healthy, TestCluster, View};

const CONVERGE: Duration = Duration::from_secs(60);

fn settled(v: &View, primary: &str, epoch: u64) -> bool {
    healthy(v) && v.state.primary.as_deref() == Some(primary) && v.state.epoch == epoch && v.state.switchover.is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_change_requests_are_refused_with_401_400_404_409_and_change_nothing() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let v = t.view().await?;
    let primary = v.state.primary.clone().expect("primary");
    let standby = t.other_pg_members(&primary).remove(0);
    let token = t.token();
    let members: Vec<String> = t.spec().members.iter().map(|m| m.name.clone()).collect();
    let valid: [(&str, &str, String); 5] = [
        ("POST", "/switchover", format!(r#"{{"candidate": "{standby}"}}"#)),
        ("POST", "/failover", format!(r#"{{"candidate": "{standby}"}}"#)),
        ("POST", "/failback", "{}".to_string()),
        ("POST", "/reinit", format!(r#"{{"member": "{standby}"}}"#)),
        ("DELETE", "/switchover", String::new()),
    ];
    // 401: no token or a wrong one, on every member.
    for (method, path, body) in &valid {
        for m in &members {
            for tok in [None, Some("not-the-token")] {
                let r = t.http(m, method, path, tok, Some(body)).await?;
                assert_eq!(r.status, 401, "{method} {path} on {m} with {tok:?}: {r:?}");
                assert_eq!(r.json["status"], "error", "{r:?}");
            }
        }
    }
    // 400: malformed bodies, with the reason.
    let bad: [(&str, &str, &str); 8] = [
        ("/switchover", "{not json", "malformed body"),
        ("/switchover", r#"{"canditate": "x"}"#, "canditate"),
        ("/switchover", r#"{"candidate": "x", "at": "tomorrow"}"#, "RFC 3339"),
        ("/switchover", r#"{"candidate": "x", "at": "2001-01-01T00:00:00Z"}"#, "in the past"),
        ("/failover", "", "missing field `candidate`"),
        ("/failover", r#"{"candidate": ""}"#, "must not be empty"),
        ("/reinit", r#"{"member": 5}"#, "malformed body"),
        ("/failback", r#"{"at": "soon"}"#, "RFC 3339"),
    ];
    for (path, body, why) in bad {
        for m in [&primary, &standby] {
            let r = t.http(m, "POST", path, Some(&token), Some(body)).await?;
            assert_eq!(r.status, 400, "POST {path} {body} on {m}: {r:?}");
            assert!(r.message().contains(why), "POST {path} {body}: {r:?}");
        }
    }
    // 404: unknown members, and nothing to cancel.
    for (path, body) in [
        ("/switchover", r#"{"candidate": "nobody"}"#),
        ("/failover", r#"{"candidate": "nobody"}"#),
        ("/reinit", r#"{"member": "nobody"}"#),
    ] {
        let r = t.http(&standby, "POST", path, Some(&token), Some(body)).await?;
        assert_eq!(r.status, 404, "POST {path} {body}: {r:?}");
        assert!(r.message().contains("nobody"), "{r:?}");
    }
    let r = t.http(&primary, "DELETE", "/switchover", Some(&token), None).await?;
    assert_eq!(r.status, 404, "{r:?}");
    // 409: requests that cannot be carried out now.
    for (path, body, why) in [
        ("/switchover", format!(r#"{{"candidate": "{primary}"}}"#), "already the primary".to_string()),
        ("/failover", format!(r#"{{"candidate": "{primary}"}}"#), "already the primary".to_string()),
        ("/reinit", format!(r#"{{"member": "{primary}"}}"#), "only a standby".to_string()),
        ("/failback", "{}".to_string(), "no preferred_primary".to_string()),
        (
            "/switchover",
            format!(r#"{{"candidate": "{standby}", "primary": "{standby}"}}"#),
            format!("the primary is {primary}"),
        ),
    ] {
        let r = t.http(&standby, "POST", path, Some(&token), Some(&body)).await?;
        assert_eq!(r.status, 409, "POST {path} {body}: {r:?}");
        assert!(r.message().contains(&why), "POST {path} {body}: {r:?}");
    }
    // Nothing changed.
    let after = t.view().await?;
    assert_eq!((after.state.epoch, after.state.primary.as_deref()), (1, Some(primary.as_str())));
    assert!(after.state.switchover.is_none() && after.state.reinit.is_empty());
    assert_eq!(after.state.requests, 0);
    assert!(!after.state.history.iter().any(|e| e.kind == EventKind::Requested));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_switchover_failover_failback_reinit() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let first = t.primary().await?;
    let mut standbys = t.other_pg_members(&first);
    standbys.sort();
    let (a, b) = (standbys[0].clone(), standbys[1].clone());
    let api = t.api(&b);
    let token = t.token();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    // The token from a file, never in the command line.
    let token_dir = tempfile::tempdir()?;
    let token_file = token_dir.path().join("token").display().to_string();
    std::fs::write(&token_file, format!("{token}\n"))?;
    let with = |verb: &[&str]| {
        let mut v: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
        v.extend(["--endpoint".into(), api.clone(), "--token-file".into(), token_file.clone()]);
        v
    };
    let run = |args: Vec<String>, stdin: &'static str| {
        let t = &t;
        async move { t.cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), stdin).await }
    };

    // It asks; "n" changes nothing.
    let out = run(with(&["switchover", "--candidate", &a]), "n\n").await?;
    assert!(!out.status.success() && err(&out).contains("no switchover"), "{}", err(&out));
    assert_eq!(t.primary().await?, first);

    // switchover, with the answer as JSON.
    let out = run(with(&["switchover", "--candidate", &a, "--force", "-o", "json"]), "").await?;
    assert!(out.status.success(), "{}", err(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((answer["status"].as_str(), answer["primary"].as_str()), (Some("ok"), Some(a.as_str())), "{answer}");
    t.wait_for("a primary", CONVERGE, |v| settled(v, &a, 2)).await?;

    // failback: to the primary before the last change.
    let out = run(with(&["failback"]), "y\n").await?;
    assert!(out.status.success(), "{}", err(&out));
    assert!(text(&out).contains(&format!("switched over from {a} to {first}")), "{}", text(&out));
    t.wait_for("the first primary back", CONVERGE, |v| settled(v, &first, 3)).await?;

    // failover (forced, here on a healthy primary: its lease is withheld and waited out).
    let out = run(with(&["failover", "--candidate", &b, "--force"]), "").await?;
    assert!(out.status.success(), "{}", err(&out));
    assert!(text(&out).contains(&format!("failed over from {first} to {b}")), "{}", text(&out));
    t.wait_for("b primary", CONVERGE, |v| settled(v, &b, 4)).await?;

    // reinit of a standby; of the primary: refused (exit code 1, the server's reason).
    let out = run(with(&["reinit", &a, "--force"]), "").await?;
    assert!(out.status.success(), "{}", err(&out));
    assert!(text(&out).contains(&format!("{a} re-initialised")), "{}", text(&out));
    let out = run(with(&["reinit", &b, "--force"]), "").await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(err(&out).contains("409") && err(&out).contains("only a standby"), "{}", err(&out));
    let out = run(with(&["switchover", "--cancel", "--force"]), "").await?;
    assert!(!out.status.success() && err(&out).contains("404"), "{}", err(&out));

    let v = t.wait_for("everyone streaming", CONVERGE, |v| settled(v, &b, 4)).await?;
    let kinds: Vec<EventKind> = v.state.history.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Switchover).count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Failover).count(), 1, "{kinds:?}");
    assert!(kinds.contains(&EventKind::Reclone), "{kinds:?}");
    let out = run(vec!["list".into(), "--endpoint".into(), api.clone()], "").await?;
    assert!(text(&out).contains("epoch 4") && !text(&out).contains("Pending"), "{}", text(&out));
    Ok(())
}
