//! Figures of the container tier (`bench docker [RUNS]`, run by scripts/docker-figures.sh): the
//! time from `up` to a healthy cluster, and for `docker kill` and `docker stop` of the primary's
//! container the write gap and the acknowledged writes lost, seen by a client that writes through
//! the published ports.
//!
//! The writer tries one INSERT with a fresh id every 20 ms on every member's published PostgreSQL
//! port (a client that does not know who the primary is, as behind a router), each with a cached
//! connection and a 1 s bound. The *write gap* of a run is the longest time without an
//! acknowledged write from 1 s before the fault until 2 s after the first acknowledgement by the
//! new primary. *Lost* counts the acknowledged ids missing from the new primary once the old one
//! has rejoined.

use crate::compose::{wait_until, Compose};
use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TABLE: &str = "bench_writes";

#[derive(Default)]
struct Log {
    /// (id, member, when acknowledged)
    acked: Vec<(i64, String, Instant)>,
}

struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(targets: Vec<(String, u16)>, password: String) -> anyhow::Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let (s, l) = (stop.clone(), log.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::spawn(move || rt.block_on(write_loop(targets, password, s, l)));
        Ok(Writer { stop, log, thread: Some(thread) })
    }

    fn acked(&self) -> Vec<(i64, String, Instant)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).acked.clone()
    }

    fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).acked.clear();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_loop(targets: Vec<(String, u16)>, password: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let next = Arc::new(AtomicI64::new(1));
    let mut tasks = Vec::new();
    for (name, port) in targets {
        let (stop, log, next, password) = (stop.clone(), log.clone(), next.clone(), password.clone());
        tasks.push(tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut last_error = String::new();
            eprintln!("writer to {name}: 127.0.0.1:{port}");
            while !stop.load(Ordering::Relaxed) {
                let tick = tokio::time::sleep(Duration::from_millis(20));
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    let conf = format!(
                        "host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres connect_timeout=1"
                    );
                    client = match tokio::time::timeout(
                        Duration::from_secs(1),
                        tokio_postgres::connect(&conf, tokio_postgres::NoTls),
                    )
                    .await
                    {
                        Ok(Ok((c, conn))) => {
                            tokio::spawn(conn);
                            Some(c)
                        }
                        Ok(Err(e)) => {
                            note(&mut last_error, &name, format!("connect: {e}"));
                            None
                        }
                        Err(_) => {
                            note(&mut last_error, &name, "connect: no answer within 1 s".into());
                            None
                        }
                    };
                }
                if let Some(c) = &client {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let sql = format!("INSERT INTO {TABLE} (id, member) VALUES ($1, $2)");
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &name];
                    match tokio::time::timeout(Duration::from_secs(1), c.execute(&sql, &params)).await {
                        Ok(Ok(_)) => {
                            log.lock().unwrap_or_else(|p| p.into_inner()).acked.push((id, name.clone(), Instant::now()))
                        }
                        Ok(Err(e)) => note(&mut last_error, &name, format!("insert: {e}")),
                        Err(_) => {
                            note(&mut last_error, &name, "insert: no answer within 1 s".into());
                            client = None
                        }
                    }
                }
                tick.await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Print a writer's error when it differs from the last one printed for that member.
fn note(last: &mut String, member: &str, error: String) {
    if *last != error {
        eprintln!("writer to {member}: {error}");
        *last = error;
    }
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct Run {
    pub gap: Duration,
    pub acked: usize,
    pub lost: usize,
    pub new_primary: String,
}

fn measure(
    c: &mut Compose,
    w: &Writer,
    old: &str,
    fault: impl FnOnce(&Compose) -> anyhow::Result<()>,
) -> anyhow::Result<Run> {
    let all: Vec<String> = c.databases.clone();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    w.clear();
    // Writes flowing to the old primary first.
    wait_until("writes acknowledged before the fault", Duration::from_secs(30), || {
        Ok(w.acked().iter().any(|(_, m, _)| m == old).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let t_fault = Instant::now();
    fault(c)?;
    let others: Vec<&str> = all.iter().copied().filter(|s| *s != old).collect();
    let asked = others.iter().copied().find(|s| *s != "db1").unwrap_or(others[0]);
    let new = c.wait_healthy(asked, Some(old), &others, Duration::from_secs(90))?;
    let first_new = wait_until("a write acknowledged by the new primary", Duration::from_secs(30), || {
        Ok(w.acked().iter().filter(|(_, m, at)| *m == new && *at > t_fault).map(|(_, _, at)| *at).min())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let acked = w.acked();
    let window_start = t_fault - Duration::from_secs(1);
    let window_end = first_new + Duration::from_secs(2);
    let mut times: Vec<Instant> =
        acked.iter().map(|(_, _, at)| *at).filter(|at| *at >= window_start && *at <= window_end).collect();
    times.sort();
    let mut gap = Duration::ZERO;
    let mut prev = window_start;
    for t in times {
        gap = gap.max(t - prev);
        prev = t;
    }
    // The old primary back as a standby, then every acknowledged id must be on the new primary.
    c.start(old)?;
    c.wait_healthy(asked, None, &all, Duration::from_secs(120))?;
    let max_id = acked.iter().map(|(id, _, _)| *id).max().unwrap_or(0);
    let present: std::collections::HashSet<i64> = c
        .sql(&new, &format!("SELECT id FROM {TABLE} WHERE id <= {max_id}"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost = acked.iter().filter(|(id, _, _)| !present.contains(id)).count();
    Ok(Run { gap, acked: acked.len(), lost, new_primary: new })
}

fn summary(name: &str, runs: &[Run]) {
    let mut gaps: Vec<f64> = runs.iter().map(|r| r.gap.as_secs_f64()).collect();
    gaps.sort_by(|a, b| a.total_cmp(b));
    let lost: Vec<String> = runs.iter().map(|r| r.lost.to_string()).collect();
    let acked: usize = runs.iter().map(|r| r.acked).sum();
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {} | {acked} |",
        runs.len(),
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        lost.join(", ")
    );
}

/// `bench docker RUNS`: prints the figures as Markdown.
pub fn run(runs: usize) -> anyhow::Result<()> {
    let mut ups = Vec::new();
    let mut kill_runs = Vec::new();
    let mut stop_runs = Vec::new();
    for kind in ["kill", "stop"] {
        let mut c = Compose::classic(&format!("bench-{kind}"))?;
        let t = Instant::now();
        c.up()?;
        let mut primary = c.wait_healthy("db3", None, &["db1", "db2", "db3"], Duration::from_secs(180))?;
        ups.push(t.elapsed());
        c.sql(&primary, &format!("CREATE TABLE {TABLE} (id bigint PRIMARY KEY, member text NOT NULL)"))?;
        let password = c.exec("db1", &["cat", "/etc/pgvigil/secrets/superuser.password"])?.trim().to_string();
        let targets =
            c.databases.iter().map(|s| Ok((s.clone(), c.port(s, "PG")?))).collect::<anyhow::Result<Vec<_>>>()?;
        let w = Writer::start(targets, password)?;
        for i in 0..runs {
            let old = primary.clone();
            let r = match kind {
                "kill" => measure(&mut c, &w, &old, |c| c.kill(&old)),
                _ => measure(&mut c, &w, &old, |c| c.stop(&old).map(drop)),
            }
            .with_context(|| format!("docker {kind}, run {}", i + 1))?;
            eprintln!(
                "docker {kind} run {}: {old} -> {}, gap {:?}, {} acked, {} lost",
                i + 1,
                r.new_primary,
                r.gap,
                r.acked,
                r.lost
            );
            primary = r.new_primary.clone();
            if kind == "kill" {
                kill_runs.push(r);
            } else {
                stop_runs.push(r);
            }
        }
    }
    let ups_s: Vec<String> = ups.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect();
    println!("compose up to a healthy cluster (one primary, two streaming), s: {}", ups_s.join(", "));
    println!();
    println!(
        "| fault | runs | write gap min (s) | median | max | acknowledged writes lost per run | writes acknowledged |"
    );
    println!("|---|---|---|---|---|---|---|");
    summary("docker kill (primary's container)", &kill_runs);
    summary("docker stop (primary's container)", &stop_runs);
    Ok(())
}
