//! Helpers of the backup and restore tests: a `[backup]` table with a posix repository in the
//! test's directory, what its archive holds, waiting for recorded backups.

use crate::{ClusterSpec, TestCluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CONVERGE: Duration = Duration::from_secs(90);

pub fn repo(spec: &ClusterSpec) -> PathBuf {
    spec.dir.join("repo")
}

/// Every member's `[backup]`: a posix repository shared through the test's directory.
pub fn with_backup(spec: &mut ClusterSpec, extra: &[&str]) {
    spec.backup = vec![
        "stanza = \"main\"".into(),
        format!("repo_path = {:?}", repo(spec).display().to_string()),
        "archive_timeout = \"30s\"".into(),
        "timeout = \"5m\"".into(),
    ];
    spec.backup.extend(extra.iter().map(|s| s.to_string()));
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not within {timeout:?} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The WAL files (pgBackRest's names: `<segment>-<sha1>[.gz]`, `<segment>.partial-...`) in the
/// repository's archive.
pub fn archived_files(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join("archive")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// Whether `segment`'s push is complete (pgBackRest writes `<name>.pgbackrest.tmp` first).
pub fn in_archive(repo: &Path, segment: &str) -> bool {
    archived_files(repo).iter().any(|f| f.starts_with(&format!("{segment}-")) && !f.ends_with(".pgbackrest.tmp"))
}

/// Close the current WAL segment on `member` after a write; its name.
pub async fn switch_wal(t: &TestCluster, member: &str) -> anyhow::Result<String> {
    let c = t.client(member).await?;
    let row = c.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[]).await?;
    let segment: String = row.get(0);
    c.query_one("SELECT pg_switch_wal()::text", &[]).await?;
    Ok(segment)
}

pub async fn archiver(t: &TestCluster, member: &str) -> anyhow::Result<(i64, String, i64, String)> {
    let c = t.client(member).await?;
    let r = c
        .query_one(
            "SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') \
             FROM pg_stat_archiver",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1), r.get(2), r.get(3)))
}

pub async fn backups(t: &TestCluster, member: &str) -> anyhow::Result<Value> {
    let r = t.get(member, "/backups").await?;
    anyhow::ensure!(r.status == 200, "GET /backups on {member}: {} {}", r.status, r.text);
    Ok(r.json)
}

pub fn records(b: &Value) -> Vec<Value> {
    b["backups"].as_array().cloned().unwrap_or_default()
}

/// Wait for a recorded backup that `pick` accepts.
pub async fn wait_backup(
    t: &TestCluster,
    member: &str,
    what: &str,
    pick: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_recorded(t, member, what, CONVERGE, records, pick).await
}

/// Wait (at most `timeout`) until one of the entries `list` takes from `GET /backups` on `member`
/// is one that `pick` accepts.
pub async fn wait_recorded(
    t: &TestCluster,
    member: &str,
    what: &str,
    timeout: Duration,
    list: fn(&Value) -> Vec<Value>,
    pick: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(b) = backups(t, member).await {
            if let Some(r) = list(&b).into_iter().find(|r| pick(r)) {
                return Ok(r);
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not recorded within {timeout:?}: {:?}", backups(t, member).await);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn verifications(b: &Value) -> Vec<Value> {
    b["verifications"].as_array().cloned().unwrap_or_default()
}

/// Wait for a recorded verification that `pick` accepts.
pub async fn wait_verification(
    t: &TestCluster,
    member: &str,
    what: &str,
    pick: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_recorded(t, member, what, Duration::from_secs(180), verifications, pick).await
}
