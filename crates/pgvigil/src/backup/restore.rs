//! `pgvigil restore`: a new cluster's first data directory from another cluster's backups (a
//! stanza of the repository), to the end of its archive or to a time, an LSN or a restore point.
//!
//! The new cluster can never archive into the source's stanza: this member's `[backup]` must
//! name another stanza, and that stanza's archive must be empty. Recovery runs once, here, with
//! archiving off and no TCP listener, and ends with a promotion; the restore's settings are then
//! removed from `postgresql.auto.conf`, so the daemon started next bootstraps the new cluster
//! from this data directory (a member with data is preferred) and archives into its own stanza.
//! An existing data directory is moved aside, never deleted.

use super::pgbackrest::{self, PgBackRest};
use super::recovery::{self, Target};
use crate::config;
use anyhow::Context;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The config file of the new cluster's member whose data directory is restored.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The source cluster's stanza in the repository.
    #[arg(long)]
    pub from_stanza: String,
    /// The source's posix repository, if not this member's `backup.repo_path`.
    #[arg(long)]
    pub from_repo_path: Option<PathBuf>,
    /// Recover to this time (`YYYY-MM-DD HH:MM:SS[.fraction][+zone]`): transactions committed
    /// after it are not restored.
    #[arg(long)]
    pub time: Option<String>,
    /// Recover up to this WAL position.
    #[arg(long)]
    pub lsn: Option<String>,
    /// Recover up to this named restore point.
    #[arg(long)]
    pub name: Option<String>,
    /// Restore this backup (a pgBackRest label) instead of the one pgBackRest chooses.
    #[arg(long)]
    pub set: Option<String>,
    /// How long the restore and the recovery may take together.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4h")]
    pub timeout: Duration,
}

/// A bad command line: `main` prints it and exits 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn valid_stanza(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let target = Target::from_args(args.time.as_deref(), args.lsn.as_deref(), args.name.as_deref()).map_err(usage)?;
    if !valid_stanza(&args.from_stanza) {
        return Err(usage(format!("--from-stanza {:?}: not a stanza name", args.from_stanza)));
    }
    if let Some(set) = &args.set {
        if set.is_empty() || !set.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(usage(format!("--set {set:?}: not a backup label (like 20261130-230500F)")));
        }
    }
    if let Some(p) = &args.from_repo_path {
        if !p.is_absolute() {
            return Err(usage(format!("--from-repo-path {}: must be absolute", p.display())));
        }
    }
    let settings = config::load(&args.config)?;
    if settings.raw.kind != vigil_core::MemberKind::Postgres {
        return Err(usage(format!("{}: a witness has no data directory to restore", args.config.display())));
    }
    let Some(own) = settings.backup.clone() else {
        return Err(usage(format!(
            "{}: no [backup] table: the new cluster needs its own stanza (and the repository to restore from)",
            args.config.display()
        )));
    };
    let same_repo = args.from_repo_path.is_none() || args.from_repo_path == own.raw.repo_path;
    if same_repo && own.raw.stanza == args.from_stanza {
        return Err(usage(format!(
            "--from-stanza {0}: this member's backup.stanza is {0} too, so the new cluster would archive \
             into the source's stanza; give the new cluster's [backup] another stanza",
            args.from_stanza
        )));
    }
    let Some(repo) = args.from_repo_path.clone().or_else(|| own.raw.repo_path.clone()) else {
        return Err(usage("no posix repository: give --from-repo-path or set backup.repo_path"));
    };
    let started = Instant::now();
    let pg = crate::agent::pg_settings_of(&settings)?;
    let data_dir = pg.data_dir.clone();
    // The new cluster's stanza must hold no archive: it would mix with another cluster's WAL.
    pgbackrest::prepare(&settings, &own, &pg)?;
    let mine = PgBackRest::of(&settings, &own, &pg);
    expect_empty_archive(&mine).await?;
    anyhow::ensure!(
        vigil_pg::process::live_postmaster(&data_dir).is_none(),
        "a PostgreSQL server runs on {}: stop this member's daemon first",
        data_dir.display()
    );

    // The source's stanza, read only: a configuration of its own next to this member's.
    let mut source = own.clone();
    source.raw.stanza = args.from_stanza.clone();
    source.raw.repo_path = Some(repo.clone());
    source.server = None;
    let source_conf = pgbackrest::dir(&settings).join(format!("restore-{}.conf", args.from_stanza));
    let text = pgbackrest::config_text(&source, &pg, &pgbackrest::dir(&settings));
    vigil_pg::datadir::write_file_atomic(&source_conf, text.as_bytes(), 0o600, pg.run_as)?;
    let from = PgBackRest { config: source_conf, stanza: args.from_stanza.clone(), ..mine };

    let moved = match vigil_pg::datadir::data_dir_state(&data_dir) {
        vigil_pg::DataDirState::Empty => None,
        _ => Some(vigil_pg::Postgres::new(pg.clone()).move_aside()?),
    };
    if let Some(m) = &moved {
        println!("moved the existing data directory aside to {}", m.display());
    }
    vigil_pg::datadir::create_dir_owned(&data_dir, 0o700, pg.run_as)?;

    let mut restore_args: Vec<String> = vec!["restore".into(), "--archive-mode=off".into()];
    restore_args.extend(target.pgbackrest_args());
    if let Some(set) = &args.set {
        restore_args.push(format!("--set={set}"));
    }
    let argv: Vec<&str> = restore_args.iter().map(String::as_str).collect();
    from.run(&argv, args.timeout).await.with_context(|| format!("restore from stanza {}", args.from_stanza))?;
    let restored = started.elapsed();

    let socket_dir = settings.socket_dir();
    vigil_pg::datadir::create_dir_owned(&socket_dir, 0o700, pg.run_as)?;
    let log = settings.raw.state_dir.join("restore.log");
    let mut run = recovery::RecoveryRun::start(&pg, &data_dir, &socket_dir, pg.port, &log)?;
    let left = args.timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(60));
    let recovered = match run.wait_recovered(Instant::now(), left).await {
        Ok(r) => r,
        Err(e) => {
            let _ = run.stop(Duration::from_secs(60)).await;
            return Err(e.context(format!("recovery of stanza {} to {}", args.from_stanza, target.describe())));
        }
    };
    let checkpoint = run.execute("CHECKPOINT").await;
    run.stop(Duration::from_secs(300)).await.context("stop the recovered server")?;
    checkpoint.context("CHECKPOINT after recovery")?;
    recovery::clean_auto_conf(&pg, &data_dir)?;
    println!(
        "restored stanza {} into {} to {} in {:.1} s (pgbackrest restore {:.1} s, recovery {:.1} s): \
         timeline {}, archiving into stanza {} once its daemon runs",
        args.from_stanza,
        data_dir.display(),
        target.describe(),
        started.elapsed().as_secs_f64(),
        restored.as_secs_f64(),
        recovered.took.as_secs_f64(),
        recovered.timeline,
        own.raw.stanza
    );
    Ok(())
}

