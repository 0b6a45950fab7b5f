//! Errors a caller must tell apart. They travel inside `anyhow::Error` (the public functions return
//! `anyhow::Result`); find them with `err.downcast_ref::<PgError>()`, which also sees through `.context()`.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// `initdb` / `clone_from` need an empty (or missing) data directory.
    #[error("data directory {0} is not empty")]
    DataDirNotEmpty(PathBuf),
    /// The server is (still) running where the operation needs it stopped.
    #[error("PostgreSQL is running on {0}")]
    Running(PathBuf),
    /// The operation needs a standby and the server is not in recovery.
    #[error("PostgreSQL is not in recovery (not a standby)")]
    NotStandby,
    /// The postmaster exited while we waited for it to accept connections.
    #[error("postgres exited during start-up ({status}); end of its log:\n{log_tail}")]
    StartFailed { status: String, log_tail: String },
    /// The postmaster did not accept connections before the deadline.
    #[error("postgres did not accept connections within {secs}s; end of its log:\n{log_tail}")]
    StartTimeout { secs: u64, log_tail: String },
    /// `pg_promote` did not finish within the wait.
    #[error("promotion did not finish within {0}s")]
    PromoteTimeout(u64),
}
