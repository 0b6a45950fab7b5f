//! Replication: slots, cloning a standby with `pg_basebackup`, pointing a standby at a primary,
//! and promotion.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::conf::{quote_literal, set_auto_conf, standby_settings, write_passfile};
use crate::datadir::{create_dir_owned, ensure_empty, fsync_parent, off_runtime, sibling, write_file_atomic};
use crate::error::PgError;
use crate::initdb::quiet_session;
use crate::observe::QUERY_DEADLINE;
use crate::postgres::Postgres;
use crate::settings::Upstream;
use crate::tool;

impl Postgres {
    /// On a running primary: create each missing physical slot, reserving WAL at once (so nothing the
    /// standby needs is recycled before it first connects). Drops nothing.
    pub async fn ensure_slots(&self, names: &[String]) -> anyhow::Result<()> {
        crate::observe::within(QUERY_DEADLINE, "create replication slots", async move {
            let client = self.connect().await?;
            let existing: Vec<String> = client
                .query("SELECT slot_name::text FROM pg_replication_slots", &[])
                .await
                .context("list replication slots")?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            for name in names.iter().filter(|n| !existing.contains(n)) {
                let created = client.execute("SELECT pg_create_physical_replication_slot($1, true)", &[name]).await;
                match created {
                    Ok(_) => tracing::info!(slot = %name, "created replication slot"),
                    // Created concurrently since we listed: that is what we wanted.
                    Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
                    Err(e) => return Err(e).with_context(|| format!("create replication slot {name:?}")),
                }
            }
            Ok(())
        })
        .await
    }

