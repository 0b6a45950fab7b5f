//! Restoring a backup and recovering it: `pgbackrest restore` into a directory, then one run of
//! PostgreSQL (its own child, archiving off, reachable only on a unix socket) until recovery has
//! ended, then a clean stop. Shared by `pgvigil restore` and the scheduled verification.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use vigil_pg::PgSettings;

/// Where recovery stops (pgBackRest's `--type` and `--target`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive.
    Latest,
    /// As soon as the backup is consistent.
    Immediate,
    /// Before the first transaction that committed after this time.
    Time(String),
    /// Up to this WAL position.
    Lsn(String),
    /// Up to this named restore point (`pg_create_restore_point`).
    Name(String),
}

impl Target {
    /// pgBackRest's restore options for this target. Recovery ends with a promotion: the result
    /// is a primary on a new timeline.
    pub fn pgbackrest_args(&self) -> Vec<String> {
        let promote = "--target-action=promote".to_string();
        match self {
            Target::Latest => vec!["--type=default".into()],
            Target::Immediate => vec!["--type=immediate".into(), promote],
            Target::Time(t) => vec!["--type=time".into(), format!("--target={t}"), promote],
            Target::Lsn(l) => vec!["--type=lsn".into(), format!("--target={l}"), promote],
            Target::Name(n) => vec!["--type=name".into(), format!("--target={n}"), promote],
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Latest => "the end of the archive".into(),
            Target::Immediate => "consistency".into(),
            Target::Time(t) => format!("time {t}"),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Name(n) => format!("restore point {n:?}"),
        }
    }

