//! The routing proxy's refusals and limits on a real one-member cluster: a refused client reads
//! why (an ErrorResponse with SQLSTATE 57P03 or 53300, also after an SSLRequest), sessions over
//! `max_sessions_per_backend` queue for `queue_timeout` and then are refused, a queued session
//! gets the slot another one gives back, and `GET /proxy`, `/metrics` and `pgvigil list` count
//! all of it.

use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use vigil_tests::{healthy, metric_value, ClusterSpec, TestCluster};

const CONVERGE: Duration = Duration::from_secs(60);
const QUEUE: Duration = Duration::from_secs(1);

fn one_member_with_proxy(spec: &mut ClusterSpec, extra: &[&str]) {
    for m in spec.members.iter_mut() {
        m.proxy_ports =
            Some((pgvigil::launch::free_port().expect("free port"), pgvigil::launch::free_port().expect("free port")));
    }
    spec.proxy = extra.iter().map(|l| l.to_string()).collect();
}

fn ports(t: &TestCluster, member: &str) -> (u16, u16) {
    t.spec().member(member).and_then(|m| m.proxy_ports).expect("proxy ports")
}

fn conninfo(t: &TestCluster, port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname=postgres connect_timeout=10",
        t.spec().superuser_password
    )
}

async fn connect(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `GET /proxy` on `member` until `ready` holds.
async fn wait_proxy(
    t: &TestCluster,
    member: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let r = t.get(member, "/proxy").await;
        if let Ok(r) = &r {
            if r.status == 200 && ready(&r.json) {
                return Ok(r.json.clone());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{member}'s proxy: not {what}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (SQLSTATE, message) of a refused connection.
fn refusal(r: Result<tokio_postgres::Client, tokio_postgres::Error>) -> anyhow::Result<(String, String)> {
    let e = match r {
        Ok(_) => anyhow::bail!("the session was not refused"),
        Err(e) => e,
    };
    let db = e.as_db_error().ok_or_else(|| anyhow::anyhow!("refused without an ErrorResponse: {e:#}"))?;
    Ok((db.code().code().to_string(), db.message().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_read_why_and_sessions_queue_for_a_slot() -> anyhow::Result<()> {
    let extra = ["no_standby = \"refuse\"", "max_sessions_per_backend = 2", "queue_timeout = \"1s\""];
    let mut t = TestCluster::prepare(1, 0, |spec| one_member_with_proxy(spec, &extra))?;
    t.cluster.start_all()?;
    let v = t.wait_for("a primary", CONVERGE, healthy).await?;
    let p = v.state.primary.clone().expect("primary");
    wait_proxy(&t, &p, "forwarding to the primary", |s| s["rw"]["forward"] == p.as_str()).await?;
    let (rw, ro) = ports(&t, &p);

    // No standby and `no_standby = "refuse"`: 57P03, saying why.
    let (code, message) = refusal(connect(&conninfo(&t, ro)).await)?;
    assert_eq!(code, "57P03", "{message}");
    assert!(message.contains("no standby"), "{message}");
    // psql starts with an SSLRequest (sslmode=prefer): answered `N`, then the same error.
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("/usr/lib/postgresql/15/bin/psql")
            .args(["-X", "-w", "-At", "-c", "SELECT 1"])
            .arg(format!("host=127.0.0.1 port={ro} user=postgres dbname=postgres sslmode=prefer"))
            .env("PGPASSWORD", &t.spec().superuser_password)
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "psql got through: {stderr}");
    assert!(stderr.contains("FATAL:  pgvigil proxy: no standby"), "psql said: {stderr}");
    println!("psql through the read-only port with no standby: {}", stderr.trim());

    // Two sessions fill the primary's slots; a third queues for `queue_timeout`, then 53300.
    let first = connect(&conninfo(&t, rw)).await?;
    let second = connect(&conninfo(&t, rw)).await?;
    let start = Instant::now();
    let (code, message) = refusal(connect(&conninfo(&t, rw)).await)?;
    let waited = start.elapsed();
    println!("FIGURE a session over the limit: refused after {} ms (queue_timeout {QUEUE:?})", waited.as_millis());
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("max_sessions_per_backend"), "{message}");
    assert!(waited >= QUEUE && waited < QUEUE + Duration::from_secs(2), "refused after {waited:?}");

    // A queued session takes the slot the first one gives back.
    let conn = conninfo(&t, rw);
    let queued = tokio::spawn(async move {
        let start = Instant::now();
        let c = connect(&conn).await;
        (c, start.elapsed())
    });
    wait_proxy(&t, &p, "queueing one read-write session", |s| s["queued"]["rw"] == 1).await?;
    drop(first);
    let (c, took) = queued.await?;
    let c = c?;
    c.simple_query("SELECT 1").await?;
    println!("FIGURE a queued session got the freed slot after {} ms", took.as_millis());
    assert!(took < QUEUE, "the queued session waited {took:?}");

    let s = wait_proxy(&t, &p, "two open sessions", |s| s["sessions"][0]["sessions"] == 2).await?;
    assert_eq!(s["max_sessions_per_backend"], 2, "{s}");
    assert_eq!(s["queued"]["rw"], 0, "{s}");
    assert_eq!(s["queued_total"]["rw"], 2, "{s}");
    assert_eq!(s["refused_total"]["rw"]["backend_full"], 1, "{s}");
    assert_eq!(s["refused_total"]["ro"]["no_standby"], 2, "{s}");
    assert_eq!(s["sessions"], serde_json::json!([{ "port": "rw", "backend": p, "sessions": 2 }]), "{s}");

    let text = t.get(&p, "/metrics").await?.text;
    let m = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(m("pgvigil_proxy_sessions", &[("port", "rw"), ("backend", &p)]), Some(2.0));
    assert_eq!(m("pgvigil_proxy_refused_total", &[("port", "rw"), ("reason", "backend_full")]), Some(1.0));
    assert_eq!(m("pgvigil_proxy_refused_total", &[("port", "ro"), ("reason", "no_standby")]), Some(2.0));
    assert_eq!(m("pgvigil_proxy_queued_total", &[("port", "rw"), ("backend", &p)]), Some(2.0));
    assert_eq!(m("pgvigil_proxy_queued", &[("port", "rw")]), Some(0.0));
    // The sessions that reached the primary: the two and the queued one.
    let total = m("pgvigil_proxy_sessions_total", &[("port", "rw"), ("backend", &p)]).unwrap_or(0.0);
    assert!(total >= 3.0, "sessions_total {total}");

    // `pgvigil list` shows the proxy of the member it asks: the route, the sessions, the refusals.
    let out = t.cli(&["list", "--endpoint", &t.api(&p)], "").await?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    let row = text.lines().find(|l| l.starts_with(&format!("| {p} "))).expect("the primary's row");
    assert!(row.contains("| rw; sessions rw 2"), "{row}");
    assert!(text.contains(&format!(" Proxy on {p}: rw port {rw}, ro port {ro},")), "{text}");
    assert!(text.contains("queued 0 now (2 in all), refused ro no_standby 2, rw backend_full 1"), "{text}");
    drop((second, c));
    Ok(())
}
