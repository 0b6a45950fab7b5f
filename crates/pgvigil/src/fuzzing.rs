//! The functions that take untrusted input and are otherwise private to the daemon, named here so
//! that the fuzz targets (`vigil_tests::fuzz`) call exactly what the daemon calls. The config
//! loader ([`crate::config::parse`], [`crate::config::check`]), the peer messages'
//! [`crate::convert::decode_report`] and the token check [`crate::http_api::authorize`] are public
//! already.

/// The body of `POST /pause` and `POST /resume`.
pub use crate::admin::parse_body as pause_body;
/// The cluster state as the Raft state machine (`apply` of committed commands, `restore` of
/// snapshots).
pub use crate::replicated::Replicated;
/// The bodies of the role changes (`POST /switchover` ...) and their `at` times.
pub use crate::requests::{parse as request_body, parse_at};
