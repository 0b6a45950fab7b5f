//! Rewinding an old primary (`pg_rewind`) so it can follow the new one without a full clone.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::NoTls;

use crate::conf::quote_conninfo;
use crate::observe::{CHECKPOINT_DEADLINE, QUERY_DEADLINE};
use crate::postgres::Postgres;
use crate::settings::Upstream;
use crate::tool;

const SOURCE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Postgres {
    /// While stopped: rewind this data directory to the timeline of `primary` with `pg_rewind`, then
    /// configure it as a standby of `primary` through `slot` (as [`Postgres::configure_standby`]).
    /// Works on a server that was fenced or crashed too (pg_rewind first runs crash recovery in
    /// single-user mode). Connects as the replication user, which `setup_roles` lets run `CHECKPOINT`
    /// and the functions pg_rewind needs. Ok also when no rewind was needed.
    ///
    /// With `restore_command` (the member's, when WAL is archived), pg_rewind may fetch WAL this
    /// data directory no longer has from the archive (`--restore-target-wal`). pg_rewind reads
    /// the command from the target's configuration files (`postgres -C restore_command`), but the
    /// daemon gives it to PostgreSQL on the command line: a configuration file that includes the
    /// data directory's `postgresql.conf` and adds the command is passed as `--config-file`.
    pub async fn rewind_from(
        &self,
        primary: &Upstream,
        slot: &str,
        restore_command: Option<&str>,
    ) -> anyhow::Result<()> {
        let s = self.settings();
        let started = Instant::now();
        self.require_stopped_cluster()?;
        // A just-promoted primary writes its new timeline into pg_control only at its next
        // checkpoint, and pg_rewind reads the timeline from there: without this it may find
        // "no rewind required" for a server that has diverged.
        self.checkpoint_source(primary).await.context("CHECKPOINT on the rewind source")?;

        let source = format!(
            "host={} port={} user={} dbname=postgres application_name={} connect_timeout={}",
            quote_conninfo(&primary.host),
            primary.port,
            quote_conninfo(&s.replication_user),
            quote_conninfo(&format!("pgvigil_rewind_{}", s.member)),
            SOURCE_CONNECT_TIMEOUT.as_secs(),
        );
        // pg_rewind first runs crash recovery in single-user mode, which refuses standby mode: a
        // fenced standby (a diverged one) must lose its standby.signal first. configure_standby
        // below writes it again.
        let signal = s.data_dir.join("standby.signal");
        if signal.exists() {
            std::fs::remove_file(&signal).with_context(|| format!("remove {}", signal.display()))?;
        }
        let mut cmd = tool::command(s, "pg_rewind");
        cmd.arg("--target-pgdata")
            .arg(&s.data_dir)
            .arg("--source-server")
            .arg(source)
            // Password through the environment: command lines are visible to every local user.
            .env("PGPASSWORD", &s.replication_password);
        let config = match restore_command {
            Some(command) => {
                let path = rewind_config_path(s);
                let text = rewind_config(&s.data_dir.join("postgresql.conf"), command);
                crate::datadir::write_file_atomic(&path, text.as_bytes(), 0o600, s.run_as)?;
                cmd.arg("--restore-target-wal").arg(format!("--config-file={}", path.display()));
                Some(path)
            }
            None => None,
        };
        let result = tool::output_and_stderr(cmd, "pg_rewind").await;
        if let Some(path) = &config {
            let _ = std::fs::remove_file(path);
        }
        let (_, said) = result?;
        let rewound = started.elapsed();
        // Where the servers diverged and which checkpoint the rewind started from.
        let said: Vec<&str> = said
            .lines()
            .filter(|l| l.contains("diverged") || l.contains("last common checkpoint") || l.contains("no rewind"))
            .map(|l| l.trim_start_matches("pg_rewind: "))
            .collect();
        self.configure_standby(primary, slot)?;
        tracing::info!(
            member = %s.member,
            primary = %format!("{}:{}", primary.host, primary.port),
            rewind_ms = rewound.as_millis() as u64,
            restore_target_wal = config.is_some(),
            "rewound: {}",
            said.join("; ")
        );
        Ok(())
    }

    /// The rewind source must be promoted already (else the rewind would target its old timeline),
    /// and must have written its new timeline into pg_control (a CHECKPOINT).
    async fn checkpoint_source(&self, primary: &Upstream) -> anyhow::Result<()> {
        crate::observe::within(CHECKPOINT_DEADLINE, "CHECKPOINT on the rewind source", async move {
            let client = self.connect_source(primary).await?;
            let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await?.try_get(0)?;
            anyhow::ensure!(!in_recovery, "{}:{} is not a primary (yet)", primary.host, primary.port);
            client.batch_execute("CHECKPOINT").await?;
            Ok(())
        })
        .await
    }

    /// The timeline `primary` is on and its history: `(timeline, where it ended)` for each
    /// ancestor, read from its `pg_wal/<tli>.history` (which the replication user may read).
    pub async fn timeline_history(&self, primary: &Upstream) -> anyhow::Result<(u32, Vec<(u32, u64)>)> {
        crate::observe::within(QUERY_DEADLINE, "ask the primary for its timeline", async move {
            let client = self.connect_source(primary).await?;
            let row = client
                .query_one("SELECT pg_is_in_recovery(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", &[])
                .await
                .with_context(|| format!("ask {}:{} for its timeline", primary.host, primary.port))?;
            let in_recovery: bool = row.try_get(0)?;
            anyhow::ensure!(!in_recovery, "{}:{} is not a primary", primary.host, primary.port);
            let hex: String = row.try_get(1)?;
            let tli = u32::from_str_radix(&hex, 16).with_context(|| format!("timeline {hex:?}"))?;
            if tli <= 1 {
                return Ok((tli, Vec::new()));
            }
            let file = format!("pg_wal/{tli:08X}.history");
            let bytes: Vec<u8> = client
                .query_one("SELECT pg_read_binary_file($1)", &[&file])
                .await
                .with_context(|| format!("read {file} on {}:{}", primary.host, primary.port))?
                .try_get(0)?;
            Ok((tli, parse_history(&String::from_utf8_lossy(&bytes))))
        })
        .await
    }

    /// A connection to another member's server as the replication user.
    async fn connect_source(&self, primary: &Upstream) -> anyhow::Result<tokio_postgres::Client> {
        let s = self.settings();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&primary.host)
            .port(primary.port)
            .user(&s.replication_user)
            .password(&s.replication_password)
            .dbname("postgres")
            .application_name("pgvigil")
            .connect_timeout(SOURCE_CONNECT_TIMEOUT);
        let (client, connection) =
            config.connect(NoTls).await.with_context(|| format!("connect to {}:{}", primary.host, primary.port))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "source connection ended");
            }
        });
        Ok(client)
    }
}

