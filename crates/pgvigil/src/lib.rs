//! pgvigil: a daemon beside each PostgreSQL server that keeps the cluster writable.
//!
//! # Layout
//! - [`config`]: the TOML file + `PGVIGIL_*` overrides, checked (bad config: exit 64).
//! - [`daemon`]: wiring of one member (Raft node, peer server, coordinator, agent) and shutdown.
//! - `peer_service`: the peer gRPC service; [`convert`]: its messages to and from the core's types.
//! - `coordination`: the coordinator's IO shell around `vigil_core::Coordinator`.
//! - `agent`: the agent's IO shell (observe, report, lease, fence, act).
//! - `replicated`: the cluster state as the Raft state machine; `local`: the agent's local memory.
//! - [`launch`]: start a cluster of local members as processes (used by `demo` and the tests).
//! - [`list`], [`demo`]: the `list` and `demo` commands. [`logging`]: tracing setup.

mod agent;
pub mod config;
pub mod convert;
mod coordination;
pub mod daemon;
pub mod demo;
pub mod launch;
pub mod list;
mod local;
pub mod logging;
mod peer_service;
mod replicated;
