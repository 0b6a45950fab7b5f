//! The pure core of pgvigil: everything that decides, nothing that does IO.
//!
//! # Layout
//! - [`state`]: the replicated cluster state and the commands that change it (the Raft state machine).
//! - [`report`]: what an agent tells the coordinator about its PostgreSQL.
//! - [`sync`]: the synchronous replication mode.
//! - [`timing`]: the timing settings and their consistency checks.
//! - [`candidate`]: which standby is the best one to promote.
//! - [`coordinator`]: the Raft leader's decisions: lease grants, failure detection, bootstrap, failover.
//! - [`lease`]: the primary agent's view of its lease.
//! - [`switchover`]: operators' requests (switchover, failover, failback, reinit) and the
//!   coordinator's steps of a planned switchover.
//! - [`agent`]: the reconciler that turns the committed state and the local PostgreSQL into actions.
//! - [`planted`]: test-only switches that break a safety rule, for the simulation's teeth test
//!   (inert unless the `planted-bugs` feature is on and a run sets them).
//! - [`backup`]: backups as cluster decisions: the schedule (cron-like), the replicated record of
//!   backups, and which backup is due when and on which member.
//! - [`verify`]: the scheduled proof of restorability (restore the latest backup on a standby's
//!   host, recover, query, `pgbackrest verify`): when it is due, which standby, its record.
//! - [`proxy`]: the routing proxy's decisions (read-write fenced by the lease, the read-only pool).
//! - [`proxy_header`]: the PROXY protocol header (versions 1 and 2) a load balancer may send
//!   before a client's bytes, and the trusted networks whose connections must carry one.
//! - [`pgwire`]: the few bits of PostgreSQL's wire protocol the proxy reads and writes (a client's
//!   first packet, the ErrorResponse of a refused session).
//! - [`tags`]: a member's tags (a map, carried as it is) and the typed accessors the rules read.
//! - [`repeats`]: thinning repeated warnings (once, then at most once a minute with a count, and
//!   once when they stop), for every crate's logs.
//!
//! Rules that hold everywhere here: no IO, no tokio, no clock reads. Time is passed in as
//! `std::time::Instant` (monotonic) or as Unix milliseconds (for event records only).

pub mod agent;
pub mod backup;
pub mod candidate;
pub mod coordinator;
pub mod engine;
pub mod lease;
pub mod pgwire;
pub mod planted;
pub mod proxy;
pub mod proxy_header;
pub mod repeats;
pub mod report;
pub mod request;
pub mod state;
pub mod switchover;
pub mod sync;
pub mod tags;
pub mod timing;
pub mod verify;

pub use agent::{AgentAction, AgentInput, LocalMemory, Upstream};
pub use coordinator::Coordinator;
pub use engine::{Input, Note, Output, PendingGrant, ReportAnswer};
pub use lease::Lease;
pub use repeats::Repeats;
pub use report::{DataDir, HealthReport, MemberKind, PgStatus};
pub use request::{Decision, Outcome, Refusal, Request};
pub use state::{ClusterState, Command, Event, EventKind, Member, Rejected};
pub use state::{Switchover, SwitchoverOutcome};
pub use sync::SyncMode;
pub use tags::Tags;
pub use timing::{LeaseTimings, TimingError, Timings, MAX_TIMING};

/// The name of the physical replication slot that the primary keeps for `member`.
/// PostgreSQL allows `[a-z0-9_]`, at most 63 bytes.
pub fn slot_name(member: &str) -> String {
    let mut s = String::from("pgvigil_");
    for c in member.chars() {
        let c = c.to_ascii_lowercase();
        s.push(if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' });
    }
    s.truncate(63);
    s
}

/// A stable, non-zero Raft node id for a member name (FNV-1a, 64 bit), so every member derives the
/// same ids from the same member list without a separate id setting.
pub fn node_id(member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix milliseconds (for people; history details).
pub fn format_unix_ms(ms: u64) -> String {
    use std::fmt::Write as _;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    // humantime writes years up to 9999 and fails after (`to_string` would panic on that).
    let mut text = String::new();
    match write!(text, "{}", humantime::format_rfc3339_seconds(t)) {
        Ok(()) => text,
        Err(_) => format!("{ms} ms after 1970-01-01T00:00:00Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_valid_postgres_identifiers() {
        assert_eq!(slot_name("node-B.1"), "pgvigil_node_b_1");
        assert_eq!(slot_name("DB-East.2"), "pgvigil_db_east_2");
        assert_eq!(slot_name("naïve"), "pgvigil_na_ve");
        assert_eq!(slot_name(""), "pgvigil_");
        let long = slot_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert!(long.starts_with("pgvigil_xxx"));
        // Non-ASCII becomes '_' first, so cutting at 63 bytes never splits a character.
        let long_unicode = slot_name(&"é".repeat(100));
        assert_eq!(long_unicode.len(), 63);
        assert!(long_unicode.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("a"), node_id("a"));
        assert_ne!(node_id("a"), node_id("b"));
        assert_ne!(node_id(""), 0);
    }
}
