//! A standby created (or re-initialised) from the repository instead of `pg_basebackup`: the
//! latest backup that succeeded, if it is recent enough ([`vigil_core::backup::clone_source`]),
//! restored as a standby into a temporary directory next to the data directory, then moved into
//! place and pointed at the primary; PostgreSQL replays the archive and then streams through its
//! slot. Any failure leaves the data directory empty for the `pg_basebackup` fallback.

use super::pgbackrest::PgBackRest;
use crate::config::{BackupSettings, Settings};
use anyhow::Context;
use std::time::Instant;
use vigil_core::ClusterState;
use vigil_pg::datadir::{create_dir_owned, ensure_empty, fsync_parent, sibling};
use vigil_pg::{Postgres, Upstream};

/// Restore the latest usable backup into the (empty) data directory as a standby of `primary`
/// through `slot`; the backup's label.
pub async fn from_repository(
    settings: &Settings,
    b: &BackupSettings,
    pg: &Postgres,
    state: &ClusterState,
    primary: &Upstream,
    slot: &str,
) -> anyhow::Result<String> {
    let label = vigil_core::backup::clone_source(
        &state.backup,
        crate::coordination::wall_ms(),
        b.clone_max_age.as_millis() as u64,
    )
    .map_err(anyhow::Error::msg)?;
    let s = pg.settings();
    ensure_empty(&s.data_dir)?;
    let tmp = sibling(&s.data_dir, ".pgvigil-clone");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("remove unfinished clone {}", tmp.display()))?;
    }
    create_dir_owned(&tmp, 0o700, s.run_as)?;
    let started = Instant::now();
    let pgb = PgBackRest::of(settings, b, s);
    let args = [
        "restore".to_string(),
        format!("--pg1-path={}", tmp.display()),
        format!("--set={label}"),
        "--type=standby".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = pgb.run(&argv, b.timeout).await {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // The archive is read through the restore_command pgvigil gives every member on the command
    // line; the restore's own settings go.
    if let Err(e) = super::recovery::clean_auto_conf(s, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if s.data_dir.exists() {
        std::fs::remove_dir(&s.data_dir).with_context(|| format!("remove empty {}", s.data_dir.display()))?;
    }
    std::fs::rename(&tmp, &s.data_dir)
        .with_context(|| format!("rename {} to {}", tmp.display(), s.data_dir.display()))?;
    fsync_parent(&s.data_dir)?;
    pg.configure_standby(primary, slot)?;
    tracing::warn!(%label, took_ms = started.elapsed().as_millis() as u64, "created from the repository");
    Ok(label)
}