/// The configuration file pg_rewind reads for `--restore-target-wal`: beside the server's
/// socket, outside the data directory (which pg_rewind overwrites), one per member.
fn rewind_config_path(s: &crate::PgSettings) -> std::path::PathBuf {
    s.socket_dir.join(format!("pgvigil-rewind-{}.conf", s.member))
}

/// The data directory's own `postgresql.conf`, then `restore_command` (PostgreSQL reads
/// `postgresql.auto.conf` after it, as at any start).
pub fn rewind_config(main: &std::path::Path, restore_command: &str) -> String {
    format!(
        "# Written by pgvigil for one pg_rewind --restore-target-wal; removed after it.\n\
         include {}\nrestore_command = {}\n",
        crate::conf::quote_guc(&main.display().to_string()),
        crate::conf::quote_guc(restore_command)
    )
}

/// Lines of a timeline history file: `parent_tli <tab> switch_lsn <tab> reason`.
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let tli = f.next()?.parse().ok()?;
            let lsn = crate::lsn::parse_lsn(f.next()?)?;
            Some((tli, lsn))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rewind_config_includes_the_servers_and_adds_the_restore_command() {
        let text = super::rewind_config(
            std::path::Path::new("/srv/pg1/data/postgresql.conf"),
            "timeout 30 '/usr/bin/pgbackrest' --stanza='main' archive-get %f \"%p\"",
        );
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            [
                "include '/srv/pg1/data/postgresql.conf'",
                "restore_command = 'timeout 30 ''/usr/bin/pgbackrest'' --stanza=''main'' archive-get %f \"%p\"'",
            ]
        );
    }

    #[test]
    fn history_lines() {
        let text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tx\n# junk\n";
        assert_eq!(super::parse_history(text), vec![(1, 0x3000158), (2, 0x5000000)]);
    }
}
