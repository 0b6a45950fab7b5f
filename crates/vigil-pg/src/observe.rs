//! Reading the local server's state, and the superuser connection everything else uses.

use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::{Client, NoTls, Statement};
use vigil_core::report::ReplicaStatus;

use crate::lsn::parse_lsn;
use crate::postgres::Postgres;
use crate::process::ChildState;

/// Connecting over the local socket takes milliseconds; longer means the server is not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `observe` gives up (running = false) after this long, connection included.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Every short exchange with a server (local or another member's) ends within this: a server that
/// stops answering (a frozen process still answers TCP keepalives) must never hold up the agent.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(5);
/// A CHECKPOINT may legitimately take longer.
pub const CHECKPOINT_DEADLINE: Duration = Duration::from_secs(60);

/// `fut`, or an error naming `what` once `deadline` has passed.
pub async fn within<T>(
    deadline: Duration,
    what: &str,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("{what}: no answer within {deadline:?}")),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Accepts connections right now.
    pub running: bool,
    pub in_recovery: bool,
    /// The timeline the server is on now; for a standby the one it receives (or, with no WAL
    /// receiver, the newest it has WAL or a checkpoint for).
    pub timeline: u32,
    /// `pg_current_wal_lsn()` on a primary, else 0.
    pub current_lsn: u64,
    /// `pg_last_wal_receive_lsn()` on a standby (0 if none), else = `current_lsn`.
    pub received_lsn: u64,
    /// `pg_last_wal_replay_lsn()` on a standby, else = `current_lsn`.
    pub replay_lsn: u64,
    /// Standby: `pg_stat_wal_receiver.status = 'streaming'`.
    pub streaming: bool,
    /// Standby: `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// Standby: host/port it streams from (`pg_stat_wal_receiver.sender_host/sender_port`).
    pub upstream: Option<(String, u16)>,
    /// Primary: `synchronous_standby_names` as this server runs with it now.
    pub sync_standby_names: Option<String>,
    /// Primary: its WAL senders (`pg_stat_replication`), as the report carries them (the
    /// standby's `application_name`, which pgvigil sets to the member name, is `member`).
    pub replicas: Vec<ReplicaStatus>,
}

