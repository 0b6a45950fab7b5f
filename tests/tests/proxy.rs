//! The routing proxy (`[proxy]`) on real three-member clusters: a writer through the read-write
//! port during a planned switchover (no new-connection error, nothing acknowledged lost) and
//! during a failover (no commit on the old primary after the new one took its first), the
//! read-only pool (a standby whose replay is paused leaves it and returns after resume; a
//! `noloadbalance` standby never gets sessions; `pgvigil list` on any member shows every member's
//! proxy, at once even with a member frozen), and a cancel request through the read-only port.

use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use vigil_tests::{healthy, ClusterSpec, TestCluster};

const CONVERGE: Duration = Duration::from_secs(60);

/// Every PostgreSQL member runs the proxy on free ports.
fn with_proxy(spec: &mut ClusterSpec) {
    for m in spec.members.iter_mut().filter(|m| m.kind == vigil_core::MemberKind::Postgres) {
        m.proxy_ports =
            Some((pgvigil::launch::free_port().expect("free port"), pgvigil::launch::free_port().expect("free port")));
    }
}

fn ports(t: &TestCluster, member: &str) -> (u16, u16) {
    t.spec().member(member).and_then(|m| m.proxy_ports).expect("proxy ports")
}

fn pg_port(t: &TestCluster, member: &str) -> u16 {
    t.spec().member(member).expect("member").pg_port
}

fn conninfo(t: &TestCluster, port: u16, connect_timeout_s: u64) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres connect_timeout={connect_timeout_s}",
        t.spec().superuser_password
    )
}

async fn connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The PostgreSQL port the session landed on.
async fn server_port(c: &tokio_postgres::Client) -> anyhow::Result<u16> {
    let port: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
    Ok(u16::try_from(port)?)
}

