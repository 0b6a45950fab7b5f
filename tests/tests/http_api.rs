//! The HTTP API and the CLI on real three-member clusters: health checks on the primary, the
//! standbys, a paused member and a fenced one; the read endpoints; tokens and malformed requests;
//! metrics; pause stopping automatic failover; HAProxy following the primary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vigil_tests::{new_primary_writable, ClusterView, Reply, TestCluster, View};

const CONVERGE: Duration = Duration::from_secs(60);

/// `name{labels} value` lines of a Prometheus text answer, keyed by `name{labels}`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no metric {key} in {m:?}"))
}

fn status_of(r: &Reply) -> (u16, String) {
    (r.status, r.message())
}

async fn cluster_view(t: &TestCluster, member: &str) -> anyhow::Result<ClusterView> {
    let r = t.get(member, "/cluster").await?;
    anyhow::ensure!(r.status == 200, "GET /cluster on {member}: {r:?}");
    Ok(serde_json::from_value(r.json)?)
}

/// `GET /cluster` on `member` once every member's report is in it (reports live in the
/// coordinator's memory, so a view taken right after a leader change has none for a moment).
async fn reported_cluster_view(t: &TestCluster, member: &str) -> anyhow::Result<ClusterView> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = cluster_view(t, member).await?;
        if c.members.iter().all(|r| r.state != "no report") || Instant::now() >= deadline {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn coordinator_other_than(v: &View, not: &str) -> bool {
    !v.coordinator.is_empty() && v.coordinator != not
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_read_endpoints_tokens_and_metrics() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let v = t
        .wait_for("a coordinator off the primary", CONVERGE, |v| {
            v.state.primary.as_deref().is_some_and(|p| coordinator_other_than(v, p))
        })
        .await?;
    let primary = v.state.primary.clone().expect("primary");
    let standbys = t.other_pg_members(&primary);
    t.execute(&primary, "CREATE TABLE items (id int); INSERT INTO items SELECT generate_series(1, 100)").await?;

    // The primary.
    t.wait_http(&primary, "/primary", 200, CONVERGE).await?;
    for path in ["/", "/read-write", "/read-only", "/health", "/liveness", "/readiness"] {
        assert_eq!(t.get(&primary, path).await?.status, 200, "{path} on the primary");
    }
    for path in ["/replica", "/sync", "/async"] {
        assert_eq!(t.get(&primary, path).await?.status, 503, "{path} on the primary");
    }
    let r = t.http(&primary, "OPTIONS", "/primary", None, None).await?;
    assert_eq!(r.status, 200, "OPTIONS, as some load balancers send");
    let r = t.http(&primary, "HEAD", "/primary", None, None).await?;
    assert_eq!(r.status, 200);
    let body = t.get(&primary, "/primary").await?.json;
    assert_eq!((body["role"].as_str(), body["epoch"].as_u64()), (Some("primary"), Some(1)), "{body}");

    // The standbys: asynchronous replicas, caught up once the coordinator has told them where the
    // primary is.
    for s in &standbys {
        t.wait_http(s, "/replica?lag=1MB", 200, CONVERGE).await?;
        for path in ["/replica", "/read-only", "/async", "/health", "/liveness", "/readiness"] {
            assert_eq!(t.get(s, path).await?.status, 200, "{path} on {s}");
        }
        for path in ["/primary", "/", "/read-write"] {
            let r = t.get(s, path).await?;
            assert_eq!(r.status, 503, "{path} on {s}");
            assert!(r.message().contains(&primary), "{path} names the primary: {r:?}");
        }
        let r = t.get(s, "/sync").await?;
        assert_eq!((r.status, r.message()), (503, "not a synchronous standby".to_string()));
        assert_eq!(t.get(s, "/replica?tag_nofailover=false&tag_priority=0").await?.status, 200);
        assert_eq!(t.get(s, "/replica?tag_nofailover=true").await?.status, 503);
        assert_eq!(t.get(s, "/replica?tag_datacenter=east").await?.status, 503);
        assert_eq!(t.get(s, "/replica?replication_state=streaming").await?.status, 200);
    }

    // Malformed requests: 400 with the reason; unknown things: 404.
    let r = t.get(&standbys[0], "/replica?lag=lots").await?;
    assert_eq!(r.status, 400);
    assert!(r.message().contains("lag"), "{r:?}");
    let r = t.get(&primary, "/cluster/nobody").await?;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(t.get(&primary, "/no/such/endpoint").await?.status, 404);

    // The cluster view, the same through every member (non-coordinators ask the coordinator).
    for m in t.spec().members.iter().map(|m| m.name.clone()) {
        let c = reported_cluster_view(&t, &m).await?;
        assert_eq!((c.epoch, c.primary.as_deref(), c.paused), (1, Some(primary.as_str()), false), "via {m}");
        assert_eq!(c.coordinator.as_deref(), Some(v.coordinator.as_str()), "via {m}");
        assert_eq!(c.members.len(), 3);
        for row in &c.members {
            let expected = if row.name == primary { ("primary", "running") } else { ("replica", "streaming") };
            assert_eq!((row.role.as_str(), row.state.as_str()), expected, "{row:?} via {m}");
            assert_eq!(row.timeline, Some(1));
            assert!(row.lsn.is_some_and(|l| l > 0));
        }
    }
    let r = t.get(&primary, &format!("/cluster/{}", standbys[0])).await?;
    assert_eq!((r.status, r.json["role"].as_str()), (200, Some("replica")), "{r:?}");
    let history = t.get(&standbys[1], "/history").await?;
    assert!(history.json.as_array().is_some_and(|h| h.iter().any(|e| e["kind"] == "bootstrap")), "{history:?}");

    // The effective config, secrets redacted.
    let r = t.get(&primary, "/config").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["api"]["token"], "<redacted>");
    assert_eq!(r.json["postgres"]["replication_password"], "<redacted>");
    assert_eq!(r.json["name"], primary.as_str());
    assert!(r.json["timing"]["lease_timeout"].is_string(), "{}", r.text);
    assert!(!r.text.contains(&t.token()) && !r.text.contains("replication-secret"), "{}", r.text);

    // Mutating requests: no token or a wrong one is 401 and changes nothing; a bad body is 400.
    let r = t.http(&standbys[0], "POST", "/pause", None, None).await?;
    assert_eq!(status_of(&r).0, 401, "{r:?}");
    let r = t.http(&standbys[0], "POST", "/pause", Some("not-the-token"), None).await?;
    assert_eq!(status_of(&r).0, 401, "{r:?}");
    let r = t.http(&standbys[0], "POST", "/pause", Some(&t.token()), Some("{not json")).await?;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.message().contains("malformed body"), "{r:?}");
    let r = t.http(&primary, "GET", "/pause", Some(&t.token()), None).await?;
    assert_eq!(r.status, 405, "only POST changes anything");
    assert!(!cluster_view(&t, &primary).await?.paused, "nothing changed");

    // Pause through a member that is not the coordinator (forwarded), resume through another.
    let not_coordinator = t.spec().members.iter().map(|m| m.name.clone()).find(|m| *m != v.coordinator);
    let not_coordinator = not_coordinator.expect("three members");
    let body = r#"{"reason": "kernel upgrade"}"#;
    let r = t.http(&not_coordinator, "POST", "/pause", Some(&t.token()), Some(body)).await?;
    assert_eq!((r.status, r.json["paused"].as_bool()), (200, Some(true)), "{r:?}");
    assert_eq!(r.json["forwarded_to"].as_str(), Some(v.coordinator.as_str()), "{r:?}");
    for m in t.spec().members.iter().map(|m| m.name.clone()) {
        assert!(cluster_view(&t, &m).await?.paused, "paused as seen by {m}");
    }
    let events = t.get(&primary, "/history").await?.json;
    let last = events.as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    assert_eq!(
        (last["kind"].as_str(), last["detail"].as_str()),
        (Some("paused"), Some("automatic failover off: kernel upgrade"))
    );
    // Paused, the primary still answers /primary: nothing happened to it.
    assert_eq!(t.get(&primary, "/primary").await?.status, 200);

    // Metrics.
    let r = t.get(&primary, "/metrics").await?;
    assert_eq!(r.status, 200);
    let m = parse_metrics(&r.text);
    assert_eq!(metric(&m, "pgvigil_role{role=\"primary\"}"), 1.0);
    assert_eq!(metric(&m, "pgvigil_role{role=\"replica\"}"), 0.0);
    assert_eq!(metric(&m, "pgvigil_epoch"), 1.0);
    assert_eq!(metric(&m, "pgvigil_timeline"), 1.0);
    assert!(metric(&m, "pgvigil_raft_term") >= 1.0);
    assert_eq!(metric(&m, "pgvigil_raft_is_leader"), 0.0, "the coordinator moved off the primary");
    assert!(metric(&m, "pgvigil_lease_remaining_seconds") > 0.0);
    assert_eq!(metric(&m, "pgvigil_fenced"), 0.0);
    assert_eq!(metric(&m, "pgvigil_paused"), 1.0);
    assert_eq!(metric(&m, "pgvigil_failovers_total"), 0.0);
    assert_eq!(metric(&m, "pgvigil_switchovers_total"), 0.0);
    assert!(metric(&m, "pgvigil_health_check_duration_seconds_count") > 0.0);
    assert!(m.keys().any(|k| k.starts_with("pgvigil_health_check_duration_seconds_bucket{le=")), "a histogram");
    assert!(r.text.contains("# TYPE pgvigil_failovers_total counter"), "{}", r.text);
    let m = parse_metrics(&t.get(&standbys[0], "/metrics").await?.text);
    assert_eq!(metric(&m, "pgvigil_role{role=\"replica\"}"), 1.0);
    assert!(metric(&m, &format!("pgvigil_replication_lag_bytes{{member=\"{}\"}}", standbys[0])) < 1048576.0);
    assert_eq!(metric(&m, "pgvigil_lease_remaining_seconds"), 0.0);
    let m = parse_metrics(&t.get(&v.coordinator, "/metrics").await?.text);
    assert_eq!(metric(&m, "pgvigil_raft_is_leader"), 1.0);

    let r = t.http(&standbys[1], "POST", "/resume", Some(&t.token()), None).await?;
    assert_eq!((r.status, r.json["paused"].as_bool()), (200, Some(false)), "{r:?}");
    let r = t.http(&standbys[1], "POST", "/resume", Some(&t.token()), None).await?;
    assert_eq!((r.status, r.message()), (200, "not paused".to_string()), "idempotent");

    // Every log line carries the member and the epoch.
    let log = std::fs::read_to_string(t.spec().state_dir(&primary).join("pgvigil.log"))?;
    assert!(log.contains(&format!("member={primary} epoch=1")), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_verbs_over_http() -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let primary = t.primary().await?;
    let standby = t.other_pg_members(&primary).remove(0);
    let api = t.api(&standby);
    let token = t.token();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // Reports live in the coordinator's memory: right after a Raft leader change the table says
    // "no report" until each member reported again, so poll (with a deadline) for the full table.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let table = loop {
        let out = t.cli(&["list", "--endpoint", &api], "").await?;
        assert!(out.status.success(), "{}", err(&out));
        let table = text(&out);
        if table.contains("| Member") && table.contains("Primary") && table.contains("streaming") {
            break table;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no streaming member listed:\n{table}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for m in &t.spec().members {
        assert!(table.contains(&m.name), "{table}");
    }
    let out = t.cli(&["list", "--endpoint", &format!("http://{api}/"), "--output", "json"], "").await?;
    let view: ClusterView = serde_json::from_slice(&out.stdout)?;
    assert_eq!(view.primary.as_deref(), Some(primary.as_str()));

    // Endpoint and token from a member's config file.
    let config = t.spec().config_path(&standby).display().to_string();
    let out = t.cli(&["history", "--config", &config, "-o", "json"], "").await?;
    assert!(out.status.success(), "{}", err(&out));
    let events: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(events.as_array().is_some_and(|e| e.iter().any(|e| e["kind"] == "bootstrap")));
    let out = t.cli(&["history", "--endpoint", &api], "").await?;
    assert!(text(&out).contains("bootstrap"), "{}", text(&out));

    // Pause is dangerous: it asks, and "no" (or no answer) changes nothing.
    let out = t.cli(&["pause", "--endpoint", &api, "--token", &token], "n\n").await?;
    assert!(!out.status.success() && err(&out).contains("not paused"), "{}", err(&out));
    let out = t.cli(&["pause", "--endpoint", &api, "--token", &token], "").await?;
    assert!(!out.status.success());
    assert!(!cluster_view(&t, &standby).await?.paused);
    // A wrong token: refused with the server's reason, exit code 1.
    let out = t.cli(&["pause", "--endpoint", &api, "--token", "wrong", "--force"], "").await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(err(&out).contains("warning: --token"), "a token in argv is warned about: {}", err(&out));
    assert!(err(&out).contains("401") && err(&out).contains("wrong token"), "{}", err(&out));
    // "y" pauses; --force does not ask; the table says so.
    let out = t.cli(&["pause", "--endpoint", &api, "--token", &token, "--reason", "maintenance"], "y\n").await?;
    assert!(out.status.success(), "{}", err(&out));
    assert!(cluster_view(&t, &primary).await?.paused);
    let out = t.cli(&["list", "--config", &config], "").await?;
    assert!(text(&out).contains("Maintenance mode: on"), "{}", text(&out));
    let out = t.cli(&["pause", "--config", &config, "--force", "-o", "json"], "").await?;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((answer["status"].as_str(), answer["message"].as_str()), (Some("ok"), Some("already paused")));
    let out = t.cli(&["resume", "--endpoint", &api, "--token", &token], "").await?;
    assert!(out.status.success(), "{}", err(&out));
    assert!(!cluster_view(&t, &primary).await?.paused);

    // --watch redraws until stopped.
    let mut watch = tokio::process::Command::new(vigil_tests::pgvigil_bin())
        .args(["list", "--endpoint", &api, "--watch", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // Wait for the second table on its output (with a deadline), not for a fixed time.
    let stdout = watch.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let (mut tables, mut seen) = (0, String::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tables < 2 {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await;
        let Ok(Ok(Some(line))) = line else { anyhow::bail!("--watch drew {tables} table(s):\n{seen}") };
        tables += usize::from(line.contains("| Member"));
        seen.push_str(&line);
        seen.push('\n');
    }
    watch.start_kill()?;
    watch.wait().await?;

    // `pgvigil health` (the container's HEALTHCHECK): exit 0 on a 2xx answer, 1 on any other,
    // 64 on a bad --path.
    let out = t.cli(&["health", "--endpoint", &api], "").await?;
    assert!(out.status.success() && text(&out).contains("ok: GET /liveness"), "{}{}", text(&out), err(&out));
    let out = t.cli(&["health", "--config", &config, "--path", "/replica"], "").await?;
    assert!(out.status.success(), "a standby answers /replica: {}", err(&out));
    let out = t.cli(&["health", "--endpoint", &api, "--path", "/primary"], "").await?;
    assert_eq!(out.status.code(), Some(1), "a standby is not /primary: {}", err(&out));
    assert!(err(&out).contains("HTTP 503"), "{}", err(&out));
    let out = t.cli(&["health", "--endpoint", &api, "--path", "liveness"], "").await?;
    assert_eq!(out.status.code(), Some(64), "{}", err(&out));
    assert!(err(&out).contains("--path"), "{}", err(&out));

    // A bad config file is a usage error.
    let out = t.cli(&["list", "--config", "/nonexistent.toml"], "").await?;
    assert_eq!(out.status.code(), Some(64), "{}", err(&out));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_automatic_failover_and_resume_lets_it_happen() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    let old = t.primary().await?;
    let standby = t.other_pg_members(&old).remove(0);
    let out = t.cli(&["pause", "--endpoint", &t.api(&standby), "--token", &t.token(), "--force"], "").await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Each member pauses once it has applied the committed entry (the answer comes when the
    // coordinator committed it): wait for the primary's own view, or its agent may still
    // restart a crashed PostgreSQL in place.
    let deadline = Instant::now() + CONVERGE;
    while t.get(&old, "/health").await?.json["paused"] != true {
        anyhow::ensure!(Instant::now() < deadline, "{old} does not know it is paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Paused and down: PostgreSQL is not restarted, and the member is not a primary to anyone.
    t.kill_postgres(&old);
    let r = t.wait_http(&old, "/health", 503, CONVERGE).await?;
    assert_eq!(r.json["paused"], true, "{r:?}");
    assert_eq!(t.get(&old, "/primary").await?.status, 503);
    assert_eq!(t.get(&old, "/liveness").await?.status, 200, "the daemon itself is fine");
    let m = parse_metrics(&t.get(&old, "/metrics").await?.text);
    assert_eq!(metric(&m, "pgvigil_paused"), 1.0);
    assert_eq!(metric(&m, "pgvigil_postgres_running"), 0.0);
    t.assert_no_failover(&old, 1, Duration::from_secs(4)).await?;
    assert!(t.postmaster_pid(&old).is_none(), "paused: the agent leaves PostgreSQL down");

    // The whole primary host goes: still no failover, however long.
    t.kill_host(&old);
    t.assert_no_failover(&old, 1, Duration::from_secs(6)).await?;

    let resumed = Instant::now();
    let out = t.cli(&["resume", "--endpoint", &t.api(&standby), "--token", &t.token()], "").await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = t
        .wait_for("a failover after resume", CONVERGE, |v| v.state.epoch == 2 && new_primary_writable(v, &old))
        .await?;
    let failover_took = resumed.elapsed();
    let new = v.state.primary.clone().expect("primary");
    t.wait_http(&new, "/primary", 200, CONVERGE).await?;
    t.execute(&new, "CREATE TABLE after_resume (id int)").await?;
    let m = parse_metrics(&t.get(&v.coordinator, "/metrics").await?.text);
    assert_eq!(metric(&m, "pgvigil_failovers_total"), 1.0);
    assert_eq!(metric(&m, "pgvigil_epoch"), 2.0);
    // Measured by the coordinator that made the failover, if it still is the coordinator: from the
    // resume (no failover could start before), not from the primary's loss during the pause.
    // The coordinator hands its role on only after its measurement; ask every member anyway.
    let mut gauges = Vec::new();
    for member in t.spec().members.iter().map(|m| m.name.clone()).filter(|n| *n != old) {
        let m = parse_metrics(&t.get(&member, "/metrics").await?.text);
        gauges.extend(m.get("pgvigil_last_failover_duration_seconds").copied());
    }
    let measured = failover_took.as_secs_f64();
    assert_eq!(gauges.len(), 1, "exactly the coordinator that made the failover measured it: {gauges:?}");
    assert!((gauges[0] - measured).abs() < 0.5, "gauge {} s, measured here {measured} s", gauges[0]);
    let kinds: Vec<String> = t
        .get(&new, "/history")
        .await?
        .json
        .as_array()
        .map_or(Vec::new(), |a| a.iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect());
    let tail: Vec<&str> = kinds.iter().rev().take(3).rev().map(String::as_str).collect();
    assert_eq!(tail, ["paused", "resumed", "failover"], "{kinds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_the_quorum_is_fenced_and_never_answers_primary() -> anyhow::Result<()> {
    use nix::sys::signal::Signal;
    let t = TestCluster::start(3, 0).await?;
    let primary = t.primary().await?;
    t.wait_http(&primary, "/primary", 200, CONVERGE).await?;
    let others = t.other_pg_members(&primary);
    // Freeze the other two daemons: the primary's agent can no longer renew its lease.
    for o in &others {
        t.cluster.signal(o, Signal::SIGSTOP)?;
    }
    let frozen_at = Instant::now();
    let r = t.wait_http(&primary, "/primary", 503, Duration::from_secs(20)).await;
    let health = t.wait_http(&primary, "/health", 503, Duration::from_secs(20)).await;
    let metrics = t.get(&primary, "/metrics").await;
    for o in &others {
        t.cluster.signal(o, Signal::SIGCONT)?;
    }
    let r = r?;
    assert!(frozen_at.elapsed() < Duration::from_secs(20));
    assert!(r.message().contains("fenced"), "{r:?}");
    assert_eq!(r.json["fenced"], true);
    health?;
    let m = parse_metrics(&metrics?.text);
    assert_eq!(metric(&m, "pgvigil_fenced"), 1.0);
    assert_eq!(metric(&m, "pgvigil_lease_remaining_seconds"), 0.0);
    assert!(!t.accepts_connections(&primary).await, "fenced: PostgreSQL is down");

    // Back together: exactly one member answers /primary again.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut ok = Vec::new();
        for m in t.spec().members.iter().map(|m| m.name.clone()) {
            if t.get(&m, "/primary").await.is_ok_and(|r| r.status == 200) {
                ok.push(m);
            }
        }
        if ok.len() == 1 {
            break;
        }
        anyhow::ensure!(ok.len() < 2, "two members answer /primary: {ok:?}");
        anyhow::ensure!(Instant::now() < deadline, "no member answers /primary again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_httpchk_primary_routes_writes_to_the_new_primary() -> anyhow::Result<()> {
    let mut t = TestCluster::start(3, 0).await?;
    let old = t.primary().await?;
    let haproxy = t.haproxy_primary("")?;
    t.execute(&old, "CREATE TABLE routed (port int)").await?;
    let ports: BTreeMap<String, u16> = t.spec().members.iter().map(|m| (m.name.clone(), m.pg_port)).collect();
    let port_of = |name: &str| ports.get(name).copied().unwrap_or(0);
    let write = Some("INSERT INTO routed VALUES (inet_server_port())");
    haproxy.wait_routed_to(port_of(&old), write, CONVERGE).await?;

    t.kill_host(&old);
    let v = t.wait_for("a new primary", CONVERGE, |v| v.state.epoch == 2 && new_primary_writable(v, &old)).await?;
    let new = v.state.primary.clone().expect("primary");
    haproxy.wait_routed_to(port_of(&new), write, CONVERGE).await?;
    let rows = t.count(&new, "routed").await?;
    assert!(rows >= 2, "writes through haproxy landed on the old, then the new primary: {rows}");
    Ok(())
}
