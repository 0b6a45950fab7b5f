//! Backup figures on a database of about 1 GB (`bench backup [SCALE]`, pgbench scale 70 by
//! default; BENCHMARKS.md "Backups"), one run each, on a fresh cluster of two PostgreSQL members
//! and a witness with a posix repository in its directory:
//!
//! - a full and an incremental backup through `pgvigil backup` against the same `pgbackrest
//!   backup` run by hand with the member's own configuration (wall time of the whole command);
//! - a standby re-created from the repository (`POST /reinit` with `clone_from_repo`) against
//!   `pg_basebackup` of the primary by hand into a scratch directory;
//! - `pgvigil restore` of the stanza into a new cluster's data directory, to the end of the
//!   archive;
//! - kill -9 of the primary's host under a pgbench write load: the time until the new primary's
//!   archiver pushes again and until the first WAL segment of the new timeline is in the
//!   archive, and the archive's gap afterwards (every segment of the old timeline up to the
//!   switch and of the new one, from the repository's listing), with `pgbackrest verify`'s exit
//!   status and `pgbackrest info`'s archive range.
//!
//! Everything lives under the cluster's temporary directory and goes with it.

use crate::backup::{archived_files, repo, wait_until};
use crate::{new_primary_writable, settled, TestCluster};
use anyhow::Context;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vigil_core::EventKind;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long any one step of a bench may take.
pub(crate) const LONG: Duration = Duration::from_secs(1800);

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Run a program to completion (killed after [`LONG`]); its stdout, or an error with its output.
async fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(LONG, cmd.output()).await.with_context(|| format!("{program}: timed out"))??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// Wall time of one command.
async fn timed(program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let out = run(program, args, env).await?;
    Ok((started.elapsed(), out))
}

struct Bench {
    t: TestCluster,
    primary: String,
    standby: String,
    password: String,
}

impl Bench {
    fn port(&self, member: &str) -> String {
        self.t.spec().member(member).map(|m| m.pg_port.to_string()).unwrap_or_default()
    }

    async fn pgbackrest(&self, member: &str, args: &[&str]) -> anyhow::Result<(Duration, String)> {
        pgbackrest_by_hand(&self.t, member, args).await
    }

