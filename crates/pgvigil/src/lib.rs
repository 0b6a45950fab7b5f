//! pgvigil: a daemon beside each PostgreSQL server that keeps the cluster writable.
//!
//! # Layout
//! - [`config`]: the TOML file + `PGVIGIL_*` overrides, checked (bad config: exit 64);
//!   [`install`]: the PostgreSQL programs of `postgres.bin_dir` checked.
//! - [`daemon`]: wiring of one member (Raft node, peer server, coordinator, agent) and shutdown.
//! - [`reload`]: SIGHUP reads the config file again and applies what may change at runtime;
//!   [`notify`]: systemd's notification protocol (READY, STATUS, WATCHDOG, STOPPING).
//! - `peer_service`: the peer gRPC service; [`convert`]: its messages to and from the core's types.
//! - `coordination`: the coordinator's IO shell around `vigil_core::Coordinator`.
//! - `agent`: the agent's IO shell (observe, act); `reporter`: its reporter task (reports, the lease,
//!   the keeper's lease, the fence).
//! - `replicated`: the cluster state as the Raft state machine; `local`: the agent's local memory.
//! - [`launch`]: start a cluster of local members as processes (used by `demo` and the tests).
//! - [`http_api`]: the HTTP API (axum); [`health`]: its load-balancer checks as pure functions;
//!   `admin`: pause/resume, carried out by the coordinator (forwarded to it by other members);
//!   `requests`: switchover, failover, failback, reinit; `hooks`: event hooks;
//!   `telemetry`: Prometheus metrics.
//! - [`tls`]: the `[tls]` table checked, TLS for the peer port and the API (rustls, ring);
//!   [`tls_live`]: the acceptor both ports use and the material a reload replaces.
//! - [`list`]: the cluster view and its table; [`cli`] + [`client`]: the verbs that talk to the
//!   HTTP API; [`demo`]: the `demo` command. [`logging`]: tracing setup (member and epoch on every line).
//! - [`proxy`]: the routing proxy (read-write port fenced by the lease, read-only port by lag);
//!   `proxy_feed`: what it learns from the coordinator's answers; `proxy_book`: its sessions
//!   per backend (the limit's slots), queued and refused sessions.
//! - [`fuzzing`]: the private parsers of untrusted input, named for the fuzz targets of `vigil-tests`.

mod admin;
mod agent;
pub mod backup;
pub mod cli;
pub mod client;
pub mod config;
pub mod convert;
mod coordination;
pub mod daemon;
pub mod demo;
pub mod fuzzing;
pub mod health;
mod hooks;
pub mod http_api;
pub mod install;
pub mod launch;
pub mod list;
mod local;
pub mod logging;
pub mod notify;
mod peer_service;
pub mod proxy;
mod proxy_book;
mod proxy_feed;
pub mod reload;
mod replicated;
mod reporter;
mod requests;
mod telemetry;
pub mod tls;
pub mod tls_live;
