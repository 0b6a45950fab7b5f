//! The routing proxy under a network fault (issue 13): three members in network namespaces, each
//! with `[proxy]`; the primary's host is isolated (its switch port down). A client on the
//! isolated host's side of the cut opens new read-write sessions through that host's proxy
//! without pause. The proxy must stop forwarding them within the lease bound (the coordinator
//! acked no report of the isolated member sent after the cut, so the lease it granted ends no
//! later than `lease_timeout` after the cut) and refuse them after its hold; the other members'
//! proxies must route writes to the new primary. Needs root, `ip` and `nft`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use vigil_tests::nscluster::{Mode, NsCluster};
use vigil_tests::scenario;

/// Every member's proxy ports (each host is a namespace of its own: fixed ports do not collide).
const RW: u16 = 6432;
const RO: u16 = 6433;
/// The proxies' `hold_timeout`: short, so that a held session's refusal is seen within the run.
const HOLD: Duration = Duration::from_secs(1);
/// How long a refused session may take beyond the hold (a loaded 2-core machine, debug build).
const REFUSE_SLACK: Duration = Duration::from_millis(1500);
/// The first write through a surviving member's proxy on the new primary, after the cut: lease
/// 2 s + margin 0.5 s + promotion + the proxies' next answer, with room for a loaded machine.
const NEW_PRIMARY_BOUND: Duration = Duration::from_secs(20);

fn lease() -> Duration {
    vigil_core::Timings::default().lease_timeout
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One new read-write session tried through the isolated host's proxy.
#[derive(Debug, Clone)]
struct Attempt {
    started: Instant,
    ended: Instant,
    /// The server's `backend_start` (unix ms) when the proxy forwarded the session.
    forwarded: Option<i64>,
    /// The insert was acknowledged.
    wrote: bool,
    /// The SQLSTATE the client was refused with, if any.
    code: Option<String>,
    error: Option<String>,
}

/// `GET /proxy`'s read-write route on the isolated host, each time it changed.
type Timeline = Vec<(Instant, String)>;

struct Prober {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<Timeline>>>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Prober {
    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn finish(mut self) -> anyhow::Result<(Vec<Attempt>, Timeline)> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("joined once");
        let timeline = tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the prober thread panicked"))??;
        Ok((self.attempts(), timeline))
    }
}

/// Inside `host`'s namespace: a new session through its read-write proxy port after another (each
/// one reads its server-side start time and inserts a row), and `GET /proxy` every 50 ms.
fn start_prober(c: &NsCluster, host: &str) -> anyhow::Result<Prober> {
    let ip = c.endpoints.ip(host).unwrap_or_default().to_string();
    let password = c.endpoints.password.clone();
    let api = c.api_client(host)?;
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (stop2, attempts2) = (stop.clone(), attempts.clone());
    let thread = c.net.spawn_in(host, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            // Bounded even if the test forgets to stop it.
            let deadline = Instant::now() + Duration::from_secs(180);
            let done = move || stop2.load(Ordering::Relaxed) || Instant::now() >= deadline;
            let poll = {
                let done = done.clone();
                async move {
                    let mut timeline: Timeline = Vec::new();
                    while !done() {
                        if let Ok(r) = api.request("GET", "/proxy", None, None, Duration::from_secs(2)).await {
                            let rw = r.json["rw"].to_string();
                            if timeline.last().is_none_or(|(_, last)| *last != rw) {
                                timeline.push((Instant::now(), rw));
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    timeline
                }
            };
            let sessions = async move {
                let conn = format!(
                    "host={ip} port={RW} user=postgres password={password} dbname=postgres \
                     application_name=isolated-prober"
                );
                let mut n = 0i64;
                while !done() {
                    n += 1;
                    let a = one_session(&conn, n).await;
                    attempts2.lock().unwrap_or_else(|p| p.into_inner()).push(a);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let (timeline, ()) = tokio::join!(poll, sessions);
            Ok(timeline)
        })
    })?;
    Ok(Prober { stop, attempts, thread: Some(thread) })
}

async fn one_session(conn: &str, n: i64) -> Attempt {
    let started = Instant::now();
    let mut a = Attempt { started, ended: started, forwarded: None, wrote: false, code: None, error: None };
    let run = async {
        let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM backend_start) * 1000)::bigint FROM pg_stat_activity \
                 WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        a.forwarded = Some(row.get(0));
        // Not waiting for the synchronous standby, which is out of reach after the cut: the
        // client goes on at once, so the moment the proxy stops forwarding is seen closely.
        client.batch_execute("SET synchronous_commit = local").await?;
        client.execute("INSERT INTO proxy_probe VALUES ($1, 'isolated')", &[&n]).await?;
        a.wrote = true;
        Ok::<(), tokio_postgres::Error>(())
    };
    match tokio::time::timeout(HOLD + Duration::from_secs(5), run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            a.code = e.code().map(|c| c.code().to_string());
            a.error = Some(e.to_string());
        }
        Err(_) => a.error = Some("no answer within the hold + 5 s".into()),
    }
    a.ended = Instant::now();
    a
}