    /// Set `synchronous_standby_names` (ALTER SYSTEM, works on a standby too) and reload; returns
    /// once this session sees the new value. The WAL senders take it on the same reload.
    pub async fn set_sync_standby_names(&self, value: &str) -> anyhow::Result<()> {
        crate::observe::within(QUERY_DEADLINE, "set synchronous_standby_names", async move {
            let client = self.connect().await?;
            quiet_session(&client).await?;
            client
                .batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = {}", quote_literal(value)))
                .await
                .context("ALTER SYSTEM SET synchronous_standby_names")?;
            client.batch_execute("SELECT pg_reload_conf()").await.context("reload configuration")?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                // A backend applies a reload before its next command: ask with a fresh one.
                let now: String = self
                    .connect()
                    .await?
                    .query_one("SELECT current_setting('synchronous_standby_names')", &[])
                    .await?
                    .try_get(0)?;
                if now == value {
                    tracing::info!(member = %self.settings().member, synchronous_standby_names = %value, "set");
                    return Ok(());
                }
                anyhow::ensure!(Instant::now() < deadline, "synchronous_standby_names still {now:?} after reload");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Drop a slot if it exists. Errors if a walsender is using it right now.
    pub async fn drop_slot(&self, name: &str) -> anyhow::Result<()> {
        crate::observe::within(QUERY_DEADLINE, "drop a replication slot", async move {
            let client = self.connect().await?;
            let dropped = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&name],
                )
                .await
                .with_context(|| format!("drop replication slot {name:?}"))?;
            if dropped > 0 {
                tracing::info!(slot = %name, "dropped replication slot");
            }
            Ok(())
        })
        .await
    }

    /// Promote a standby (`pg_promote(true, wait)`), then check it accepts writes. Already a primary:
    /// only the write check. [`PgError::PromoteTimeout`] if promotion does not finish within `wait`.
    pub async fn promote(&self, wait: Duration) -> anyhow::Result<()> {
        crate::observe::within(wait + QUERY_DEADLINE, "promote", async move {
            let started = Instant::now();
            let client = self.connect().await?;
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .context("check recovery state")?
                .try_get(0)?;
            let wait_secs = i32::try_from(wait.as_secs().max(1)).unwrap_or(i32::MAX);
            if in_recovery {
                let promoted: bool = client
                    .query_one("SELECT pg_promote(true, $1)", &[&wait_secs])
                    .await
                    .context("pg_promote")?
                    .try_get(0)?;
                if !promoted {
                    return Err(PgError::PromoteTimeout(wait_secs as u64).into());
                }
            }
            let promoted_at = started.elapsed();
            // pg_promote returning true means recovery ended; a transaction id proves writes work.
            client.query_one("SELECT txid_current()", &[]).await.context("promoted server does not accept writes")?;
            tracing::info!(
                member = %self.settings().member,
                was_standby = in_recovery,
                promote_ms = promoted_at.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "promoted"
            );
            Ok(())
        })
        .await
    }

    /// Clone `primary` into the (empty) data directory with `pg_basebackup` streaming through `slot`,
    /// then configure it as a standby of `primary`. Copies into `<data_dir>.pgvigil-clone` and renames,
    /// so a crash never leaves a half-copied data directory that looks real. Does not start the server.
    pub async fn clone_from(&self, primary: &Upstream, slot: &str) -> anyhow::Result<()> {
        let s = self.settings();
        let started = Instant::now();
        ensure_empty(&s.data_dir)?;
        let tmp = sibling(&s.data_dir, ".pgvigil-clone");
        if tmp.exists() {
            tracing::warn!(path = %tmp.display(), "removing an unfinished clone from an earlier run");
            off_runtime(|| std::fs::remove_dir_all(&tmp))
                .with_context(|| format!("remove unfinished clone {}", tmp.display()))?;
        }
        create_dir_owned(&tmp, 0o700, s.run_as)?;

        let mut cmd = tool::command(s, "pg_basebackup");
        cmd.arg("-D")
            .arg(&tmp)
            .arg("-h")
            .arg(&primary.host)
            .arg("-p")
            .arg(primary.port.to_string())
            .arg("-U")
            .arg(&s.replication_user)
            .arg("-S")
            .arg(slot)
            .args(["-X", "stream", "-c", "fast", "--no-password"])
            .env("PGPASSWORD", &s.replication_password)
            .env("PGAPPNAME", format!("pgvigil_clone_{}", s.member))
            .env("PGCONNECT_TIMEOUT", "5");
        if let Err(e) = tool::run(cmd, "pg_basebackup").await {
            let _ = off_runtime(|| std::fs::remove_dir_all(&tmp));
            return Err(e);
        }
        let copied = started.elapsed();

        if s.data_dir.exists() {
            // Checked empty above; rename cannot replace a directory.
            std::fs::remove_dir(&s.data_dir).with_context(|| format!("remove empty {}", s.data_dir.display()))?;
        }
        off_runtime(|| std::fs::rename(&tmp, &s.data_dir))
            .with_context(|| format!("rename {} to {}", tmp.display(), s.data_dir.display()))?;
        fsync_parent(&s.data_dir)?;
        self.configure_standby(primary, slot)?;
        tracing::info!(
            member = %s.member,
            primary = %format!("{}:{}", primary.host, primary.port),
            basebackup_ms = copied.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "cloned"
        );
        Ok(())
    }

    /// While stopped: make the data directory a standby of `primary` (`standby.signal`, the
    /// password file, and `primary_conninfo` / `primary_slot_name` in `postgresql.auto.conf`).
    pub fn configure_standby(&self, primary: &Upstream, slot: &str) -> anyhow::Result<()> {
        let s = self.settings();
        self.require_stopped_cluster()?;
        write_passfile(s)?;
        set_auto_conf(&s.data_dir, &standby_settings(s, primary, slot), s.run_as)?;
        write_file_atomic(&s.data_dir.join("standby.signal"), b"", 0o600, s.run_as)?;
        Ok(())
    }

    /// On a running standby: stream from `primary` through `slot` from now on. `ALTER SYSTEM` works on
    /// a hot standby (it only writes `postgresql.auto.conf`), and since PostgreSQL 13 both settings
    /// take effect on reload: the WAL receiver restarts with them. No restart.
    pub async fn follow(&self, primary: &Upstream, slot: &str) -> anyhow::Result<()> {
        crate::observe::within(QUERY_DEADLINE, "follow a new primary", async move {
            let s = self.settings();
            let client = self.connect().await?;
            let in_recovery: bool =
                client.query_one("SELECT pg_is_in_recovery()", &[]).await.context("check recovery state")?.try_get(0)?;
            if !in_recovery {
                return Err(PgError::NotStandby.into());
            }
            quiet_session(&client).await?;
            write_passfile(s)?;
            // One statement per call: ALTER SYSTEM refuses to run inside a (multi-statement) transaction.
            for (name, value) in standby_settings(s, primary, slot) {
                client
                    .batch_execute(&format!("ALTER SYSTEM SET {name} = {}", quote_literal(&value)))
                    .await
                    .with_context(|| format!("ALTER SYSTEM SET {name}"))?;
            }
            client.batch_execute("SELECT pg_reload_conf()").await.context("reload configuration")?;
            tracing::info!(member = %s.member, primary = %format!("{}:{}", primary.host, primary.port), slot, "following");
            Ok(())
        })
        .await
    }
}
