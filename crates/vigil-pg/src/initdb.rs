//! Creating a cluster (`initdb` plus our configuration) and its roles.

use std::time::Instant;

use anyhow::Context as _;
use tokio_postgres::Client;

use crate::conf::{pg_hba, postgresql_conf_block, quote_ident, quote_literal};
use crate::datadir::{append_file, create_dir_owned, ensure_empty, write_file_atomic};
use crate::postgres::Postgres;
use crate::tool;

/// What pg_rewind calls on its source server. Granted to the replication user so pg_rewind can use
/// it instead of a superuser (PostgreSQL's pg_rewind documentation lists exactly these). Grants are
/// per database: pg_rewind must connect to `dbname=postgres`.
const REWIND_FUNCTIONS: &[&str] = &[
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

impl Postgres {
    /// `initdb` with data checksums and trust for the local superuser, then our `postgresql.conf`
    /// block (cluster-wide settings + `parameters`) and `pg_hba.conf`. Errors with
    /// [`crate::PgError::DataDirNotEmpty`] if the data directory holds anything.
    pub async fn initdb(&self) -> anyhow::Result<()> {
        let s = self.settings();
        let started = Instant::now();
        ensure_empty(&s.data_dir)?;
        create_dir_owned(&s.data_dir, 0o700, s.run_as)?;
        let mut cmd = tool::command(s, "initdb");
        cmd.arg("-D").arg(&s.data_dir).arg("-U").arg(&s.superuser).args([
            "--data-checksums",
            "--encoding=UTF8",
            // Locale from the environment would make clusters differ between hosts.
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]);
        tool::run(cmd, "initdb").await?;

        let conf = postgresql_conf_block(s)?;
        append_file(&s.data_dir.join("postgresql.conf"), conf.as_bytes())?;
        write_file_atomic(&s.data_dir.join("pg_hba.conf"), pg_hba(s).as_bytes(), 0o600, s.run_as)?;
        tracing::info!(
            member = %s.member,
            data_dir = %s.data_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initdb done"
        );
        Ok(())
    }

    /// On a running primary: create the replication role (LOGIN REPLICATION) or reset its password,
    /// grant it what pg_rewind needs (its functions and, on 15+, `pg_checkpoint`), and set the superuser's password when configured. Idempotent.
    pub async fn setup_roles(&self) -> anyhow::Result<()> {
        let s = self.settings();
        let client = self.connect().await?;
        quiet_session(&client).await?;

        let repl = quote_ident(&s.replication_user);
        let password = quote_literal(&s.replication_password);
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&s.replication_user])
            .await
            .context("look up the replication role")?
            .is_some();
        let verb = if exists { "ALTER" } else { "CREATE" };
        client
            .batch_execute(&format!("{verb} ROLE {repl} WITH LOGIN REPLICATION PASSWORD {password}"))
            .await
            .with_context(|| format!("{verb} ROLE {repl}"))?;
        for function in REWIND_FUNCTIONS {
            client
                .batch_execute(&format!("GRANT EXECUTE ON FUNCTION {function} TO {repl}"))
                .await
                .with_context(|| format!("grant {function} to {repl}"))?;
        }
        // pg_rewind's caller checkpoints the new primary as this user first (see `rewind`);
        // the pg_checkpoint role exists from PostgreSQL 15 on.
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .context("read server_version_num")?
            .try_get(0)?;
        if version >= 150_000 {
            client
                .batch_execute(&format!("GRANT pg_checkpoint TO {repl}"))
                .await
                .with_context(|| format!("grant pg_checkpoint to {repl}"))?;
        }
        if let Some(su_password) = &s.superuser_password {
            client
                .batch_execute(&format!(
                    "ALTER ROLE {} WITH PASSWORD {}",
                    quote_ident(&s.superuser),
                    quote_literal(su_password)
                ))
                .await
                .context("set the superuser's password")?;
        }
        tracing::info!(member = %s.member, created = !exists, "roles set up");
        Ok(())
    }
}

/// Keep passwords out of the server log (statement logging, and the statement echoed with an error),
/// and check that our literal quoting is valid for this session.
pub(crate) async fn quiet_session(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "SET log_statement = 'none'; SET log_min_error_statement = 'panic'; \
             SET log_min_duration_statement = -1",
        )
        .await
        .context("configure the session's logging")?;
    let scs: String = client
        .query_one("SHOW standard_conforming_strings", &[])
        .await
        .context("read standard_conforming_strings")?
        .try_get(0)?;
    anyhow::ensure!(scs == "on", "standard_conforming_strings is {scs:?}; pgvigil needs it on to quote passwords");
    Ok(())
}