/// One write through `ip`'s read-write proxy port: the address of the server that took it.
async fn write_through(ip: &str, password: &str) -> anyhow::Result<String> {
    let conn = format!("host={ip} port={RW} user=postgres password={password} dbname=postgres connect_timeout=3");
    let go = async {
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
        tokio::spawn(connection);
        let row = client
            .query_one("INSERT INTO proxy_probe VALUES (0, 'client') RETURNING host(inet_server_addr())", &[])
            .await?;
        anyhow::Ok(row.get::<_, String>(0))
    };
    tokio::time::timeout(HOLD + Duration::from_secs(5), go).await.map_err(|_| anyhow::anyhow!("no answer"))?
}

/// Until a write through `ip`'s proxy lands on a server other than `not` (or, with `not` empty,
/// any server): that server's address.
async fn wait_routed(ip: &str, password: &str, not: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = write_through(ip, password).await;
        match &r {
            Ok(server) if server != not => return Ok(server.clone()),
            _ => {}
        }
        anyhow::ensure!(Instant::now() < deadline, "writes through {ip}'s proxy: last {r:?} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

async fn isolated_primary(c: Arc<NsCluster>) -> anyhow::Result<()> {
    c.start_all()?;
    let old = scenario::converged_primary(&c, Duration::from_secs(120)).await?;
    // Synchronous mode: a failover is possible once a standby, not the primary alone, is known
    // to hold every acknowledged commit (the sync set settled after the standbys joined).
    let settled = Instant::now() + Duration::from_secs(60);
    loop {
        let v = c.view().await;
        if let Ok(v) = &v {
            if !v.state.sync.holders.is_empty() && !v.state.sync.holders.contains(&old) {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < settled, "the synchronous set did not settle: {:?}", v.map(|v| v.state.sync));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_ip = c.endpoints.ip(&old).unwrap_or_default().to_string();
    let pw = c.endpoints.password.clone();
    {
        let direct = c.endpoints.connect(&old_ip, Duration::from_secs(5)).await?;
        direct.batch_execute("CREATE TABLE IF NOT EXISTS proxy_probe (n bigint, via text)").await?;
    }
    // Every member's proxy forwards writes to the primary before the cut.
    for (name, ip) in &c.endpoints.hosts {
        let server = wait_routed(ip, &pw, "", Duration::from_secs(30)).await?;
        anyhow::ensure!(server == old_ip, "{name}'s proxy routed a write to {server}, not to the primary {old_ip}");
    }
    let prober = start_prober(&c, &old)?;
    let warm = Instant::now() + Duration::from_secs(30);
    while prober.attempts().iter().filter(|a| a.wrote).count() < 5 {
        anyhow::ensure!(Instant::now() < warm, "the isolated-side client wrote nothing through its proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    c.net.set_link(&old, false)?;
    let (t_cut, cut_ms) = (Instant::now(), unix_ms());
    println!("isolated {old} ({old_ip}), the primary");

    // The surviving members' proxies route writes to the new primary.
    let mut new_ip = String::new();
    let mut routed_after = Vec::new();
    for (name, ip) in c.endpoints.hosts.iter().filter(|(n, _)| *n != old) {
        let server = wait_routed(ip, &pw, &old_ip, NEW_PRIMARY_BOUND).await?;
        routed_after.push((name.clone(), t_cut.elapsed()));
        anyhow::ensure!(new_ip.is_empty() || new_ip == server, "proxies route to {new_ip} and {server}");
        new_ip = server;
    }
    let new = c.endpoints.name_of(&new_ip).unwrap_or("?").to_string();

    // Enough refused sessions after the bound: at least two attempts begun after it have ended.
    let bound = t_cut + lease();
    let enough = Instant::now() + Duration::from_secs(30);
    while prober.attempts().iter().filter(|a| a.started > bound).count() < 2 {
        anyhow::ensure!(Instant::now() < enough, "the isolated-side client made no attempt after the bound");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (attempts, timeline) = prober.finish().await?;

    let before: Vec<&Attempt> = attempts.iter().filter(|a| a.started < t_cut).collect();
    let after: Vec<&Attempt> = attempts.iter().filter(|a| a.started >= t_cut).collect();
    let last = attempts.iter().filter(|a| a.forwarded.is_some()).max_by_key(|a| a.started).expect("forwarded");
    let last_server_ms = last.forwarded.unwrap_or_default() - cut_ms;
    let last_start = last.started.saturating_duration_since(t_cut);
    let first_refused = after.iter().find(|a| a.forwarded.is_none()).map(|a| a.ended.saturating_duration_since(t_cut));
    let hold_seen = timeline
        .iter()
        .find(|(at, rw)| *at >= t_cut && rw.contains("hold"))
        .map(|(at, rw)| (at.saturating_duration_since(t_cut), rw.clone()));
    println!(
        "FIGURE isolated primary's proxy: last read-write session forwarded began {} ms after the cut \
         (server backend_start {last_server_ms} ms; lease bound {} ms), first refused {:?} ms after the cut, \
         GET /proxy said {:?} at {:?} ms; {} sessions forwarded before the cut, {} tried after",
        ms(last_start),
        ms(lease()),
        first_refused.map(ms),
        hold_seen.as_ref().map(|h| h.1.clone()),
        hold_seen.as_ref().map(|h| ms(h.0)),
        before.iter().filter(|a| a.forwarded.is_some()).count(),
        after.len(),
    );
    for (name, took) in &routed_after {
        println!("FIGURE {name}'s proxy routed a write to the new primary {new} {} ms after the cut", ms(*took));
    }
    for a in &after {
        println!(
            "  +{} ms .. +{} ms: forwarded {:?} wrote {} code {:?} {}",
            ms(a.started.saturating_duration_since(t_cut)),
            ms(a.ended.saturating_duration_since(t_cut)),
            a.forwarded.map(|f| f - cut_ms),
            a.wrote,
            a.code,
            a.error.as_deref().unwrap_or("")
        );
    }

    anyhow::ensure!(new != old, "the new primary is the old one");
    // The proxy's bound ends no later than the lease of the last report the coordinator acked,
    // sent before the cut: no session may reach the server after cut + lease_timeout.
    anyhow::ensure!(
        last_server_ms <= lease().as_millis() as i64,
        "a session was forwarded {last_server_ms} ms after the cut, past the lease bound"
    );
    anyhow::ensure!(last_start <= lease(), "a session begun {last_start:?} after the cut was forwarded");
    let late: Vec<&&Attempt> = after.iter().filter(|a| a.started > bound).collect();
    anyhow::ensure!(!late.is_empty(), "no attempt after the bound");
    for a in late {
        anyhow::ensure!(a.forwarded.is_none(), "forwarded after the bound: {a:?}");
        let took = a.ended.saturating_duration_since(a.started);
        anyhow::ensure!(took <= HOLD + REFUSE_SLACK, "refused only after {took:?} (hold {HOLD:?}): {a:?}");
    }
    c.net.set_link(&old, true)?;
    Ok(())
}

#[test]
fn an_isolated_members_proxy_refuses_writes_within_the_lease_bound() {
    let c = NsCluster::prepare_with(3, Mode::On, |spec| {
        for m in &mut spec.members {
            m.proxy_ports = Some((RW, RO));
        }
        spec.proxy = vec![format!("hold_timeout = \"{}ms\"", HOLD.as_millis())];
    })
    .expect("build the namespaces and the cluster");
    c.run(|c| async move {
        let r = isolated_primary(c.clone()).await;
        if r.is_err() {
            let dest = std::env::temp_dir().join(format!("pgvigil-proxy-faults-logs-{}", std::process::id()));
            match c.save_logs(&dest) {
                Ok(()) => eprintln!("logs in {}", dest.display()),
                Err(e) => eprintln!("could not save the logs: {e:#}"),
            }
            if let Ok(v) = c.view().await {
                eprintln!("epoch {} primary {:?}", v.state.epoch, v.state.primary);
            }
        }
        r
    })
    .expect("the isolated primary's proxy");
}