/// The first statement of every check: the role and, on a standby, all it needs. On a primary
/// the standby columns are NULL. The timeline falls back to the newest WAL segment in pg_wal
/// (names start with the timeline in hex, so max() is the newest) and the last restartpoint, for
/// a standby whose receiver is not running; the CASE keeps PostgreSQL from listing pg_wal and
/// reading pg_control when a receiver runs (uncorrelated subqueries are evaluated on first use).
const ROLE_QUERY: &str = "\
SELECT pg_is_in_recovery(),
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       r.status,
       r.received_tli,
       r.sender_host,
       r.sender_port,
       CASE WHEN r.received_tli IS NULL AND pg_is_in_recovery()
            THEN (SELECT timeline_id FROM pg_control_checkpoint()) END,
       CASE WHEN r.received_tli IS NULL AND pg_is_in_recovery()
            THEN (SELECT max(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$') END,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true";

/// A primary's position and its WAL senders, one row per sender (one row of NULLs without).
const PRIMARY_QUERY: &str = "\
SELECT pg_current_wal_lsn()::text,
       pg_walfile_name(pg_current_wal_lsn()),
       current_setting('synchronous_standby_names'),
       s.application_name,
       s.flush_lsn::text,
       s.state
FROM (SELECT 1) AS one LEFT JOIN pg_stat_replication AS s ON true";

/// The connection the checks keep, with its statements prepared once: a check is then one
/// round trip, with no parsing or planning on the server.
pub(crate) struct Observer {
    client: Client,
    role: Statement,
    primary: Statement,
    /// The last check found a primary: the next sends both statements at once.
    was_primary: bool,
}

impl Observer {
    async fn open(client: Client) -> anyhow::Result<Observer> {
        let role = client.prepare(ROLE_QUERY).await.context("prepare the role query")?;
        let primary = client.prepare(PRIMARY_QUERY).await.context("prepare the primary query")?;
        Ok(Observer { client, role, primary, was_primary: false })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

impl Postgres {
    /// Connect as the superuser over the unix socket, to the `postgres` database.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let s = self.settings();
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&s.socket_dir)
            .port(s.port)
            .user(&s.superuser)
            .dbname("postgres")
            .application_name("pgvigil")
            // The daemon's own writes (roles, after a promotion) must not wait for a synchronous
            // standby: none can connect before the daemon has made its slot.
            .options("-c synchronous_commit=local")
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("connect to PostgreSQL at {}/.s.PGSQL.{}", s.socket_dir.display(), s.port))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// What the server is doing now. Never errors: down, or no answer within ~1s, is `running: false`.
    pub async fn observe(&mut self) -> Observation {
        if let ChildState::Exited = self.child_state() {
            tracing::warn!(member = %self.settings().member, "postmaster exited");
            self.observer = None;
            return Observation::default();
        }
        match tokio::time::timeout(OBSERVE_TIMEOUT, self.observe_on_a_connection()).await {
            Ok(Ok(obs)) => obs,
            Ok(Err(e)) => {
                tracing::debug!(error = format!("{e:#}"), "observe: server not answering");
                Observation::default()
            }
            Err(_) => {
                tracing::debug!("observe: timed out");
                Observation::default()
            }
        }
    }

    /// On the connection kept from the last observation, else (none, closed, or it failed: a
    /// restarted server closes it) on a new one, kept for the next. One connection for every
    /// check instead of a fork and an authentication per check. A timeout drops it (the future
    /// owns it then), so a server that stopped answering gets a fresh connection next time.
    async fn observe_on_a_connection(&mut self) -> anyhow::Result<Observation> {
        if let Some(mut observer) = self.observer.take().filter(|o| !o.is_closed()) {
            if let Ok(obs) = query_observation(&mut observer).await {
                self.observer = Some(observer);
                return Ok(obs);
            }
        }
        let mut observer = Observer::open(self.connect().await?).await?;
        let obs = query_observation(&mut observer).await?;
        self.observer = Some(observer);
        Ok(obs)
    }
}

async fn query_observation(o: &mut Observer) -> anyhow::Result<Observation> {
    let (row, primary_rows) = if o.was_primary {
        // Sent together and answered together: one round trip, one wake-up, on a primary that
        // stays one. On a server that has become a standby since, the second statement fails
        // (no WAL position during recovery; each has its own Sync, so the first is unaffected):
        // the first says so, and the second's answer is not used.
        let (row, rows) = tokio::join!(o.client.query_one(&o.role, &[]), o.client.query(&o.primary, &[]));
        (row?, Some(rows))
    } else {
        (o.client.query_one(&o.role, &[]).await?, None)
    };
    let in_recovery: bool = row.try_get(0)?;
    o.was_primary = !in_recovery;
    if !in_recovery {
        let rows = match primary_rows {
            Some(rows) => rows?,
            None => o.client.query(&o.primary, &[]).await?,
        };
        let first = rows.first().context("the primary query returned no row")?;
        let lsn = lsn_column(first.try_get(0)?)?;
        let walfile: String = first.try_get(1)?;
        let sync: String = first.try_get(2)?;
        let mut replicas = Vec::new();
        for r in &rows {
            // The LEFT JOIN's row of NULLs when no WAL sender runs.
            let Some(name) = r.try_get::<_, Option<String>>(3)? else { continue };
            let state: Option<String> = r.try_get(5)?;
            replicas.push(ReplicaStatus {
                member: name,
                flush_lsn: lsn_column(r.try_get(4)?)?,
                streaming: state.as_deref() == Some("streaming"),
            });
        }
        return Ok(Observation {
            running: true,
            in_recovery: false,
            timeline: timeline_of_walfile(&walfile)
                .with_context(|| format!("timeline of WAL file name {walfile:?}"))?,
            current_lsn: lsn,
            received_lsn: lsn,
            replay_lsn: lsn,
            streaming: false,
            replay_paused: false,
            upstream: None,
            sync_standby_names: Some(sync),
            replicas,
        });
    }
    let received_lsn = lsn_column(row.try_get(1)?)?;
    let replay_lsn = lsn_column(row.try_get(2)?)?;
    let status: Option<String> = row.try_get(3)?;
    let received_tli: Option<i32> = row.try_get(4)?;
    let sender_host: Option<String> = row.try_get(5)?;
    let sender_port: Option<i32> = row.try_get(6)?;
    let checkpoint_tli: Option<i32> = row.try_get(7)?;
    let newest_walfile: Option<String> = row.try_get(8)?;
    let replay_paused: Option<bool> = row.try_get(9)?;
    let timeline = match received_tli.and_then(|t| u32::try_from(t).ok()) {
        Some(t) if t > 0 => t,
        _ => {
            let from_wal = newest_walfile.as_deref().and_then(timeline_of_walfile);
            let from_checkpoint = checkpoint_tli.and_then(|t| u32::try_from(t).ok());
            from_wal.max(from_checkpoint).unwrap_or(0)
        }
    };
    let upstream = match (sender_host, sender_port.and_then(|p| u16::try_from(p).ok())) {
        (Some(host), Some(port)) => Some((host, port)),
        _ => None,
    };
    Ok(Observation {
        running: true,
        in_recovery: true,
        timeline,
        current_lsn: 0,
        received_lsn,
        replay_lsn,
        streaming: status.as_deref() == Some("streaming"),
        replay_paused: replay_paused.unwrap_or(false),
        upstream,
        sync_standby_names: None,
        replicas: Vec::new(),
    })
}

/// An LSN column read as text; NULL is 0.
fn lsn_column(value: Option<String>) -> anyhow::Result<u64> {
    match value {
        None => Ok(0),
        Some(s) => parse_lsn(&s).with_context(|| format!("bad LSN {s:?}")),
    }
}

/// WAL segment names are `TTTTTTTTXXXXXXXXYYYYYYYY`, the first 8 hex digits the timeline.
fn timeline_of_walfile(name: &str) -> Option<u32> {
    let tli = u32::from_str_radix(name.get(..8)?, 16).ok()?;
    (tli > 0).then_some(tli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walfile_timeline() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("0000001A0000000000000003"), Some(26));
        assert_eq!(timeline_of_walfile("0000"), None);
        assert_eq!(timeline_of_walfile("00000000000000000000000A"), None);
    }
}
