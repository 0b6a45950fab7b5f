//! Failover and idle-cost figures on real clusters (a benchmark, not a test).
//!
//! `cargo run --release -p vigil-tests --bin bench -- failover [RUNS]`: per run, a fresh three-member
//! cluster, a writer committing one row every 10 ms to whichever member accepts it, then `kill -9`
//! of the primary's daemon and PostgreSQL. Prints the time from the kill to the first committed
//! write on the new primary, and how many acknowledged rows are missing on it afterwards.
//!
//! `... -- switchover [RUNS]`: per run, a fresh three-member cluster and the same writer, then a
//! planned switchover (`POST /switchover`) to a standby. Prints the write-unavailability window
//! (first failed write to the first committed write after it), how long the request took, how
//! long until the old primary streams from the new one (and whether it needed a rewind), and how
//! many acknowledged rows are missing on the new primary afterwards.
//!
//! `... -- unattended [RUNS]`: the daemon's own failures (`vigil_tests::unattended`), RUNS times
//! each: the primary's daemon stopped 12 s, its PostgreSQL frozen 30 s (write gap, writes missing,
//! the old daemon's log and CPU), SIGTERM on the primary (write gap), a daemon restart on a standby
//! and on the primary (PostgreSQL downtime).
//!
//! `... -- docker [RUNS]`: the compose topology in containers (`vigil_tests::compose_bench`; needs the
//! engine and image of scripts/docker-figures.sh): up to healthy, write gap and acknowledged writes
//! lost for `docker kill` and `docker stop` of the primary's container, RUNS times each.
//!
//! `... -- idle [SECONDS]`: RSS and CPU of each idle daemon and keeper of a healthy cluster over SECONDS (60).
//!
//! `... -- health [plain|tls] [SECONDS]`: latency of the health endpoints (`/primary` on the
//! primary, `/replica` on a standby) under about 200 requests/s from `wrk` (20 connections, each
//! waiting 100 ms between requests: `bench/health-rate.lua`), over SECONDS (30); then the rate
//! the endpoint takes flat out (20 connections, no wait, 10 s). `tls`: the cluster runs with
//! mutual TLS between members and https on the API.
//!
//! `... -- backup [SCALE]`: backup figures on a pgbench database of scale SCALE (70, about 1 GB),
//! one run each (`vigil_tests::backup_bench`; scripts/backup-bench.sh).
//!
//! `... -- backup-standby [SCALE] [RUNS]`: a full backup on the standby (`run_on = "standby"`,
//! through pgvigil) against one on the primary (pgBackRest by hand), of the same pgbench data
//! (scale 20 by default), RUNS (2) times alternating (`vigil_tests::backup_standby_bench`).
//!
//! `... -- fuzz [SECONDS] [SEED]`: the fuzz targets of `vigil_tests::fuzz` (config loader, API
//! bodies and token, peer reports, raft messages, committed commands, snapshots), SECONDS (60)
//! shared evenly between them, inputs from SEED (default: the clock; printed). No cluster: the
//! daemon's own parsing functions, called in this process. Prints per target the inputs tried,
//! accepted, rejected and the panics (a broken property counts as one), with the first panic's
//! input; fails if any target panicked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_core::EventKind;
use vigil_tests::{healthy, settled, TestCluster, TlsSpec};

#[derive(Default)]
struct Log {
    /// (id, member that acknowledged it, when)
    acked: Vec<(i64, String, Instant)>,
    /// When a write (or finding a writable member) failed.
    failed: Vec<Instant>,
}