/// `GET /proxy` on `member` until `ready` holds.
async fn wait_proxy(
    t: &TestCluster,
    member: &str,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = t.get(member, "/proxy").await;
        if let Ok(r) = &r {
            if r.status == 200 && ready(&r.json) {
                return Ok(r.json.clone());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{member}'s proxy: not {what} after {timeout:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pool(status: &serde_json::Value) -> Vec<String> {
    status["ro_pool"].as_array().into_iter().flatten().filter_map(|m| m.as_str().map(str::to_string)).collect()
}

/// One write per new connection through a read-write port, as fast as answers come.
struct RwWriter {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Written>,
}

#[derive(Debug, Default)]
struct Written {
    /// (id, PostgreSQL port that acknowledged it, when).
    acked: Vec<(i64, u16, Instant)>,
    connect_errors: Vec<String>,
    write_errors: Vec<String>,
}

impl RwWriter {
    fn start(conn: String) -> RwWriter {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut w = Written::default();
            let mut id = 0i64;
            while !token.is_cancelled() {
                id += 1;
                let c = match connect(&conn).await {
                    Ok(c) => c,
                    Err(e) => {
                        w.connect_errors.push(format!("{e:#}"));
                        continue;
                    }
                };
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let insert = c.query_one("INSERT INTO sentinel VALUES ($1) RETURNING inet_server_port()", &params);
                match tokio::time::timeout(Duration::from_secs(5), insert).await {
                    Ok(Ok(row)) => {
                        let port: i32 = row.get(0);
                        w.acked.push((id, port as u16, Instant::now()));
                    }
                    Ok(Err(e)) => w.write_errors.push(format!("{e:#}")),
                    Err(_) => w.write_errors.push("no answer within 5s".into()),
                }
            }
            w
        });
        RwWriter { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Written> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

async fn ids_on(t: &TestCluster, member: &str) -> anyhow::Result<std::collections::BTreeSet<i64>> {
    let rows = t.client(member).await?.query("SELECT id FROM sentinel", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The largest time between two acknowledged writes.
fn largest_gap(acked: &[(i64, u16, Instant)]) -> Duration {
    acked.windows(2).map(|w| w[1].2.saturating_duration_since(w[0].2)).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_through_the_rw_port_sees_no_error_during_a_switchover() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, with_proxy)?;
    t.cluster.start_all()?;
    let v = t.wait_for("a healthy cluster", CONVERGE, healthy).await?;
    let old = v.state.primary.clone().expect("primary");
    let candidate = t.other_pg_members(&old).remove(0);
    let via = t.other_pg_members(&old).remove(1);
    t.execute(&old, "CREATE TABLE sentinel (id bigint primary key)").await?;
    wait_proxy(&t, &via, "forwarding to the primary", CONVERGE, |s| s["rw"]["forward"] == old.as_str()).await?;
    let (rw, _) = ports(&t, &via);
    let writer = RwWriter::start(conninfo(&t, rw, 40));
    t.wait_rows(&old, "sentinel", 20, Duration::from_secs(20)).await?;

    let r = t.post(&via, "/switchover", &format!(r#"{{"candidate": "{candidate}"}}"#)).await?;
    assert_eq!(r.status, 200, "{r:?}");
    // Writes go on, now on the candidate.
    let new_port = pg_port(&t, &candidate);
    let deadline = Instant::now() + Duration::from_secs(20);
    let at_switch = t.count(&candidate, "sentinel").await?;
    loop {
        if t.count(&candidate, "sentinel").await? >= at_switch + 20 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no writes through the proxy reached {candidate}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let w = writer.stop().await?;
    assert!(w.connect_errors.is_empty(), "new-connection errors through the rw port: {:?}", w.connect_errors);
    // The metrics count the sessions of both primaries through the rw port, none open to the old.
    let metrics = t.get(&via, "/metrics").await?.text;
    let value = |name: &str, labels: &[(&str, &str)]| vigil_tests::metric_value(&metrics, name, labels);
    for backend in [&old, &candidate] {
        let total = value("pgvigil_proxy_sessions_total", &[("port", "rw"), ("backend", backend)]).unwrap_or(0.0);
        assert!(total >= 1.0, "sessions through the rw port to {backend}: {total}");
    }
    let open_old = value("pgvigil_proxy_sessions", &[("port", "rw"), ("backend", &old)]).unwrap_or(0.0);
    assert_eq!(open_old, 0.0, "sessions still counted open to the old primary");
    let on_new = ids_on(&t, &candidate).await?;
    let lost: Vec<i64> = w.acked.iter().map(|a| a.0).filter(|id| !on_new.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes missing on the new primary: {lost:?}");
    let (old_port, acks_on_new) = (pg_port(&t, &old), w.acked.iter().filter(|a| a.1 == new_port).count());
    assert!(acks_on_new > 0 && w.acked.iter().all(|a| a.1 == old_port || a.1 == new_port), "{:?}", w.acked.len());
    eprintln!(
        "switchover through the proxy: {} writes acknowledged, {} write errors on sessions the switchover ended, \
         0 connection errors, largest gap between acknowledgements {:?}",
        w.acked.len(),
        w.write_errors.len(),
        largest_gap(&w.acked)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_leaves_the_ro_pool_and_noloadbalance_never_joins() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, |spec| {
        with_proxy(spec);
        spec.members[2].tags.set("noloadbalance", true);
    })?;
    t.cluster.start_all()?;
    let mut v = t.wait_for("a healthy cluster", CONVERGE, healthy).await?;
    let tagged = t.spec().members[2].name.clone();
    if v.state.primary.as_deref() == Some(tagged.as_str()) {
        // The tag is about standbys: move the primary elsewhere first.
        let to = t.spec().members[0].name.clone();
        let r = t.post(&to, "/switchover", &format!(r#"{{"candidate": "{to}"}}"#)).await?;
        assert_eq!(r.status, 200, "{r:?}");
        v = t.wait_for("healthy again", CONVERGE, |v| healthy(v) && v.state.switchover.is_none()).await?;
    }
    let primary = v.state.primary.clone().expect("primary");
    let standby = t.other_pg_members(&primary).into_iter().find(|m| *m != tagged).expect("an untagged standby");
    let via = primary.clone();
    let (_, ro) = ports(&t, &via);
    // The tagged standby's report may reach the coordinator after the untagged one's: wait for
    // both (a tagged standby that joined the pool, or never shows as tagged, fails here).
    let s = wait_proxy(&t, &via, "pooling the untagged standby, not the tagged one", CONVERGE, |s| {
        pool(s) == [standby.clone()] && s["ro_out"][&tagged] == "noloadbalance"
    })
    .await?;
    assert_eq!(s["ro_out"][&tagged], "noloadbalance", "{s}");

    // Held sessions: every one on the untagged standby, none on the tagged one.
    let mut held = Vec::new();
    for _ in 0..4 {
        let c = connect(&conninfo(&t, ro, 5)).await?;
        assert_eq!(server_port(&c).await?, pg_port(&t, &standby));
        held.push(c);
    }

    let paused_at = Instant::now();
    t.execute(&standby, "SELECT pg_wal_replay_pause()").await?;
    // Out for the pause itself: an answer from a coordinator that has no standby's report yet
    // (a new one) also leaves the pool empty, for other reasons.
    let s = wait_proxy(&t, &via, "without the paused standby", Duration::from_secs(10), |s| {
        s["ro_out"][&standby] == "replaypaused"
    })
    .await?;
    let left_after = paused_at.elapsed();
    assert!(pool(&s).is_empty(), "{s}");
    // No standby qualifies: the primary takes read-only sessions (`no_standby = "primary"`).
    let c = connect(&conninfo(&t, ro, 5)).await?;
    assert_eq!(server_port(&c).await?, pg_port(&t, &primary));

    let resumed_at = Instant::now();
    t.execute(&standby, "SELECT pg_wal_replay_resume()").await?;
    wait_proxy(&t, &via, "with the standby back", Duration::from_secs(10), |s| pool(s) == [standby.clone()]).await?;
    let back_after = resumed_at.elapsed();
    let c = connect(&conninfo(&t, ro, 5)).await?;
    assert_eq!(server_port(&c).await?, pg_port(&t, &standby));
    // One check interval: the standby's observation, its report, and this member's next answer
    // (loop_interval 500 ms each, on a loaded machine).
    assert!(left_after < Duration::from_secs(3), "left the pool after {left_after:?}");
    eprintln!("paused standby left the ro pool after {left_after:?}, returned {back_after:?} after resume");

    // Every member's proxy on any member's `GET /cluster` and `pgvigil list`, from the members'
    // reports: the primary's proxy holds the 6 read-only sessions of this test.
    let members = t.spec().members.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let r = t.get(&standby, "/cluster").await?;
        let proxy_of = |m: &str| {
            r.json["members"].as_array().into_iter().flatten().find(|v| v["name"] == m).map(|v| v["proxy"].clone())
        };
        let sessions = proxy_of(&primary).map(|p| p["sessions_ro"].clone());
        let every = members.iter().all(|m| proxy_of(m).is_some_and(|p| p["rw_forward"] == primary.as_str()));
        if every && sessions == Some(serde_json::json!(6)) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not every member's proxy in /cluster: {}", r.json);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Asked of the coordinator while another standby's daemon is frozen: it answers at once (no
    // member is asked for its proxy), showing the frozen one's as last reported.
    let coordinator = t.view().await?.coordinator;
    let frozen = [standby.clone(), tagged.clone()].into_iter().find(|m| *m != coordinator).expect("a standby");
    t.cluster.signal(&frozen, nix::sys::signal::Signal::SIGSTOP)?;
    let asked_at = Instant::now();
    let out =
        tokio::time::timeout(Duration::from_secs(20), t.cli(&["list", "--endpoint", &t.api(&coordinator)], "")).await;
    let took = asked_at.elapsed();
    t.cluster.signal(&frozen, nix::sys::signal::Signal::SIGCONT)?;
    let out = out??;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("pgvigil list on {coordinator} with {frozen} frozen ({} ms):\n{text}", took.as_millis());
    assert!(out.status.success(), "{text}");
    assert!(took < Duration::from_secs(5), "list took {took:?} with {frozen} frozen");
    for m in &members {
        let (rw, ro) = ports(&t, m);
        if *m == coordinator {
            assert!(text.contains(&format!(" Proxy on {m}: rw port {rw}, ro port {ro},")), "{text}");
        } else {
            let want = format!(" Proxy on {m} (its last report): rw port {rw}, ro port {ro}, rw to {primary}, ro pool");
            assert!(text.contains(&want), "no line {want:?} in\n{text}");
        }
    }
    if coordinator != primary {
        assert!(text.contains(&format!("ro pool {standby}, sessions rw 0 ro 6,")), "{text}");
    }
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_through_the_ro_port_ends_a_long_query_at_once() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, with_proxy)?;
    t.cluster.start_all()?;
    let v = t.wait_for("a healthy cluster", CONVERGE, healthy).await?;
    let primary = v.state.primary.clone().expect("primary");
    let via = t.other_pg_members(&primary).remove(0);
    wait_proxy(&t, &via, "pooling both standbys", CONVERGE, |s| pool(s).len() == 2).await?;
    let (_, ro) = ports(&t, &via);
    let client = connect(&conninfo(&t, ro, 5)).await?;
    let port = server_port(&client).await?;
    let on = t.spec().members.iter().find(|m| m.pg_port == port).map(|m| m.name.clone()).expect("a member");
    let cancel = client.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (r, Instant::now())
    });
    // Cancel once the query runs there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'";
        let n: i64 = t.client(&on).await?.query_one(q, &[]).await?.get(0);
        if n == 1 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the query never ran on {on}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_at = Instant::now();
    cancel.cancel_query(NoTls).await?;
    let (result, ended) = sleeping.await?;
    let took = ended.saturating_duration_since(cancelled_at);
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{err}");
    assert!(took < Duration::from_secs(1), "cancelled after {took:?}");
    eprintln!("pg_sleep(30) through the ro port cancelled in {took:?}");
    Ok(())
}

/// Kills the stopped keeper however the test ends (a stopped process would stay forever).
struct StoppedKeeper(i32);

impl Drop for StoppedKeeper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
    }
}

fn parent_of(pid: i32) -> anyhow::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    Ok(after.split_whitespace().nth(1).unwrap_or_default().parse()?)
}

/// The primary's daemon is killed (SIGKILL) while its keeper is stopped (SIGSTOP), so its
/// PostgreSQL stays writable past the lease: only the proxies' lease fence keeps the writer
/// off it. Afterwards both servers are read: no id the writer tried after the new primary
/// acknowledged its first write is on the old primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_no_write_through_the_proxy_lands_on_the_old_primary() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, with_proxy)?;
    t.cluster.start_all()?;
    let v = t.wait_for("a settled cluster", CONVERGE, vigil_tests::settled).await?;
    let old = v.state.primary.clone().expect("primary");
    let via = t.other_pg_members(&old).remove(0);
    // When each row was committed, by the server's clock (this machine's).
    t.execute(&old, "CREATE TABLE sentinel (id bigint primary key, at timestamptz DEFAULT clock_timestamp())").await?;
    wait_proxy(&t, &via, "forwarding to the primary", CONVERGE, |s| s["rw"]["forward"] == old.as_str()).await?;
    let (rw, _) = ports(&t, &via);
    // An idle session on the old primary, which stays up: closed by the proxy when the new epoch
    // commits.
    let idle = connect(&conninfo(&t, rw, 10)).await?;
    anyhow::ensure!(server_port(&idle).await? == pg_port(&t, &old), "the idle session is not on {old}");
    let writer = RwWriter::start(conninfo(&t, rw, 40));
    t.wait_rows(&old, "sentinel", 20, Duration::from_secs(20)).await?;

    let postmaster = t.postmaster_pid(&old).expect("the old primary's postmaster");
    let keeper = parent_of(postmaster)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper), nix::sys::signal::Signal::SIGSTOP)?;
    let _keeper = StoppedKeeper(keeper);
    let killed_at = Instant::now();
    let killed_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    t.cluster.kill_daemon(&old);
    let v = t.wait_for("a new primary", CONVERGE, |v| v.state.primary.as_deref().is_some_and(|p| p != old)).await?;
    let new = v.state.primary.clone().expect("primary");
    let (old_port, new_port) = (pg_port(&t, &old), pg_port(&t, &new));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = t.client(&new).await?.query_one("SELECT count(*) FROM sentinel", &[]).await?.get::<_, i64>(0);
        let before = ids_on(&t, &old).await?.len() as i64;
        if n >= before + 20 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no writes through the proxy reached {new}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let w = writer.stop().await?;
    // The old server still takes writes (its keeper is stopped): read both.
    let on_old = ids_on(&t, &old).await?;
    let first_new = w.acked.iter().find(|a| a.1 == new_port).map(|a| a.0).expect("a write on the new primary");
    let late: Vec<i64> = on_old.iter().copied().filter(|id| *id >= first_new).collect();
    assert!(late.is_empty(), "ids committed on the old primary after the new one took writes: {late:?}");
    let last_old_ack = w.acked.iter().filter(|a| a.1 == old_port).map(|a| a.2).max().expect("acks on the old");
    let first_new_ack = w.acked.iter().find(|a| a.1 == new_port).map(|a| a.2).expect("acks on the new");
    assert!(last_old_ack < first_new_ack);
    // The old primary's last grant answered a report sent before its daemon was killed; the
    // proxies' bound ends before any coordinator may promote, lease_timeout + lease_margin
    // (2.5 s) after that grant: nothing through the proxy commits on the old server later,
    // acknowledged or not. Without the fence writes would go on until this member applied the
    // failover's commit (about 3.5 s here).
    let lease = Duration::from_millis(2500);
    let last = last_old_ack.saturating_duration_since(killed_at);
    assert!(last < lease, "acknowledged on the old primary {last:?} after its daemon was killed");
    let q = "SELECT count(*) FROM sentinel WHERE at >= to_timestamp($1)";
    let after_lease: i64 = t.client(&old).await?.query_one(q, &[&(killed_unix + lease.as_secs_f64())]).await?.get(0);
    assert_eq!(after_lease, 0, "rows committed on the old primary after its lease");
    assert!(w.connect_errors.is_empty(), "new-connection errors through the rw port: {:?}", w.connect_errors);
    // The idle session was closed at the epoch change (its server is still up), and the metric
    // says so; the writer's sessions open at that moment count too.
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.simple_query("SELECT 1")).await;
    assert!(matches!(closed, Ok(Err(_))), "the idle session on the old primary is still open: {closed:?}");
    let metrics = t.get(&via, "/metrics").await?.text;
    let value = |name: &str, labels: &[(&str, &str)]| vigil_tests::metric_value(&metrics, name, labels);
    let on_epoch = value("pgvigil_proxy_closed_on_epoch_change_total", &[]).unwrap_or(0.0);
    assert!(on_epoch >= 1.0, "closed on epoch change: {on_epoch}");
    let open_old = value("pgvigil_proxy_sessions", &[("port", "rw"), ("backend", &old)]).unwrap_or(0.0);
    assert_eq!(open_old, 0.0, "sessions still counted open to the old primary");
    eprintln!("FIGURE sessions closed on the epoch change: {on_epoch}");
    eprintln!(
        "failover through the proxy: last write on the old primary {:?} after its daemon was killed, first on the \
         new {:?} after; {} write errors, 0 connection errors; {} rows on the old server, none at or after id {first_new}",
        last_old_ack.saturating_duration_since(killed_at),
        first_new_ack.saturating_duration_since(killed_at),
        w.write_errors.len(),
        on_old.len()
    );
    Ok(())
}

/// TLS between the client and PostgreSQL through both ports: `sslmode=verify-ca` and
/// `channel_binding=require` (SCRAM-SHA-256-PLUS binds the authentication to the TLS session
/// with PostgreSQL itself, so a proxy that terminated TLS could not pass it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_channel_binding_work_end_to_end_through_both_ports() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(3, 0, |spec| {
        with_proxy(spec);
        let dir = spec.dir.join("pgtls");
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        spec.pg_parameters = vec![
            "ssl = \"on\"".into(),
            format!("ssl_cert_file = {:?}", cert.display().to_string()),
            format!("ssl_key_file = {:?}", key.display().to_string()),
        ];
    })?;
    let dir = t.spec().dir.join("pgtls");
    std::fs::create_dir_all(&dir)?;
    let ca = vigil_tests::certs::Ca::new("PostgreSQL test CA")?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    ca.issue("postgres", &["127.0.0.1"])?.write(&dir.join("server.crt"), &dir.join("server.key"))?;
    // PostgreSQL reads its key as its own user and wants it private.
    let pg_user = nix::unistd::User::from_name("postgres")?.expect("a postgres user");
    nix::unistd::chown(&dir.join("server.key"), Some(pg_user.uid), Some(pg_user.gid))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(dir.join("server.crt"), std::fs::Permissions::from_mode(0o644))?;
    }
    t.cluster.start_all()?;
    let v = t.wait_for("a healthy cluster", CONVERGE, healthy).await?;
    let primary = v.state.primary.clone().expect("primary");
    let via = t.other_pg_members(&primary).remove(0);
    wait_proxy(&t, &via, "routing both ports", CONVERGE, |s| {
        s["rw"]["forward"] == primary.as_str() && !pool(s).is_empty()
    })
    .await?;
    let (rw, ro) = ports(&t, &via);
    for (port, want_recovery) in [(rw, "f"), (ro, "t")] {
        let conn = format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=10 sslmode=verify-ca \
             sslrootcert={} channel_binding=require",
            dir.join("ca.pem").display()
        );
        let sql = "SELECT s.ssl, pg_is_in_recovery() FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()";
        let out = tokio::process::Command::new("psql")
            .args([conn.as_str(), "-AtF", " ", "-c", sql])
            .env("PGPASSWORD", &t.spec().superuser_password)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(out.status.success(), "psql through port {port}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text, format!("t {want_recovery}"), "through port {port}");
    }
    Ok(())
}