/// Refuse a stanza that already holds WAL or backups ("expected empty archive").
async fn expect_empty_archive(pgb: &PgBackRest) -> anyhow::Result<()> {
    let info = pgb.info().await.map_err(|e| e.context(format!("pgbackrest info of stanza {}", pgb.stanza)))?;
    if let Some(why) = archive_in_use(&info) {
        return Err(usage(format!(
            "backup.stanza {}: {why}; the new cluster needs a stanza of its own (expected an empty archive)",
            pgb.stanza
        )));
    }
    Ok(())
}

/// Why the stanza of `info` (pgBackRest's JSON) is not empty, if it is not.
pub fn archive_in_use(info: &serde_json::Value) -> Option<String> {
    let s = info.get(0)?;
    let backups = s.get("backup").and_then(|b| b.as_array()).map_or(0, Vec::len);
    if backups > 0 {
        return Some(format!("it holds {backups} backup(s)"));
    }
    let wal = s
        .get("archive")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .find_map(|a| a.get("max").and_then(|m| m.as_str()).map(str::to_string));
    wal.map(|w| format!("its archive holds WAL (up to {w})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_in_use_is_refused() {
        let missing = serde_json::json!([{"name": "new", "backup": [], "archive": [],
            "status": {"code": 1, "message": "missing stanza path"}}]);
        assert_eq!(archive_in_use(&missing), None);
        let wal = serde_json::json!([{"name": "main", "backup": [],
            "archive": [{"id": "15-1", "min": "000000010000000000000001", "max": "000000010000000000000003"}]}]);
        assert!(archive_in_use(&wal).is_some_and(|w| w.contains("000000010000000000000003")));
        let backups = serde_json::json!([{"name": "main", "backup": [{"label": "x"}], "archive": []}]);
        assert!(archive_in_use(&backups).is_some());
    }
}
