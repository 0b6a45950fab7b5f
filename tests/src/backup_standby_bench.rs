//! A backup on a standby against a backup on the primary, of the same data (`bench
//! backup-standby [SCALE] [RUNS]`; BENCHMARKS.md "A backup on a standby"). A fresh cluster of
//! two PostgreSQL members and a witness with mutual TLS and `[backup] run_on = "standby"` (each
//! member runs pgBackRest's TLS server), a posix repository in its directory, `pgbench -i` of
//! SCALE (20, about 300 MB). Then RUNS times, alternating, a full backup:
//!
//! - on the standby: `POST /backup` (placed on the standby by the coordinator), its recorded
//!   outcome (pgBackRest's start and stop) and the wall time until it is recorded;
//! - on the primary: `pgbackrest --type=full backup` by hand with the primary's own
//!   configuration (pg1 local), its wall time and pgBackRest's start and stop from `info`.
//!
//! Everything lives under the cluster's temporary directory and goes with it.

use crate::backup::{backups, records, repo, wait_recorded};
use crate::backup_bench::{caught_up, pgbackrest_by_hand, LONG};
use crate::{settled, TestCluster, TlsSpec};
use anyhow::Context;
use std::time::{Duration, Instant};

/// pgBackRest's own duration of the newest backup (`info`), in seconds.
async fn newest_backup_secs(t: &TestCluster, member: &str) -> anyhow::Result<(String, u64)> {
    let (_, text) = pgbackrest_by_hand(t, member, &["info", "--output=json"]).await?;
    let info: serde_json::Value = serde_json::from_str(&text)?;
    let b = info[0]["backup"].as_array().and_then(|a| a.last()).context("no backup in info")?;
    let took =
        b["timestamp"]["stop"].as_u64().unwrap_or(0).saturating_sub(b["timestamp"]["start"].as_u64().unwrap_or(0));
    Ok((b["label"].as_str().unwrap_or_default().to_string(), took))
}

pub async fn run_bench(scale: u32, runs: usize) -> anyhow::Result<()> {
    let mut t = TestCluster::prepare_tls(2, 1, TlsSpec::default(), |s| {
        s.backup = vec![
            "stanza = \"main\"".into(),
            format!("repo_path = {:?}", repo(s).display().to_string()),
            "archive_timeout = \"60s\"".into(),
            "timeout = \"30m\"".into(),
            "run_on = \"standby\"".into(),
            "server_host = \"localhost\"".into(),
        ];
    })?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza and TLS servers", Duration::from_secs(120), |v| {
        settled(v)
            && v.state.backup.stanza_ready.is_some()
            && v.reports.values().filter(|r| r.backup_source.is_some()).count() == 2
    })
    .await?;
    let primary = t.primary().await?;
    let standby = t.other_pg_members(&primary).into_iter().next().context("a standby")?;
    println!("bench backup-standby: scale {scale}, {runs} runs each, {}", t.spec().dir.display());
    let port = t.spec().member(&primary).map(|m| m.pg_port.to_string()).unwrap_or_default();
    let started = Instant::now();
    let out = tokio::process::Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-i",
            "-q",
            "-s",
            &scale.to_string(),
            "-I",
            "dtGvp",
            "postgres",
        ])
        .env("PGPASSWORD", &t.spec().superuser_password)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
    let c = t.client(&primary).await?;
    let size: String = c.query_one("SELECT pg_size_pretty(pg_database_size('postgres'))", &[]).await?.get(0);
    println!("pgbench -i -s {scale}: {size} in {:.1} s", started.elapsed().as_secs_f64());
    t.wait_rows(&standby, "pgbench_branches", i64::from(scale), LONG).await?;

    let mut rows = Vec::new();
    for run in 1..=runs {
        // On the standby, through pgvigil, once it has replayed everything (both start alike).
        caught_up(&t, &primary).await?;
        let began = Instant::now();
        let r = t.http(&primary, "POST", "/backup", Some(&t.token()), Some(r#"{"type": "full"}"#)).await?;
        anyhow::ensure!(r.status == 202, "POST /backup: {} {}", r.status, r.text);
        let id = r.json["id"].as_u64().context("id")?;
        let rec = wait_recorded(&t, &primary, "the standby backup", LONG, records, |x| x["id"] == id).await?;
        let wall = began.elapsed();
        anyhow::ensure!(rec["outcome"]["error"].is_null(), "standby backup failed: {rec}");
        let o = &rec["outcome"];
        let pgbr =
            o["stopped_unix_ms"].as_u64().unwrap_or(0).saturating_sub(o["started_unix_ms"].as_u64().unwrap_or(0));
        let on = rec["member"].as_str().unwrap_or("?");
        let place = if on == primary { "the PRIMARY (fell back)" } else { "standby" };
        let line = format!(
            "| {run} | {place} ({on}) through pgvigil | {:.1} s | {} s | {} |",
            wall.as_secs_f64(),
            pgbr / 1000,
            o["label"].as_str().unwrap_or("?")
        );
        println!("{line}");
        rows.push(line);
        // On the primary, by hand with its own configuration.
        caught_up(&t, &primary).await?;
        let (wall, _) = pgbackrest_by_hand(&t, &primary, &["--type=full", "backup"]).await?;
        let (label, secs) = newest_backup_secs(&t, &primary).await?;
        let line = format!(
            "| {run} | primary ({primary}) pgbackrest by hand | {:.1} s | {secs} s | {label} |",
            wall.as_secs_f64()
        );
        println!("{line}");
        rows.push(line);
    }
    let listed = backups(&t, &primary).await?;
    println!("repository holds {} backups", listed["repository"][0]["backup"].as_array().map_or(0, Vec::len));
    println!();
    println!("| run | where | wall | pgBackRest start-stop | label |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