async fn writer(t: Arc<TestCluster>, log: Arc<Mutex<Log>>, stop: Arc<AtomicBool>) {
    let members: Vec<String> = t.spec().members.iter().map(|m| m.name.clone()).collect();
    let mut id: i64 = 0;
    let mut current: Option<(String, tokio_postgres::Client)> = None;
    while !stop.load(Ordering::Relaxed) {
        if current.is_none() {
            for m in &members {
                if let Ok(c) = t.client(m).await {
                    if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                        if !row.get::<_, bool>(0) {
                            current = Some((m.clone(), c));
                            break;
                        }
                    }
                }
            }
        }
        if let Some((m, c)) = &current {
            id += 1;
            let sql = format!("INSERT INTO bench VALUES ({id})");
            match tokio::time::timeout(Duration::from_secs(1), c.batch_execute(&sql)).await {
                Ok(Ok(())) => log.lock().unwrap_or_else(|p| p.into_inner()).acked.push((id, m.clone(), Instant::now())),
                _ => {
                    log.lock().unwrap_or_else(|p| p.into_inner()).failed.push(Instant::now());
                    current = None;
                }
            }
        } else {
            log.lock().unwrap_or_else(|p| p.into_inner()).failed.push(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh, settled three-member cluster with a `bench` table and the writer warmed up (50
/// acknowledged rows).
struct Running {
    t: Arc<TestCluster>,
    primary: String,
    log: Arc<Mutex<Log>>,
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start() -> anyhow::Result<Running> {
        let t = Arc::new(TestCluster::start(3, 0).await?);
        let primary = t.primary().await?;
        t.execute(&primary, "CREATE TABLE bench (id bigint primary key)").await?;
        t.wait_for("coordinator off the primary", Duration::from_secs(20), settled).await?;
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(writer(t.clone(), log.clone(), stop.clone()));
        let r = Running { t, primary, log, stop, writer };
        r.wait_acked("the writer getting going", Duration::from_secs(10), |acked| acked.len() >= 50).await?;
        Ok(r)
    }

    async fn wait_acked(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[(i64, String, Instant)]) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(&self.log.lock().unwrap_or_else(|p| p.into_inner()).acked) {
            anyhow::ensure!(Instant::now() < deadline, "no {what} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stop the writer; its log and how many acknowledged rows `member` lacks.
    async fn finish(self, member: &str) -> anyhow::Result<(Log, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.writer.await;
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        let client = self.t.client(member).await?;
        let mut missing = 0;
        for (id, _, _) in &log.acked {
            let row = client.query_one("SELECT count(*) FROM bench WHERE id = $1", &[id]).await?;
            missing += usize::from(row.get::<_, i64>(0) == 0);
        }
        Ok((log, missing))
    }
}

async fn failover_run() -> anyhow::Result<(Duration, usize, usize)> {
    let r = Running::start().await?;
    let (t, old) = (r.t.clone(), r.primary.clone());
    // The host dies: daemon and PostgreSQL, SIGKILL.
    let pg = t.postmaster_pid(&old);
    let kill_at = Instant::now();
    if let Some(pid) = t.cluster.daemon_pid(&old) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    if let Some(pid) = pg {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    r.wait_acked("write on a new primary", Duration::from_secs(60), |a| a.iter().any(|(_, m, _)| *m != old)).await?;
    let new = t.primary().await?;
    let (log, missing) = r.finish(&new).await?;
    let first_new = log.acked.iter().find(|(_, m, _)| *m != old).map(|(_, _, at)| *at - kill_at).unwrap_or_default();
    Ok((first_new, missing, log.acked.len()))
}

struct SwitchoverRun {
    /// First failed write to the first committed write after it.
    window: Duration,
    /// From the request to its answer.
    answered: Duration,
    /// From the request until the old primary streams from the new one.
    rejoined: Duration,
    rewound: bool,
    missing: usize,
    acked: usize,
}

async fn switchover_run() -> anyhow::Result<SwitchoverRun> {
    let r = Running::start().await?;
    let t = r.t.clone();
    let candidate = t.other_pg_members(&r.primary).remove(0);
    let asked = Instant::now();
    let reply = t.post(&candidate, "/switchover", &format!(r#"{{"candidate": "{candidate}"}}"#)).await?;
    let answered = asked.elapsed();
    anyhow::ensure!(reply.status == 200, "switchover refused: {reply:?}");
    r.wait_acked("write on the new primary", Duration::from_secs(60), |a| a.iter().any(|(_, m, _)| *m == candidate))
        .await?;
    let v = t
        .wait_for("the old primary streaming from the new one", Duration::from_secs(60), |v| {
            healthy(v) && v.state.primary.as_deref() == Some(candidate.as_str())
        })
        .await?;
    let rejoined = asked.elapsed();
    let rewound = v.state.history.iter().any(|e| matches!(e.kind, EventKind::Rewind | EventKind::Reclone));
    // A few more writes after the switch, so the new primary's writes are counted too.
    let after = Instant::now() + Duration::from_millis(500);
    r.wait_acked("writes after the switch", Duration::from_secs(10), |a| {
        a.last().is_some_and(|(_, _, at)| *at >= after)
    })
    .await?;
    let (log, missing) = r.finish(&candidate).await?;
    let first_failed = log.failed.iter().copied().filter(|f| *f >= asked).min();
    let window = match first_failed {
        Some(f) => log.acked.iter().map(|(_, _, at)| *at).filter(|at| *at > f).min().map_or(Duration::MAX, |a| a - f),
        None => Duration::ZERO,
    };
    Ok(SwitchoverRun { window, answered, rejoined, rewound, missing, acked: log.acked.len() })
}

fn stats(xs: &mut [Duration]) -> String {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("min {:.0} ms / median {:.0} ms / max {:.0} ms", ms(xs[0]), ms(xs[xs.len() / 2]), ms(xs[xs.len() - 1]))
}

fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    Ok(vigil_tests::unattended::cpu_ticks(pid as i32))
}

/// CPU of a PostgreSQL server: the postmaster and every process below it now, plus what its
/// exited children used (reaped by the postmaster: its cutime and cstime).
fn postgres_ticks(pm: i32) -> u64 {
    let reaped = {
        let stat = std::fs::read_to_string(format!("/proc/{pm}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        field(13) + field(14)
    };
    let live: u64 =
        vigil_pg::proctree::descendants(pm).into_iter().chain([pm]).map(vigil_tests::unattended::cpu_ticks).sum();
    reaped + live
}

/// Sessions a server has opened since its statistics began (`pg_stat_database.sessions`).
async fn sessions(t: &TestCluster, member: &str) -> anyhow::Result<u64> {
    let row = t.client(member).await?.query_one("SELECT sum(sessions)::bigint FROM pg_stat_database", &[]).await?;
    Ok(row.try_get::<_, Option<i64>>(0)?.unwrap_or(0).max(0) as u64)
}

/// Context switches of every thread of `pid` so far: how often it woke up.
fn proc_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Resident memory in kB: all of it, and the anonymous part (the rest is pages of the
/// executable and libraries, shared with every process that maps them).
fn proc_rss_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

async fn idle(seconds: u64) -> anyhow::Result<()> {
    let t = TestCluster::start(3, 0).await?;
    let names: Vec<String> = t.spec().members.iter().map(|m| m.name.clone()).collect();
    let mut pids = Vec::new();
    for n in &names {
        let pid = t.cluster.daemon_pid(n).ok_or_else(|| anyhow::anyhow!("no pid for {n}"))?;
        pids.push((n.clone(), pid, proc_cpu_ticks(pid)?, (0u64, 0u64)));
    }
    // Each member's keeper: the parent of its postmaster.
    let mut keepers = Vec::new();
    for n in &names {
        if let Some(pm) = t.postmaster_pid(n) {
            let status = std::fs::read_to_string(format!("/proc/{pm}/status"))?;
            let ppid: u32 =
                status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok()).unwrap_or(0);
            keepers.push((format!("keeper of {n}"), ppid, proc_cpu_ticks(ppid)?, (0u64, 0u64)));
        }
    }
    // Each member's PostgreSQL: the postmaster's tree, and the sessions it opened.
    let mut servers = Vec::new();
    for n in &names {
        if let Some(pm) = t.postmaster_pid(n) {
            servers.push((n.clone(), pm, postgres_ticks(pm), sessions(&t, n).await?));
        }
    }
    let hz = 100.0; // USER_HZ on Linux
    let switches: Vec<u64> = pids.iter().map(|(_, pid, _, _)| proc_switches(*pid)).collect();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        for (_, pid, _, rss) in pids.iter_mut().chain(keepers.iter_mut()) {
            let (all, anon) = proc_rss_kb(*pid)?;
            *rss = (rss.0.max(all), rss.1.max(anon));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Roles as they are at the end (the coordinator moves off the primary early on).
    let view = t.view().await?;
    for ((name, pid, c0, rss), s0) in pids.iter().zip(&switches) {
        let cpu = (proc_cpu_ticks(*pid)? - c0) as f64 / hz;
        let wakeups = proc_switches(*pid).saturating_sub(*s0) as f64 / seconds as f64;
        let role = if view.state.is_primary(name) {
            "primary"
        } else if view.coordinator == *name {
            "coordinator"
        } else {
            "standby"
        };
        println!(
            "idle daemon {name} ({role}) over {seconds} s: max RSS {:.1} MB ({:.1} MB anonymous), CPU {:.2} % of one core, {wakeups:.0} context switches/s",
            rss.0 as f64 / 1024.0,
            rss.1 as f64 / 1024.0,
            100.0 * cpu / seconds as f64
        );
    }
    for (name, pm, c0, s0) in &servers {
        let cpu = postgres_ticks(*pm).saturating_sub(*c0) as f64 / hz;
        // Minus one: the session that asks.
        let opened = sessions(&t, name).await?.saturating_sub(*s0).saturating_sub(1);
        println!(
            "idle PostgreSQL of {name} over {seconds} s: CPU {:.2} % of one core, {opened} sessions opened",
            100.0 * cpu / seconds as f64
        );
    }
    for (label, pid, c0, rss) in &keepers {
        let cpu = (proc_cpu_ticks(*pid)? - c0) as f64 / hz;
        println!(
            "idle {label} over {seconds} s: max RSS {:.1} MB ({:.1} MB anonymous), CPU {:.2} % of one core",
            rss.0 as f64 / 1024.0,
            rss.1 as f64 / 1024.0,
            100.0 * cpu / seconds as f64
        );
    }
    Ok(())
}

/// The daemon's own failures, `runs` times each (see `vigil_tests::unattended`).
async fn unattended(runs: usize) -> anyhow::Result<()> {
    use vigil_tests::unattended as u;
    let ms = |d: Duration| d.as_millis();
    for (what, hold) in [("primary's daemon stopped 12 s", 12u64), ("primary's PostgreSQL frozen 30 s", 30)] {
        let (mut firsts, mut lost, mut acked) = (Vec::new(), 0, 0);
        let (mut log_max, mut cpu_max) = (0u64, 0u64);
        for i in 1..=runs {
            let r = if hold == 12 {
                u::stalled_daemon(Duration::from_secs(hold)).await?
            } else {
                u::frozen_postgres(Duration::from_secs(hold)).await?
            };
            println!(
                "{what}, run {i}: first write elsewhere {} ms; {} acknowledged, {} missing; old daemon: +{} bytes of log, {} CPU ticks",
                ms(r.first_write), r.acked, r.missing, r.log_bytes, r.cpu_ticks
            );
            firsts.push(r.first_write);
            (lost, acked) = (lost + r.missing, acked + r.acked);
            (log_max, cpu_max) = (log_max.max(r.log_bytes), cpu_max.max(r.cpu_ticks));
        }
        println!(
            "{what} over {runs} runs: write gap {}; missing {lost} of {acked}; old daemon at most +{log_max} bytes of log, {:.1} % of a core",
            stats(&mut firsts),
            cpu_max as f64 / hold as f64
        );
    }
    let (mut gaps, mut lost, mut acked) = (Vec::new(), 0, 0);
    for i in 1..=runs {
        let r = u::sigterm_primary().await?;
        println!(
            "SIGTERM on the primary, run {i}: longest write gap {} ms; {} acknowledged, {} missing",
            ms(r.gap),
            r.acked,
            r.missing
        );
        gaps.push(r.gap);
        (lost, acked) = (lost + r.missing, acked + r.acked);
    }
    println!("SIGTERM on the primary over {runs} runs: write gap {}; missing {lost} of {acked}", stats(&mut gaps));
    for role in ["standby", "primary"] {
        let (mut refused, mut back, mut same) = (Vec::new(), Vec::new(), 0);
        for i in 1..=runs {
            let r = u::restart_daemon(role).await?;
            println!(
                "{role} daemon restart, run {i}: PostgreSQL refused queries for {} ms; same postmaster: {}; daemon back after {} ms",
                ms(r.refused), r.same_postmaster, ms(r.back_after)
            );
            refused.push(r.refused);
            back.push(r.back_after);
            same += usize::from(r.same_postmaster);
        }
        println!(
            "{role} daemon restart over {runs} runs: PostgreSQL downtime {}; same postmaster {same} of {runs}; daemon back {}",
            stats(&mut refused),
            stats(&mut back)
        );
    }
    Ok(())
}

/// What `wrk --latency` printed, in milliseconds and requests.
#[derive(Debug, Default)]
struct WrkRun {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    requests: u64,
    rate: f64,
    non_2xx: u64,
    socket_errors: String,
}

/// `250.00us`, `1.20ms`, `2.00s` in milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    n.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> WrkRun {
    let mut r = WrkRun { socket_errors: "none".into(), ..Default::default() };
    for line in out.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["50%", v] => r.p50 = wrk_ms(v).unwrap_or(f64::NAN),
            ["90%", v] => r.p90 = wrk_ms(v).unwrap_or(f64::NAN),
            ["99%", v] => r.p99 = wrk_ms(v).unwrap_or(f64::NAN),
            ["Latency", _avg, _stdev, max, _] => r.max = wrk_ms(max).unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Requests/sec:", v] => r.rate = v.parse().unwrap_or(f64::NAN),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            _ if line.starts_with("Socket errors:") => r.socket_errors = line["Socket errors:".len()..].trim().into(),
            _ => {}
        }
    }
    r
}

/// Run wrk with 2 threads and `connections` connections for `seconds` against `url`; with
/// `delay_ms`, each connection waits that long between requests (the rate-holding script).
fn wrk(url: &str, seconds: u64, connections: u32, delay_ms: Option<u32>) -> anyhow::Result<WrkRun> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(std::path::Path::new("."));
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "--timeout", "2s"]);
    if let Some(d) = delay_ms {
        cmd.arg("-s").arg(root.join("bench/health-rate.lua")).env("DELAY_MS", d.to_string());
    }
    let out = cmd.arg(url).output().map_err(|e| anyhow::anyhow!("run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    Ok(parse_wrk(&text))
}

async fn health(tls: bool, seconds: u64) -> anyhow::Result<()> {
    let t =
        if tls { TestCluster::start_tls(3, 0, TlsSpec::default()).await? } else { TestCluster::start(3, 0).await? };
    let v = t.wait_for("coordinator off the primary", Duration::from_secs(20), settled).await?;
    let primary = v.state.primary.clone().unwrap_or_default();
    let standby = t.other_pg_members(&primary).remove(0);
    t.wait_http(&primary, "/primary", 200, Duration::from_secs(30)).await?;
    t.wait_http(&standby, "/replica", 200, Duration::from_secs(30)).await?;
    let mode = if tls { "https (cluster with mutual TLS)" } else { "http" };
    for (member, role, path) in [(&primary, "primary", "/primary"), (&standby, "standby", "/replica")] {
        let base = t.api(member);
        let url = if base.starts_with("https://") { format!("{base}{path}") } else { format!("http://{base}{path}") };
        let held = wrk(&url, seconds, 20, Some(100))?;
        println!(
            "{mode} GET {path} on the {role}, ~200 req/s (20 connections x 1 request per 100 ms) for {seconds} s: \
             {} requests, {:.1} req/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             non-2xx {}; socket errors {}",
            held.requests, held.rate, held.p50, held.p90, held.p99, held.max, held.non_2xx, held.socket_errors
        );
        let flat = wrk(&url, 10, 20, None)?;
        println!(
            "{mode} GET {path} on the {role}, flat out (20 connections, no wait) for 10 s: {:.0} req/s; \
             latency p50 {:.2} ms, p99 {:.2} ms; non-2xx {}; socket errors {}",
            flat.rate, flat.p50, flat.p99, flat.non_2xx, flat.socket_errors
        );
    }
    let after = t.view().await?;
    println!(
        "cluster after the runs: epoch {} (was {}), primary {:?}",
        after.state.epoch,
        v.state.epoch,
        after.state.primary.as_deref().unwrap_or("none")
    );
    Ok(())
}

fn fuzz(seconds: u64, seed: Option<u64>) -> anyhow::Result<()> {
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("fuzz: {seconds} s over the targets, seed {seed}");
    let tallies = vigil_tests::fuzz::run(Duration::from_secs(seconds), seed);
    println!("{:<14} {:>10} {:>10} {:>10} {:>7}", "target", "tried", "accepted", "rejected", "panics");
    for t in &tallies {
        println!("{:<14} {:>10} {:>10} {:>10} {:>7}", t.name, t.tried, t.accepted, t.rejected, t.panics);
    }
    let tried: u64 = tallies.iter().map(|t| t.tried).sum();
    let panics: u64 = tallies.iter().map(|t| t.panics).sum();
    println!("fuzz: {tried} inputs in all, {panics} panics");
    for t in tallies.iter().filter(|t| t.first_panic.is_some()) {
        println!("first panic of {}: {}", t.name, t.first_panic.as_deref().unwrap_or_default());
    }
    anyhow::ensure!(panics == 0, "{panics} inputs made a target panic (seed {seed})");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("failover") => {
            let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
            let mut times = Vec::new();
            let mut lost = 0;
            for i in 1..=runs {
                let (d, missing, acked) = failover_run().await?;
                println!(
                    "run {i}: kill -> first write on the new primary {} ms; {acked} acknowledged, {missing} missing",
                    d.as_millis()
                );
                times.push(d);
                lost += missing;
            }
            println!("failover over {runs} runs: {}; acknowledged writes missing in all: {lost}", stats(&mut times));
        }
        Some("switchover") => {
            let runs: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
            let (mut windows, mut answers, mut rejoins) = (Vec::new(), Vec::new(), Vec::new());
            let (mut lost, mut acked_all, mut rewinds) = (0, 0, 0);
            for i in 1..=runs {
                let r = switchover_run().await?;
                println!(
                    "run {i}: writes unavailable {} ms; request answered in {} ms; old primary streaming after {} ms ({}); {} acknowledged, {} missing",
                    r.window.as_millis(),
                    r.answered.as_millis(),
                    r.rejoined.as_millis(),
                    if r.rewound { "rewound" } else { "no rewind" },
                    r.acked,
                    r.missing
                );
                windows.push(r.window);
                answers.push(r.answered);
                rejoins.push(r.rejoined);
                lost += r.missing;
                acked_all += r.acked;
                rewinds += usize::from(r.rewound);
            }
            println!("switchover over {runs} runs: write unavailability {}", stats(&mut windows));
            println!("  request answered: {}", stats(&mut answers));
            println!("  old primary streaming again: {}; rewinds: {rewinds}", stats(&mut rejoins));
            println!("  acknowledged writes missing in all: {lost} of {acked_all}");
        }
        Some("unattended") => unattended(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5)).await?,
        Some("idle") => idle(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60)).await?,
        Some("health") => {
            let tls = match args.get(1).map(String::as_str) {
                Some("tls") => true,
                Some("plain") | None => false,
                Some(other) => anyhow::bail!("health: plain or tls, not {other:?}"),
            };
            health(tls, args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30)).await?
        }
        // Containers (scripts/docker-figures.sh): compose up, docker kill / docker stop of the primary.
        Some("docker") => {
            let runs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
            tokio::task::spawn_blocking(move || vigil_tests::compose_bench::run(runs)).await??
        }
        Some("backup") => vigil_tests::backup_bench::run_bench(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(70)).await?,
        Some("backup-standby") => {
            let scale = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
            vigil_tests::backup_standby_bench::run_bench(scale, args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2)).await?
        }
        Some("fuzz") => fuzz(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60), args.get(2).and_then(|s| s.parse().ok()))?,
        _ => anyhow::bail!("usage: bench failover [RUNS] | bench switchover [RUNS] | bench unattended [RUNS] | bench idle [SECONDS] | bench health [plain|tls] [SECONDS] | bench fuzz [SECONDS] [SEED] | bench docker [RUNS] | bench backup [SCALE] | bench backup-standby [SCALE] [RUNS]"),
    }
    Ok(())
}