    async fn pgbench(&self, member: &str, args: &[&str]) -> anyhow::Result<String> {
        let port = self.port(member);
        let mut all = vec!["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        run(&format!("{PG_BIN}/pgbench"), &all, &[("PGPASSWORD", &self.password)]).await
    }

    /// `pgvigil backup --type <kind>` with the primary's config; its wall time.
    async fn pgvigil_backup(&self, kind: &str) -> anyhow::Result<(Duration, String)> {
        let config = self.t.spec().config_path(&self.primary).display().to_string();
        let bin = crate::pgvigil_bin().display().to_string();
        timed(&bin, &["backup", "--type", kind, "--config", &config], &[]).await
    }

    async fn caught_up(&self) -> anyhow::Result<()> {
        caught_up(&self.t, &self.primary).await
    }
}

/// `pgbackrest <args>` by hand on the cluster's stanza, as PostgreSQL's user, with `member`'s
/// configuration; its wall time and output.
pub(crate) async fn pgbackrest_by_hand(
    t: &TestCluster,
    member: &str,
    args: &[&str],
) -> anyhow::Result<(Duration, String)> {
    let config = format!("--config={}", t.spec().state_dir(member).join("pgbackrest/pgbackrest.conf").display());
    let mut all = vec!["-u", "postgres", "--", "pgbackrest", &config, "--stanza=main"];
    all.extend_from_slice(args);
    timed("runuser", &all, &[]).await
}

/// Wait until a standby has replayed everything `primary` wrote.
pub(crate) async fn caught_up(t: &TestCluster, primary: &str) -> anyhow::Result<()> {
    wait_until("the standby caught up", LONG, || async {
        let c = t.client(primary).await?;
        let row = c
            .query_one("SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= pg_current_wal_lsn()", &[])
            .await?;
        Ok(row.get::<_, i64>(0) >= 1)
    })
    .await
}

pub async fn run_bench(scale: u32) -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(2, 1, |s| {
        s.backup = vec![
            "stanza = \"main\"".into(),
            format!("repo_path = {:?}", repo(s).display().to_string()),
            "archive_timeout = \"60s\"".into(),
            "timeout = \"30m\"".into(),
            "clone_from_repo = true".into(),
        ];
        // pg_basebackup by hand as the superuser.
        s.hba_extra.push("host replication postgres 127.0.0.1/32 scram-sha-256".into());
    })?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", Duration::from_secs(120), |v| {
        settled(v) && v.state.backup.stanza_ready.is_some()
    })
    .await?;
    let primary = t.primary().await?;
    let standby = t.other_pg_members(&primary).into_iter().next().context("a standby")?;
    let password = t.spec().superuser_password.clone();
    let b = Bench { t, primary, standby, password };
    println!("bench backup: scale {scale}, {} cores, {}", num_cores(), b.t.spec().dir.display());

    let started = Instant::now();
    b.pgbench(&b.primary, &["-i", "-q", "-s", &scale.to_string(), "-I", "dtGvp"]).await?;
    let c = b.t.client(&b.primary).await?;
    let size: String = c.query_one("SELECT pg_size_pretty(pg_database_size('postgres'))", &[]).await?.get(0);
    println!("pgbench -i -s {scale}: {size} in {}", secs(started.elapsed()));
    b.caught_up().await?;

    // Full: through pgvigil, then by hand.
    let (full_vigil, out) = b.pgvigil_backup("full").await?;
    println!("full through pgvigil backup: {} ({})", secs(full_vigil), out.trim().lines().last().unwrap_or_default());
    let (full_hand, _) = b.pgbackrest(&b.primary, &["--type=full", "backup"]).await?;
    println!("full by hand (pgbackrest backup): {}", secs(full_hand));

    // Incremental after 10 s of pgbench writes each.
    b.pgbench(&b.primary, &["-n", "-N", "-c", "2", "-j", "2", "-T", "10"]).await?;
    let (incr_vigil, _) = b.pgvigil_backup("incr").await?;
    println!("incr through pgvigil backup (after 10 s of pgbench -N): {}", secs(incr_vigil));
    b.pgbench(&b.primary, &["-n", "-N", "-c", "2", "-j", "2", "-T", "10"]).await?;
    let (incr_hand, _) = b.pgbackrest(&b.primary, &["--type=incr", "backup"]).await?;
    println!("incr by hand (after 10 s of pgbench -N): {}", secs(incr_hand));
    let info = b.pgbackrest(&b.primary, &["info"]).await?.1;
    println!("{}", info.trim_end());

    // A member from the repository against pg_basebackup.
    b.caught_up().await?;
    let reinit = reinit_from_repo(&b).await?;
    let scratch = b.t.spec().dir.join("basebackup-scratch");
    let port = b.port(&b.primary);
    let scratch_arg = scratch.display().to_string();
    let (basebackup, _) = timed(
        &format!("{PG_BIN}/pg_basebackup"),
        &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", &scratch_arg, "-X", "stream", "-c", "fast"],
        &[("PGPASSWORD", &b.password)],
    )
    .await?;
    println!("pg_basebackup -X stream -c fast by hand into a scratch directory: {}", secs(basebackup));
    std::fs::remove_dir_all(&scratch).ok();

    // pgvigil restore into a new cluster's first member (never started), to the end of the archive.
    let restore = restore_elsewhere(&b).await?;

    // kill -9 failover under a write load.
    let failover = failover_under_load(b).await?;

    println!();
    println!("| what | pgvigil | by hand |");
    println!("|---|---|---|");
    println!("| full backup ({size}) | {} | {} (pgbackrest backup) |", secs(full_vigil), secs(full_hand));
    println!(
        "| incr backup (after 10 s of pgbench -N) | {} | {} (pgbackrest backup) |",
        secs(incr_vigil),
        secs(incr_hand)
    );
    println!(
        "| standby created | {} (reinit from the repository, to streaming) | {} (pg_basebackup) |",
        secs(reinit),
        secs(basebackup)
    );
    println!("| restore to the end of the archive | {} (pgvigil restore) | |", secs(restore));
    println!("| kill -9 failover under pgbench -N | {failover} | |");
    Ok(())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

