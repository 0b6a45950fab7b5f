//! The archive's health on this member, as gauges refreshed every few seconds: the age of the
//! last archived segment and the archiver's failures (`pg_stat_archiver`), the WAL segments
//! waiting to be archived (`.ready` files in `pg_wal/archive_status`), and the repository's size.
//! Every query has a deadline; a failed one leaves the previous values.

use super::pgbackrest::PgBackRest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(5);
const REPOSITORY_EVERY: Duration = Duration::from_secs(60);

pub async fn run(pgb: Arc<PgBackRest>, repo: Option<PathBuf>, shutdown: CancellationToken) {
    let mut tick = vigil_raft::beat::interval(EVERY);
    let mut repo_next = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let status = pgb.pg.data_dir.join("pg_wal").join("archive_status");
        let ready = tokio::task::spawn_blocking(move || count_ready(&status)).await.unwrap_or(0);
        metrics::gauge!("pgvigil_archive_ready_files").set(ready as f64);
        if let Ok(a) = archiver(&pgb).await {
            metrics::gauge!("pgvigil_archive_last_archived_age_seconds").set(a.age_seconds.unwrap_or(0.0));
            metrics::counter!("pgvigil_archive_failed_total").absolute(a.failed);
            metrics::gauge!("pgvigil_archive_last_failure_timestamp_seconds").set(a.last_failed.unwrap_or(0.0));
        }
        if Instant::now() >= repo_next {
            repo_next = Instant::now() + REPOSITORY_EVERY;
            let size = match repo.clone() {
                Some(p) => tokio::task::spawn_blocking(move || dir_size(&p)).await.ok(),
                None => pgb.info().await.ok().map(|i| repository_size_of(&i)),
            };
            if let Some(size) = size {
                metrics::gauge!("pgvigil_backup_repository_size_bytes").set(size as f64);
            }
        }
    }
}

struct Archiver {
    /// Seconds since the last segment was archived (a primary that archived one; else None).
    age_seconds: Option<f64>,
    failed: u64,
    last_failed: Option<f64>,
}

async fn archiver(pgb: &PgBackRest) -> anyhow::Result<Archiver> {
    let pg = &pgb.pg;
    let mut c = tokio_postgres::Config::new();
    c.host_path(&pg.socket_dir)
        .port(pg.port)
        .user(&pg.superuser)
        .dbname("postgres")
        .application_name("pgvigil archive health")
        .connect_timeout(Duration::from_secs(2));
    let work = async {
        let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                        ELSE extract(epoch FROM now() - last_archived_time)::float8 END, \
                        failed_count, extract(epoch FROM last_failed_time)::float8 \
                 FROM pg_stat_archiver",
                &[],
            )
            .await
    };
    let row = tokio::time::timeout(Duration::from_secs(5), work).await??;
    Ok(Archiver { age_seconds: row.get(0), failed: row.get::<_, i64>(1).max(0) as u64, last_failed: row.get(2) })
}

/// The WAL segments (and history files) PostgreSQL has not archived yet.
pub fn count_ready(archive_status: &Path) -> usize {
    std::fs::read_dir(archive_status)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .count()
}

/// The bytes of the files below `dir` (symbolic links not followed).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// What the backups of `info` (pgBackRest's JSON) take in the repository (WAL not counted).
pub fn repository_size_of(info: &serde_json::Value) -> u64 {
    info.get(0)
        .and_then(|s| s.get("backup"))
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.pointer("/info/repository/delta").and_then(|v| v.as_u64()))
        .sum()
}
