//! Rewinding an old primary (`pg_rewind`) so it can follow the new one without a full clone.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::NoTls;

use crate::conf::quote_conninfo;
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
    pub async fn rewind_from(&self, primary: &Upstream, slot: &str) -> anyhow::Result<()> {
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
        let mut cmd = tool::command(s, "pg_rewind");
        cmd.arg("--target-pgdata")
            .arg(&s.data_dir)
            .arg("--source-server")
            .arg(source)
            // Password through the environment: command lines are visible to every local user.
            .env("PGPASSWORD", &s.replication_password);
        tool::run(cmd, "pg_rewind").await?;
        let rewound = started.elapsed();
        self.configure_standby(primary, slot)?;
        tracing::info!(
            member = %s.member,
            primary = %format!("{}:{}", primary.host, primary.port),
            rewind_ms = rewound.as_millis() as u64,
            "rewound"
        );
        Ok(())
    }

    async fn checkpoint_source(&self, primary: &Upstream) -> anyhow::Result<()> {
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
                tracing::debug!(error = %e, "rewind source connection ended");
            }
        });
        client.batch_execute("CHECKPOINT").await?;
        Ok(())
    }
}
