//! pgvigil's PostgreSQL adapter: everything that touches one local PostgreSQL server.
//!
//! # Layout
//!
//! - [`settings`]: [`PgSettings`], [`RunAs`] (the `postgres` system user when we run as root), [`Upstream`].
//! - [`postgres`]: the [`Postgres`] handle (settings + the postmaster child); its methods live in the
//!   modules below, one concern each.
//! - [`process`]: starting the postmaster under a keeper, adopting one left by an earlier run,
//!   stopping it, the [`Fencer`] that can kill it from any task and carries the lease to the keeper.
//! - [`keeper`]: the keeper process, the postmaster's parent: enforces the primary's lease deadline
//!   on its own clock, so a stalled or restarting daemon never leaves a primary writable.
//! - [`proctree`]: SIGKILL to a process and everything below it (stopped processes included).
//! - [`observe`]: [`Observation`] of the running server and the superuser connection.
//! - [`initdb`]: creating a cluster and its roles.
//! - [`control`]: the control file (`pg_controldata`): how and where the server last stopped.
//! - [`replication`]: slots, `pg_basebackup` clones, following another primary, promotion.
//! - [`rewind`]: `pg_rewind` of an old primary so it can follow the new one.
//! - [`conf`]: writing configuration files (`postgresql.conf`, `pg_hba.conf`, `postgresql.auto.conf`)
//!   and quoting values for them.
//! - [`datadir`]: the data directory on disk: its state, creating it with the right owner, moving it aside.
//! - [`tool`]: running PostgreSQL's command-line programs (`initdb`, `pg_basebackup`, `pg_rewind`) as
//!   the server's user.
//! - [`lsn`]: WAL positions.
//! - [`error`]: [`PgError`], the cases a caller must tell apart.

pub mod conf;
pub mod control;
pub mod datadir;
pub mod error;
pub mod initdb;
pub mod keeper;
pub mod lsn;
pub mod observe;
pub mod postgres;
pub mod process;
pub mod proctree;
pub mod replication;
pub mod rewind;
pub mod settings;
pub mod tool;

pub use control::ControlData;
pub use datadir::DataDirState;
pub use error::PgError;
pub use keeper::{KeeperLease, KeeperStatus};
pub use lsn::{format_lsn, parse_lsn};
pub use observe::Observation;
pub use postgres::Postgres;
pub use process::{Fencer, KeeperCommand, StopMode};
pub use settings::{PgSettings, RunAs, Upstream};
