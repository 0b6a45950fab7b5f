//! `pgvigil restore` on real clusters with real pgBackRest (Debian's 2.45): a point-in-time
//! restore of one cluster's stanza bootstraps a new cluster, which has the rows committed before
//! the target and none after, streams to its standbys and archives into its own stanza, while the
//! source's archive stays exactly as it was; bad command lines exit 64. The scheduled
//! verification (the proof of restorability) records a success, then a failure once a backup
//! file in the repository was damaged on purpose, and the metrics show both.

use anyhow::Context;
use std::path::Path;
use std::time::{Duration, Instant};
use vigil_tests::backup::{
    backups, in_archive, repo, switch_wal, verifications, wait_until, wait_verification, with_backup, CONVERGE,
};
use vigil_tests::{settled, TestCluster};

/// Every file under `dir` with its size and modification time.
fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
            }
        }
    }
    out.sort();
    out
}

async fn max_id(t: &TestCluster, member: &str) -> anyhow::Result<(i64, i64)> {
    let c = t.client(member).await?;
    let r = c.query_one("SELECT count(*), coalesce(max(id), 0)::bigint FROM items", &[]).await?;
    Ok((r.get(0), r.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_bootstraps_a_new_cluster_and_leaves_the_source_archive_alone() -> anyhow::Result<()> {
    let mut src = TestCluster::prepare(2, 1, |s| with_backup(s, &[]))?;
    src.cluster.start_all()?;
    src.wait_for("a settled cluster with its stanza", CONVERGE, |v| {
        settled(v) && v.state.backup.stanza_ready.is_some()
    })
    .await?;
    let p = src.primary().await?;
    let shared_repo = repo(src.spec());

    // Rows 1..100, a full backup, rows 101..200, the target time, rows 201..300.
    src.execute(&p, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 100)")
        .await?;
    let config = src.spec().config_path(&p).display().to_string();
    let out = src.cli(&["backup", "--type", "full", "--config", &config], "").await?;
    anyhow::ensure!(out.status.success(), "pgvigil backup: {}", String::from_utf8_lossy(&out.stderr));
    let c = src.client(&p).await?;
    // pgBackRest keeps a backup's stop time in whole seconds and restores to a time only from a
    // backup that stopped before it: the target must lie in a later second than the backup's end.
    let ended: String = c.query_one("SELECT clock_timestamp()::text", &[]).await?.get(0);
    wait_until("the primary's clock a second past the backup", Duration::from_secs(5), || {
        let (c, ended) = (&c, ended.clone());
        async move {
            Ok(c.query_one("SELECT clock_timestamp() > $1::text::timestamptz + interval '1500 ms'", &[&ended])
                .await?
                .get(0))
        }
    })
    .await?;
    src.execute(&p, "INSERT INTO items SELECT generate_series(101, 200)").await?;
    let target: String = c
        .query_one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'", &[])
        .await?
        .get(0);
    wait_until("the primary's clock past the target", Duration::from_secs(5), || {
        let (c, target) = (&c, target.clone());
        async move {
            Ok(c.query_one("SELECT clock_timestamp() > $1::text::timestamptz + interval '20 ms'", &[&target])
                .await?
                .get(0))
        }
    })
    .await?;
    src.execute(&p, "INSERT INTO items SELECT generate_series(201, 300)").await?;
    let segment = switch_wal(&src, &p).await?;
    wait_until("the segment after the target in the archive", CONVERGE, || {
        let (r, s) = (shared_repo.clone(), segment.clone());
        async move { Ok(in_archive(&r, &s)) }
    })
    .await?;
    drop(c);
    src.cluster.stop_all(Duration::from_secs(30));
    let source_archive = shared_repo.join("archive").join("main");
    let before = listing(&source_archive);
    anyhow::ensure!(!before.is_empty(), "the source archive has files");

    // The new cluster: stanza "restored" in the same repository.
    let mut dst = TestCluster::prepare(2, 1, |s| {
        s.backup = vec![
            "stanza = \"restored\"".into(),
            format!("repo_path = {:?}", shared_repo.display().to_string()),
            "archive_timeout = \"30s\"".into(),
            "timeout = \"5m\"".into(),
        ];
    })?;
    let first = dst.spec().members[0].name.clone();
    let dst_config = dst.spec().config_path(&first).display().to_string();
    let data_dir = dst.spec().data_dir(&first);
    // Something in the data directory already: it is moved aside, not deleted.
    std::fs::create_dir_all(&data_dir)?;
    std::fs::write(data_dir.join("keep-me"), b"not a cluster")?;

    // Bad command lines: exit 64 with a message naming the problem.
    for (args, says) in [
        (vec!["--from-stanza", "main", "--time", &target, "--lsn", "0/1"], "at most one"),
        (vec!["--from-stanza", "main", "--time", "yesterday"], "--time"),
        (vec!["--from-stanza", "main", "--lsn", "12345"], "--lsn"),
        (vec!["--from-stanza", "restored"], "archive into the source's stanza"),
        (vec!["--from-stanza", "a b"], "--from-stanza"),
        (vec!["--from-stanza", "main", "--frobnicate"], "--frobnicate"),
    ] {
        let mut all = vec!["restore", "--config", &dst_config];
        all.extend(args.iter().copied());
        let out = dst.cli(&all, "").await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: stderr should say {says:?}: {stderr}");
    }
    assert!(data_dir.join("keep-me").exists(), "a refused restore touches nothing");

    let started = Instant::now();
    let out = dst.cli(&["restore", "--config", &dst_config, "--from-stanza", "main", "--time", &target], "").await?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "pgvigil restore: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    println!("restore to {target}: {stdout} (CLI {:.1} s)", started.elapsed().as_secs_f64());
    assert!(stdout.contains("restored stanza main"), "{stdout}");
    let parent = data_dir.parent().context("parent")?;
    let name = data_dir.file_name().context("name")?.to_string_lossy().to_string();
    let moved: Vec<_> = std::fs::read_dir(parent)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{name}.old-")))
        .collect();
    assert_eq!(moved.len(), 1, "the old data directory moved aside");
    assert!(moved[0].path().join("keep-me").exists());
    let auto = std::fs::read_to_string(data_dir.join("postgresql.auto.conf"))?;
    assert!(!auto.contains("recovery_target") && !auto.contains("restore_command"), "{auto}");

    // The new cluster bootstraps from the restored directory.
    dst.cluster.start_all()?;
    let v = dst
        .wait_for("the new cluster settled with its stanza", CONVERGE, |v| {
            settled(v) && v.state.backup.stanza_ready.is_some()
        })
        .await?;
    assert_eq!(v.state.primary.as_deref(), Some(first.as_str()), "the member with the restored data is the primary");
    assert_eq!(max_id(&dst, &first).await?, (200, 200), "rows before the target, none after");
    for s in dst.other_pg_members(&first) {
        dst.wait_rows(&s, "items", 200, Duration::from_secs(60)).await?;
    }
    // It writes, and archives into its own stanza.
    dst.execute(&first, "INSERT INTO items SELECT generate_series(1001, 1100)").await?;
    let segment = switch_wal(&dst, &first).await?;
    let own = shared_repo.join("archive").join("restored");
    wait_until("the new cluster's segment in its own stanza", CONVERGE, || {
        let (own, s) = (own.clone(), segment.clone());
        async move {
            let names = listing(&own);
            Ok(names.iter().any(|(p, _, _)| p.rsplit('/').next().is_some_and(|n| n.starts_with(&format!("{s}-")))))
        }
    })
    .await?;

    // The source's archive: not one file added, changed or removed.
    let after = listing(&source_archive);
    assert_eq!(before, after, "the source's archive is untouched");

    // A second restore into the new cluster's stanza, now in use, is refused.
    let second = dst.spec().members[1].name.clone();
    let second_config = dst.spec().config_path(&second).display().to_string();
    let out = dst.cli(&["restore", "--config", &second_config, "--from-stanza", "main"], "").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("expected an empty archive"), "{stderr}");
    Ok(())
}

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(&format!("{name} "))).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The archived file of WAL `segment` (`<segment>-<sha1>[.gz]`) in the repository, once its
/// push is complete (not pgBackRest's `.pgbackrest.tmp` while it writes).
fn archived_path(repo: &Path, segment: &str) -> Option<std::path::PathBuf> {
    listing(&repo.join("archive")).into_iter().map(|(p, _, _)| std::path::PathBuf::from(p)).find(|p| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .is_some_and(|n| n.starts_with(&format!("{segment}-")) && !n.ends_with(".pgbackrest.tmp"))
    })
}