/// `POST /reinit` of the standby (the cluster has `clone_from_repo`): until it streams again.
async fn reinit_from_repo(b: &Bench) -> anyhow::Result<Duration> {
    let token = b.t.token();
    let started = Instant::now();
    let since = unix_ms();
    let body = format!(r#"{{"member": "{}"}}"#, b.standby);
    let r = pgvigil::client::request(&b.t.api(&b.primary), "POST", "/reinit", Some(&token), Some(&body), LONG).await?;
    anyhow::ensure!(r.status == 200, "reinit: {r:?}");
    let standby = b.standby.clone();
    let v =
        b.t.wait_for("the standby re-created and streaming", LONG, |v| {
            v.state.history.iter().any(|e| e.kind == EventKind::Reclone && e.member == standby && e.at_unix_ms >= since)
                && v.reports.get(&standby).is_some_and(|r| r.pg.running && r.pg.in_recovery && r.pg.streaming)
        })
        .await?;
    let took = started.elapsed();
    let event = v.state.history.iter().rev().find(|e| e.kind == EventKind::Reclone && e.member == standby);
    println!(
        "standby re-created (POST /reinit) and streaming after {}: {}",
        secs(took),
        event.map(|e| e.detail.as_str()).unwrap_or("")
    );
    anyhow::ensure!(
        event.is_some_and(|e| e.detail.contains("from the repository")),
        "the standby was not cloned from the repository: {event:?}"
    );
    Ok(took)
}

/// `pgvigil restore` of stanza main into the first member of a new (never started) cluster.
async fn restore_elsewhere(b: &Bench) -> anyhow::Result<Duration> {
    let shared = repo(b.t.spec());
    let dst = TestCluster::prepare(1, 1, |s| {
        s.backup = vec!["stanza = \"restored\"".into(), format!("repo_path = {:?}", shared.display().to_string())];
    })?;
    let first = dst.spec().members[0].name.clone();
    let config = dst.spec().config_path(&first).display().to_string();
    let bin = crate::pgvigil_bin().display().to_string();
    let (took, out) = timed(&bin, &["restore", "--config", &config, "--from-stanza", "main"], &[]).await?;
    println!("pgvigil restore (end of the archive): {}: {}", secs(took), out.trim());
    Ok(took)
}

/// Segment number of a WAL file name (`TTTTTTTTLLLLLLLLSSSSSSSS`): timeline and position.
fn segment(name: &str) -> Option<(u32, u64)> {
    let n = name.get(..24)?;
    if !n.chars().all(|c| c.is_ascii_hexdigit()) || name.get(24..25).is_some_and(|c| c != "-") {
        return None;
    }
    let tli = u32::from_str_radix(&n[..8], 16).ok()?;
    let log = u64::from_str_radix(&n[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&n[16..], 16).ok()?;
    Some((tli, log * 256 + seg))
}

/// Missing segments of the archive: on `old_tli` from its first archived segment up to the one
/// before `switch` (where the new timeline starts), on `new_tli` from `switch` to its last.
fn archive_gap(repo: &Path, old_tli: u32, new_tli: u32, switch: u64) -> (usize, String) {
    let files = archived_files(repo);
    let on = |tli: u32| -> std::collections::BTreeSet<u64> {
        files.iter().filter_map(|f| segment(f)).filter(|(t, _)| *t == tli).map(|(_, s)| s).collect()
    };
    let (old, new) = (on(old_tli), on(new_tli));
    let mut missing = Vec::new();
    if let Some(first) = old.first() {
        missing.extend((*first..switch).filter(|s| !old.contains(s)).map(|s| (old_tli, s)));
    }
    if let Some(last) = new.last() {
        missing.extend((switch..=*last).filter(|s| !new.contains(s)).map(|s| (new_tli, s)));
    }
    let range = format!(
        "timeline {old_tli}: {} segments from {:?} to {:?}; timeline {new_tli}: {} segments from {:?} to {:?}; switch at {switch}",
        old.len(),
        old.first(),
        old.last(),
        new.len(),
        new.first(),
        new.last()
    );
    let names: Vec<String> = missing.iter().map(|(t, s)| format!("{t:08X}{:08X}{:08X}", s / 256, s % 256)).collect();
    (missing.len(), format!("{range}; missing {names:?}"))
}

/// `pgbench -N` with 4 clients against `port` for up to 10 minutes, killed when dropped.
fn write_load(b: &Bench, port: &str) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(format!("{PG_BIN}/pgbench"))
        .args(["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-n", "-N", "-c", "4", "-j", "2", "-T", "600"])
        .arg("postgres")
        .env("PGPASSWORD", &b.password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn failover_under_load(mut b: Bench) -> anyhow::Result<String> {
    let port = b.port(&b.primary);
    let mut load = write_load(&b, &port)?;
    // Let the load run: the archive is behind by whatever the primary has not pushed yet.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let c = b.t.client(&b.primary).await?;
    let ready: i64 =
        c.query_one("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'", &[]).await?.get(0);
    let old = b.primary.clone();
    let killed_unix = unix_ms();
    let killed = Instant::now();
    b.t.kill_host(&old);
    let _ = load.kill().await;
    let v = b.t.wait_for("a new writable primary", Duration::from_secs(120), |v| new_primary_writable(v, &old)).await?;
    let writable = killed.elapsed();
    let new = v.state.primary.clone().context("a primary")?;
    // The new primary's first push after the kill.
    let mut first_push = None;
    let mut tli = 0u32;
    let until = Instant::now() + Duration::from_secs(300);
    while first_push.is_none() && Instant::now() < until {
        if let Ok(c) = b.t.client(&new).await {
            let row = c
                .query_one(
                    "SELECT coalesce(extract(epoch FROM last_archived_time) * 1000, 0)::float8, \
                     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
                     FROM pg_stat_archiver",
                    &[],
                )
                .await;
            if let Ok(row) = row {
                tli = row.get::<_, i32>(1) as u32;
                if row.get::<_, f64>(0) as u64 >= killed_unix {
                    first_push = Some(killed.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes on the new primary until a segment of its timeline is in the archive.
    let new_port = b.port(&new);
    let mut load = write_load(&b, &new_port)?;
    let repo = repo(b.t.spec());
    let new_segment = wait_until("a segment of the new timeline in the archive", Duration::from_secs(600), || {
        let repo = repo.clone();
        async move { Ok(archived_files(&repo).iter().filter_map(|f| segment(f)).any(|(t, _)| t == tli)) }
    })
    .await
    .map(|()| killed.elapsed());
    let _ = load.kill().await;
    let new_segment = new_segment?;
    // The new primary's backlog pushed, then the gap.
    let c = b.t.client(&new).await?;
    c.query_one("SELECT pg_switch_wal()::text", &[]).await?;
    let (t, member) = (&b.t, new.as_str());
    wait_until("the new primary's .ready files pushed", Duration::from_secs(600), move || async move {
        let c = t.client(member).await?;
        let n: i64 =
            c.query_one("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'", &[]).await?.get(0);
        Ok(n == 0)
    })
    .await?;
    let history = format!("pg_wal/{tli:08X}.history");
    let text: String = c.query_one("SELECT pg_read_file($1)", &[&history]).await?.get(0);
    let last = text.lines().rfind(|l| !l.trim().is_empty()).context("a history line")?;
    let mut fields = last.split_whitespace();
    let parent: u32 = fields.next().context("parent timeline")?.parse()?;
    let lsn = vigil_pg::parse_lsn(fields.next().context("switch lsn")?).context("lsn")?;
    let switch = lsn / (16 * 1024 * 1024);
    let (gap, detail) = archive_gap(&repo, parent, tli, switch);
    println!("archive after the failover: {detail}");
    // pgBackRest 2.45 exits 0 also when it found damage: its report's status is the verdict.
    let verify = b.pgbackrest(&new, &["verify", "--output=text", "--verbose"]).await;
    let verified = match &verify {
        Ok((d, out)) => match vigil_core::verify::repository_verdict(Some(0), out) {
            Ok(()) => format!("pgbackrest verify: status ok ({})", secs(*d)),
            Err(e) => e,
        },
        Err(e) => format!("pgbackrest verify failed: {e:#}"),
    };
    println!("{verified}");
    let info = b.pgbackrest(&new, &["info", "--output=json"]).await?.1;
    let info: serde_json::Value = serde_json::from_str(&info)?;
    let ranges: Vec<String> = info[0]["archive"]
        .as_array()
        .map(|a| a.iter().map(|x| format!("{} {}..{}", x["id"], x["min"], x["max"])).collect())
        .unwrap_or_default();
    println!("pgbackrest info archive: {}", ranges.join("; "));
    let push = first_push.map_or("never".to_string(), secs);
    Ok(format!(
        "{ready} .ready on the old primary at the kill; new primary writable after {}, first push {push}, \
         first segment of timeline {tli} archived {}, gap {gap} segments, {verified}",
        secs(writable),
        secs(new_segment)
    ))
}