    /// The target from the command line's `--time`, `--lsn`, `--name` (at most one): an error
    /// that names the bad argument.
    pub fn from_args(time: Option<&str>, lsn: Option<&str>, name: Option<&str>) -> Result<Target, String> {
        match (time, lsn, name) {
            (None, None, None) => Ok(Target::Latest),
            (Some(t), None, None) => check_time(t).map(|()| Target::Time(t.trim().to_string())),
            (None, Some(l), None) => match vigil_pg::parse_lsn(l.trim()) {
                Some(_) => Ok(Target::Lsn(l.trim().to_string())),
                None => Err(format!("--lsn {l:?}: not a WAL position (like 0/3000060)")),
            },
            (None, None, Some(n)) => {
                if n.is_empty() || n.len() > 63 || n.chars().any(|c| c.is_control() || c == '\'' || c == '"') {
                    Err(format!("--name {n:?}: a restore point name has 1 to 63 characters, no quotes"))
                } else {
                    Ok(Target::Name(n.to_string()))
                }
            }
            _ => Err("give at most one of --time, --lsn and --name".into()),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` with an optional fraction and time zone (`+00`, `+01:00`, ` UTC`), the
/// form pgBackRest reads to choose the backup set.
fn check_time(t: &str) -> Result<(), String> {
    let bad =
        || Err(format!("--time {t:?}: write YYYY-MM-DD HH:MM:SS[.fraction][+zone], e.g. \"2026-11-30 23:05:00+00\""));
    let b = t.trim().as_bytes();
    if b.len() < 19 {
        return bad();
    }
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if !digits.iter().all(|&i| b[i].is_ascii_digit())
        || !seps.iter().all(|&(i, c)| b[i] == c)
        || !(b[10] == b' ' || b[10] == b'T')
    {
        return bad();
    }
    let rest = &t.trim()[19..];
    if !rest.chars().all(|c| c.is_ascii_digit() || ".+-: UTCZ".contains(c)) {
        return bad();
    }
    let (month, day, hour, minute, second) =
        (&t.trim()[5..7], &t.trim()[8..10], &t.trim()[11..13], &t.trim()[14..16], &t.trim()[17..19]);
    let n = |s: &str| s.parse::<u32>().unwrap_or(99);
    if !(1..=12).contains(&n(month)) || !(1..=31).contains(&n(day)) || n(hour) > 23 || n(minute) > 59 || n(second) > 60
    {
        return bad();
    }
    Ok(())
}

/// The keys pgBackRest's restore writes into `postgresql.auto.conf` (and `archive_mode`, which
/// `--archive-mode=off` adds): removed once recovery has ended, so that neither the new primary
/// nor a clone of it (pg_basebackup copies the file) stops at the same target or fetches WAL from
/// the source's stanza.
const RESTORE_KEYS: &[&str] = &[
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "archive_mode",
];

/// `postgresql.auto.conf` without the restore's settings and comment lines.
pub fn strip_restore_settings(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if RESTORE_KEYS.contains(&key) || line.starts_with("# Recovery settings generated by pgBackRest") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Rewrite `data_dir/postgresql.auto.conf` without the restore's settings.
pub fn clean_auto_conf(pg: &PgSettings, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    vigil_pg::datadir::write_file_atomic(&path, strip_restore_settings(&text).as_bytes(), 0o600, pg.run_as)
}

/// What one recovery run found.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The timeline it ended on.
    pub timeline: u32,
    /// How long from start to the end of recovery.
    pub took: Duration,
    /// The number of relations in the `postgres` database (its answer to a query).
    pub relations: i64,
}

/// One PostgreSQL server on a restored data directory: started as the server's user with
/// archiving off and no TCP listener, killed if dropped before [`Self::stop`].
pub struct RecoveryRun {
    child: tokio::process::Child,
    socket_dir: PathBuf,
    port: u16,
    superuser: String,
    log: PathBuf,
}

impl RecoveryRun {
    /// Start `postgres` on `data_dir`, its socket in `socket_dir` with `port`, its output appended
    /// to `log`.
    pub fn start(pg: &PgSettings, data_dir: &Path, socket_dir: &Path, port: u16, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        vigil_pg::datadir::chown(log, pg.run_as)?;
        let mut cmd = vigil_pg::tool::command(pg, "postgres");
        cmd.arg("-D").arg(data_dir);
        for (k, v) in [
            ("port", port.to_string()),
            ("listen_addresses", String::new()),
            ("unix_socket_directories", socket_dir.display().to_string()),
            ("archive_mode", "off".into()),
            ("hot_standby", "on".into()),
            ("primary_conninfo", String::new()),
            ("primary_slot_name", String::new()),
            ("synchronous_standby_names", String::new()),
            ("logging_collector", "off".into()),
            ("cluster_name", "pgvigil-restore".into()),
        ] {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
        let child = cmd.spawn().context("start postgres on the restored data directory")?;
        Ok(RecoveryRun {
            child,
            socket_dir: socket_dir.to_path_buf(),
            port,
            superuser: pg.superuser.clone(),
            log: log.to_path_buf(),
        })
    }

    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.superuser)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let (client, conn) = tokio::time::timeout(Duration::from_secs(5), c.connect(tokio_postgres::NoTls))
            .await
            .context("connect: timed out")??;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Wait until recovery has ended (the server was promoted) and the server answers a query;
    /// an error with the end of its log if it exits first or `deadline` passes.
    pub async fn wait_recovered(&mut self, started: Instant, deadline: Duration) -> anyhow::Result<Recovered> {
        let until = started + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "postgres on the restored data directory exited ({status}) before recovery ended:\n{}",
                    vigil_pg::tool::file_tail(&self.log, 8)
                );
            }
            let last = match self.query().await {
                Ok(Some(r)) => return Ok(Recovered { took: started.elapsed(), ..r }),
                Ok(None) => "still in recovery".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= until {
                anyhow::bail!(
                    "recovery did not end within {deadline:?} (last: {last}):\n{}",
                    vigil_pg::tool::file_tail(&self.log, 8)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `None` while in recovery; once it ended, the checks' answers.
    async fn query(&self) -> anyhow::Result<Option<Recovered>> {
        let c = self.connect().await?;
        let q = |sql: &'static str| {
            let c = &c;
            async move { tokio::time::timeout(Duration::from_secs(10), c.query_one(sql, &[])).await }
        };
        let in_recovery: bool = q("SELECT pg_is_in_recovery()").await.context("query: timed out")??.get(0);
        if in_recovery {
            return Ok(None);
        }
        let relations: i64 = q("SELECT count(*) FROM pg_class").await.context("query: timed out")??.get(0);
        // The timeline of the latest checkpoint lags the promotion: the one of the WAL written now.
        let tli: String = q("SELECT pg_walfile_name(pg_current_wal_lsn())").await.context("query: timed out")??.get(0);
        let timeline = u32::from_str_radix(tli.get(..8).unwrap_or("0"), 16).unwrap_or(0);
        Ok(Some(Recovered { timeline, took: Duration::ZERO, relations }))
    }

    /// Run one statement (e.g. `CHECKPOINT`) with a deadline.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let c = self.connect().await?;
        tokio::time::timeout(Duration::from_secs(300), c.batch_execute(sql)).await.context("timed out")??;
        Ok(())
    }

    /// A fast shutdown (SIGINT), waited for up to `deadline`; then SIGKILL.
    pub async fn stop(mut self, deadline: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGINT);
        }
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("wait for postgres")?;
                anyhow::ensure!(status.success(), "postgres stopped with {status}");
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                anyhow::bail!("postgres did not stop within {deadline:?}: killed")
            }
        }
    }
}

/// A TCP port nobody listens on now, for a recovery run's socket name (it listens on no TCP
/// address; a spare port keeps its lock file apart from the member's own server).
pub fn spare_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a spare port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_the_command_line() {
        assert_eq!(Target::from_args(None, None, None), Ok(Target::Latest));
        assert_eq!(
            Target::from_args(Some("2026-11-30 23:05:00.123+00"), None, None),
            Ok(Target::Time("2026-11-30 23:05:00.123+00".into()))
        );
        assert!(Target::from_args(Some("yesterday"), None, None).is_err());
        assert!(Target::from_args(Some("2026-13-30 23:05:00"), None, None).is_err());
        assert!(Target::from_args(Some("2026-11-30 23:05:00; rm"), None, None).is_err());
        assert_eq!(Target::from_args(None, Some("0/3000060"), None), Ok(Target::Lsn("0/3000060".into())));
        assert!(Target::from_args(None, Some("3000060"), None).is_err());
        assert!(Target::from_args(None, None, Some("before-upgrade")).is_ok());
        assert!(Target::from_args(None, None, Some("")).is_err());
        let both = Target::from_args(Some("2026-11-30 23:05:00"), Some("0/1"), None).expect_err("two targets");
        assert!(both.contains("at most one"), "{both}");
        assert_eq!(
            Target::Time("2026-11-30 23:05:00".into()).pgbackrest_args(),
            ["--type=time", "--target=2026-11-30 23:05:00", "--target-action=promote"]
        );
    }

    #[test]
    fn the_restore_settings_are_stripped() {
        let text = "# Do not edit this file manually!\nwork_mem = '8MB'\n\n\
                    # Recovery settings generated by pgBackRest restore on 2026-11-30 23:10:00\n\
                    restore_command = 'pgbackrest --stanza=main archive-get %f \"%p\"'\n\
                    recovery_target_time = '2026-11-30 23:05:00'\nrecovery_target_action = 'promote'\n\
                    archive_mode = 'off'\n";
        let out = strip_restore_settings(text);
        assert_eq!(out, "# Do not edit this file manually!\nwork_mem = '8MB'\n\n");
    }
}