/// The largest file of a backup's copy of the data directory in the repository.
fn largest_backup_file(repo: &Path) -> Option<std::path::PathBuf> {
    let backups = repo.join("backup").join("main");
    listing(&backups)
        .into_iter()
        .filter(|(p, _, _)| p.contains("/pg_data/base/"))
        .max_by_key(|(_, size, _)| *size)
        .map(|(p, _, _)| p.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_verification_records_a_success_and_a_damaged_backup_as_a_failure() -> anyhow::Result<()> {
    let mut t = TestCluster::prepare(2, 1, |s| with_backup(s, &["schedule.verify = \"*/15 * * * * *\""]))?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let p = t.primary().await?;
    let standby = t.other_pg_members(&p).into_iter().next().context("a standby")?;
    t.execute(&p, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 10000)")
        .await?;
    let config = t.spec().config_path(&p).display().to_string();
    let out = t.cli(&["backup", "--type", "full", "--config", &config], "").await?;
    anyhow::ensure!(out.status.success(), "pgvigil backup: {}", String::from_utf8_lossy(&out.stderr));

    // A scheduled verification on the standby passes, with its duration, in the history.
    let ok = wait_verification(&t, &p, "a passed verification", |v| v["outcome"]["error"].is_null()).await?;
    println!("verification: {ok}");
    assert_eq!(ok["member"], standby.as_str(), "{ok}");
    assert_eq!(ok["reason"], "scheduled", "{ok}");
    assert!(ok["duration_ms"].as_u64() > Some(0), "{ok}");
    assert!(ok["outcome"]["label"].is_string(), "{ok}");
    let history = t.view().await?.state.history;
    assert!(history.iter().any(|e| e.detail.contains(&format!("verification {} passed on {standby}", ok["id"]))));
    let metrics = t.get(&p, "/metrics").await?.text;
    assert_eq!(gauge(&metrics, "pgvigil_backup_verify_last_success"), Some(1.0), "{metrics}");
    assert!(gauge(&metrics, "pgvigil_backup_verify_last_timestamp_seconds").is_some_and(|s| s > 0.0));
    // The scratch copy is gone once no verification runs (only it: the standby's own data stays).
    let scratch = t.spec().state_dir(&standby).join("pgbackrest").join("verify-scratch");
    wait_until("no verification running and no scratch copy", Duration::from_secs(60), || {
        let (t, p, scratch) = (&t, p.clone(), scratch.clone());
        async move { Ok(backups(t, &p).await?["verifying"].is_null() && !scratch.exists()) }
    })
    .await?;
    assert!(t.spec().data_dir(&standby).join("PG_VERSION").exists());
    // On request too, through the command line (retried while a scheduled one runs, or while a
    // coordinator that just took over has no report of the standby yet).
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        let out = t.cli(&["verify-backup", "--config", &config], "").await?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let retry = stderr.contains("is running") || stderr.contains("no running standby");
        if !retry || Instant::now() >= deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgvigil verify-backup: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("passed on"), "{stdout}");
    println!("{stdout}");

    // The archive's health and the repository's size on the primary; the last backup and
    // verification in `pgvigil list`.
    // (The repository's size is measured once a minute.)
    wait_until("the archive gauges", Duration::from_secs(90), || {
        let (t, p) = (&t, p.clone());
        async move {
            let m = t.get(&p, "/metrics").await?.text;
            Ok(gauge(&m, "pgvigil_backup_repository_size_bytes").is_some_and(|s| s > 0.0)
                && gauge(&m, "pgvigil_archive_ready_files").is_some()
                && gauge(&m, "pgvigil_archive_last_archived_age_seconds").is_some_and(|a| a > 0.0 && a < 600.0)
                && gauge(&m, "pgvigil_archive_failed_total").is_some())
        }
    })
    .await
    .with_context(|| {
        let m = std::process::Command::new("curl").arg("-s").arg(format!("http://{}/metrics", t.api(&p))).output();
        let text = m.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
        text.lines().filter(|l| l.contains("archive") || l.contains("repository")).collect::<Vec<_>>().join("\n")
    })?;
    let out = t.cli(&["list", "--config", &config], "").await?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("Last backup: full"), "{listed}");
    assert!(listed.contains("Last verification: passed"), "{listed}");
    println!("{listed}");

    // Damage a WAL file archived after the backup: the backup still restores and recovers (it
    // does not need that segment), but `pgbackrest verify` reports the damage, and that decides.
    t.execute(&p, "INSERT INTO items VALUES (10001)").await?;
    let segment = switch_wal(&t, &p).await?;
    let repo_dir = repo(t.spec());
    wait_until("the segment in the archive", CONVERGE, || {
        let (repo_dir, segment) = (repo_dir.clone(), segment.clone());
        async move { Ok(archived_path(&repo_dir, &segment).is_some()) }
    })
    .await?;
    let wal = archived_path(&repo_dir, &segment).context("the archived segment")?;
    let original = std::fs::read(&wal)?;
    // Between two verifications, so the next one starts after the damage.
    wait_until("no verification running", Duration::from_secs(60), || {
        let (t, p) = (&t, p.clone());
        async move { Ok(backups(t, &p).await?["verifying"].is_null()) }
    })
    .await?;
    let before = verifications(&backups(&t, &p).await?).iter().filter_map(|v| v["id"].as_u64()).max();
    std::fs::write(&wal, vec![0x5a_u8; original.len().max(64)])?;
    let wal_failed = wait_verification(&t, &p, "a failed repository verify", |v| {
        v["id"].as_u64() > before && !v["outcome"]["error"].is_null()
    })
    .await?;
    println!("after damaging {}: {wal_failed}", wal.display());
    let error = wal_failed["outcome"]["error"].as_str().unwrap_or_default();
    // pgBackRest 2.45 exits 0 here: its report's status says error, and that decides.
    assert!(error.starts_with("pgbackrest verify: status error"), "pgBackRest's own verdict: {wal_failed}");
    assert!(wal_failed["outcome"]["recovery_ms"].as_u64() > Some(0), "restored and recovered: {wal_failed}");
    std::fs::write(&wal, &original)?;

    // Damage the backup: the next verification fails, and says so.
    let victim = largest_backup_file(&repo(t.spec())).context("a backup file")?;
    let len = std::fs::metadata(&victim)?.len() as usize;
    std::fs::write(&victim, vec![0x5a_u8; len.max(64)])?;
    let last_failed = wal_failed["id"].as_u64().context("id")?;
    let failed = wait_verification(&t, &p, "a failed verification", |v| {
        v["id"].as_u64() > Some(last_failed) && !v["outcome"]["error"].is_null()
    })
    .await?;
    println!("after damaging {}: {failed}", victim.display());
    let metrics = t.get(&p, "/metrics").await?.text;
    assert_eq!(gauge(&metrics, "pgvigil_backup_verify_last_success"), Some(0.0), "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reinitialised_from_the_repository_streams_and_falls_back_to_pg_basebackup() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut t = TestCluster::prepare(2, 1, |s| with_backup(s, &["clone_from_repo = true"]))?;
    t.cluster.start_all()?;
    t.wait_for("a settled cluster with its stanza", CONVERGE, |v| settled(v) && v.state.backup.stanza_ready.is_some())
        .await?;
    let p = t.primary().await?;
    let standby = t.other_pg_members(&p).into_iter().next().context("a standby")?;
    t.execute(&p, "CREATE TABLE items (id int primary key); INSERT INTO items SELECT generate_series(1, 1000)").await?;
    let config = t.spec().config_path(&p).display().to_string();
    let out = t.cli(&["backup", "--type", "full", "--config", &config], "").await?;
    anyhow::ensure!(out.status.success(), "pgvigil backup: {}", String::from_utf8_lossy(&out.stderr));
    // Written after the backup: the new standby gets it from the archive or by streaming.
    t.execute(&p, "INSERT INTO items SELECT generate_series(1001, 2000)").await?;

    let reinit = |n: i64| {
        let (t, p, standby) = (&t, p.clone(), standby.clone());
        async move {
            let started = Instant::now();
            let r = t.post(&p, "/reinit", &format!(r#"{{"member": "{standby}"}}"#)).await?;
            anyhow::ensure!(r.status == 200, "reinit: {r:?}");
            println!("reinit in {:.1} s: {}", started.elapsed().as_secs_f64(), r.message());
            t.execute(&p, &format!("INSERT INTO items SELECT generate_series({n} + 1, {n} + 1000)")).await?;
            t.wait_rows(&standby, "items", n + 1000, Duration::from_secs(60)).await?;
            t.wait_for("the standby streaming", CONVERGE, |v| {
                v.reports.get(&standby).is_some_and(|r| r.pg.running && r.pg.in_recovery && r.pg.streaming)
            })
            .await?;
            Ok(r.message())
        }
    };
    let message = reinit(2000).await?;
    assert!(message.contains("cloned from the repository ("), "{message}");

    // The repository unreadable for PostgreSQL's user: pg_basebackup instead.
    let backup_dir = repo(t.spec()).join("backup");
    let mode = std::fs::metadata(&backup_dir)?.permissions().mode();
    std::fs::set_permissions(&backup_dir, std::fs::Permissions::from_mode(0o000))?;
    let message = reinit(3000).await;
    std::fs::set_permissions(&backup_dir, std::fs::Permissions::from_mode(mode))?;
    let message = message?;
    assert!(message.contains("cloned with pg_basebackup (not from the repository"), "{message}");
    Ok(())
}
