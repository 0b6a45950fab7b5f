//! What the adapter needs to know about one member's PostgreSQL.

use std::path::PathBuf;

use anyhow::Context as _;

/// The system user PostgreSQL runs as. PostgreSQL refuses to run as root, so when the daemon is root
/// every PostgreSQL program is started with these ids and the directories they write are chowned to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// Look up a system user by name (its primary group is used as gid).
    pub fn user(name: &str) -> anyhow::Result<RunAs> {
        let user = nix::unistd::User::from_name(name)
            .with_context(|| format!("look up system user {name:?}"))?
            .with_context(|| format!("no system user named {name:?}"))?;
        Ok(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }
}

/// `Debug` shows no password.
#[derive(Clone)]
pub struct PgSettings {
    /// This member's name: `application_name` in `primary_conninfo` and `cluster_name`.
    pub member: String,
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// `listen_addresses`; also the host other members use to reach this one.
    pub listen_address: String,
    pub port: u16,
    /// `unix_socket_directories`; the daemon's own connections go here.
    pub socket_dir: PathBuf,
    /// `Some` when the daemon runs as root.
    pub run_as: Option<RunAs>,
    /// Local superuser (e.g. "postgres"): trust over the unix socket only.
    pub superuser: String,
    /// Set by `setup_roles` when `Some`, so TCP clients can log in with scram.
    pub superuser_password: Option<String>,
    pub replication_user: String,
    pub replication_password: String,
    /// The postmaster's stdout/stderr are appended here.
    pub log_file: PathBuf,
    /// Extra `pg_hba.conf` lines, appended after ours.
    pub hba_extra: Vec<String>,
    /// Where the replication user may connect from: the members' hosts and the operator's extra
    /// networks (an address, a CIDR, or a host name), nothing else.
    pub replication_sources: Vec<String>,
    /// Extra GUCs written into `postgresql.conf` at initdb (so clones inherit them).
    pub parameters: Vec<(String, String)>,
    /// GUCs given on the postmaster's command line at every start (`-c name=value`): settings the
    /// daemon owns and that differ per member (the archive command names this member's files),
    /// so neither a clone's copy of the primary's files nor `ALTER SYSTEM` can change them.
    pub start_parameters: Vec<(String, String)>,
    /// How to start the keeper that holds the postmaster (see [`crate::keeper`]).
    pub keeper: crate::process::KeeperCommand,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const REDACTED: &str = "<redacted>";
        f.debug_struct("PgSettings")
            .field("member", &self.member)
            .field("bin_dir", &self.bin_dir)
            .field("data_dir", &self.data_dir)
            .field("listen_address", &self.listen_address)
            .field("port", &self.port)
            .field("socket_dir", &self.socket_dir)
            .field("run_as", &self.run_as)
            .field("superuser", &self.superuser)
            .field("superuser_password", &self.superuser_password.as_ref().map(|_| REDACTED))
            .field("replication_user", &self.replication_user)
            .field("replication_password", &REDACTED)
            .field("log_file", &self.log_file)
            .field("hba_extra", &self.hba_extra)
            .field("replication_sources", &self.replication_sources)
            .field("parameters", &self.parameters)
            .field("start_parameters", &self.start_parameters)
            .field("keeper", &self.keeper)
            .finish()
    }
}

/// A primary to stream from: the core's type, which the agent's decisions name.
pub use vigil_core::Upstream;

#[cfg(test)]
pub(crate) mod tests_support {
    use super::PgSettings;

    /// Settings for unit tests that only render files (nothing runs).
    pub fn settings() -> PgSettings {
        PgSettings {
            member: "pg1".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            data_dir: "/srv/pg1/data".into(),
            listen_address: "10.0.0.5".into(),
            port: 5432,
            socket_dir: "/srv/pg1/run".into(),
            run_as: None,
            superuser: "postgres".into(),
            superuser_password: None,
            replication_user: "replicator".into(),
            replication_password: "secret".into(),
            log_file: "/srv/pg1/postgresql.log".into(),
            hba_extra: Vec::new(),
            replication_sources: Vec::new(),
            parameters: Vec::new(),
            start_parameters: Vec::new(),
            keeper: crate::process::KeeperCommand {
                program: "/usr/bin/pgvigil".into(),
                args: vec!["keeper".into()],
                socket: "/srv/pg1/keeper.sock".into(),
            },
        }
    }
}
