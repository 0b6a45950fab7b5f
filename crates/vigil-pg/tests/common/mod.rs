//! Shared helpers for the integration tests: a temp directory PostgreSQL may write to, free ports,
//! member settings, waiting on conditions with deadlines.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_pg::{PgSettings, Postgres, RunAs, Upstream};

pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
pub const SUPERUSER_PASSWORD: &str = "su pa'ss\\word";
/// Quotes, a backslash and a space: exercises every quoting layer (conninfo, GUC file, SQL).
pub const REPLICATION_PASSWORD: &str = "re'pl \\pw";

/// Deadline for conditions that normally hold within a second.
pub const SOON: Duration = Duration::from_secs(20);

/// The `postgres` system user when we run as root (PostgreSQL refuses root), else none.
pub fn run_as() -> Option<RunAs> {
    if nix::unistd::geteuid().is_root() {
        Some(RunAs::user("postgres").expect("a `postgres` system user (apt-get install postgresql)"))
    } else {
        None
    }
}

/// A temp directory owned by the server's user, removed on drop (also when a test fails). Declare it
/// before the `Postgres` handles, so they are dropped (postmasters shut down) before it is removed.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new().prefix("vigil-pg-test-").tempdir().expect("create temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if let Some(r) = run_as() {
            nix::unistd::chown(
                dir.path(),
                Some(nix::unistd::Uid::from_raw(r.uid)),
                Some(nix::unistd::Gid::from_raw(r.gid)),
            )
            .expect("chown temp dir");
        }
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Settings for `member`, everything under `<tmp>/<member>/`, on a free port.
    pub fn settings(&self, member: &str) -> PgSettings {
        settings_in(self.path(), member, free_port())
    }

    pub fn postgres(&self, member: &str) -> Postgres {
        Postgres::new(self.settings(member))
    }
}

/// Settings for `member` under `<base>/<member>/`.
pub fn settings_in(base: &Path, member: &str, port: u16) -> PgSettings {
    let base = base.join(member);
    PgSettings {
        member: member.to_string(),
        bin_dir: PathBuf::from(BIN_DIR),
        data_dir: base.join("data"),
        listen_address: "127.0.0.1".to_string(),
        port,
        socket_dir: base.join("sock"),
        run_as: run_as(),
        superuser: "postgres".to_string(),
        superuser_password: Some(SUPERUSER_PASSWORD.to_string()),
        replication_user: "replicator".to_string(),
        replication_password: REPLICATION_PASSWORD.to_string(),
        log_file: base.join("postgres.log"),
        keeper: vigil_pg::KeeperCommand {
            program: PathBuf::from(env!("CARGO_BIN_EXE_vigil-keeper")),
            args: Vec::new(),
            socket: base.join("keeper.sock"),
        },
        hba_extra: vec!["host all postgres 127.0.0.1/32 scram-sha-256".to_string()],
        replication_sources: vec!["127.0.0.1".to_string()],
        parameters: vec![
            // Small, so parallel tests with three servers each stay light.
            ("shared_buffers".to_string(), "16MB".to_string()),
            ("max_connections".to_string(), "30".to_string()),
        ],
        start_parameters: Vec::new(),
    }
}

/// Alive and not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
        == Some(false)
}

/// A port nothing listens on right now (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

pub fn upstream(pg: &Postgres) -> Upstream {
    Upstream { host: pg.settings().listen_address.clone(), port: pg.settings().port }
}

/// Evaluate `$body` (an `Option`) every 20 ms until it is `Some`, and yield its value; panic after
/// `$within`. Usable with `.await` inside `$body`.
#[macro_export]
macro_rules! wait_for {
    ($what:expr, $within:expr, $body:expr) => {{
        let within: std::time::Duration = $within;
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(value) = $body {
                break value;
            }
            if std::time::Instant::now() >= deadline {
                panic!("timed out after {within:?} waiting for {}", $what);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// initdb + start + setup_roles: a running primary.
pub async fn primary(dir: &TestDir, member: &str) -> Postgres {
    let mut pg = dir.postgres(member);
    pg.initdb().await.expect("initdb");
    pg.start().await.expect("start primary");
    pg.setup_roles().await.expect("setup_roles");
    pg
}

/// The slot for `member`: test members are lowercase letters, for which this is the daemon's
/// naming (`vigil_core::slot_name`).
pub fn slot(member: &str) -> String {
    format!("pgvigil_{member}")
}

/// Clone `member` from `primary` through its slot (created here) and start it as a standby.
pub async fn standby(dir: &TestDir, member: &str, primary: &Postgres) -> Postgres {
    let slot = slot(member);
    primary.ensure_slots(std::slice::from_ref(&slot)).await.expect("ensure_slots");
    let mut pg = dir.postgres(member);
    pg.clone_from(&upstream(primary), &slot).await.expect("clone_from");
    pg.start().await.expect("start standby");
    pg
}

/// Run one statement on `pg` as the superuser.
pub async fn exec(pg: &Postgres, sql: &str) {
    pg.connect().await.expect("connect").batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Some(()) when `sql` returns at least one row on `pg` (errors count as no).
pub async fn has_rows(pg: &Postgres, sql: &str) -> Option<()> {
    let client = pg.connect().await.ok()?;
    let rows = client.query(sql, &[]).await.ok()?;
    (!rows.is_empty()).then_some(())
}

/// Where `clone_from` copies before renaming into place.
pub fn sibling_clone_dir(pg: &Postgres) -> PathBuf {
    let mut s = pg.settings().data_dir.as_os_str().to_owned();
    s.push(".pgvigil-clone");
    PathBuf::from(s)
}
