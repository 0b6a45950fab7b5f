//! Wiring of one member: the Raft node, the peer gRPC server, the coordinator loop, and the agent.
//!
//! One `Shared` holds what the tasks have in common; a tree of cancellation tokens stops them, and
//! `run` joins them before a deadline.

use crate::config::Settings;
use crate::replicated::Replicated;
use crate::{agent, coordination, peer_service};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use vigil_core::{ClusterState, Coordinator, MemberKind};
use vigil_raft::{PeerClients, RaftConfig, RaftHandle};

pub struct Shared {
    pub settings: Settings,
    pub raft: RaftHandle<Replicated>,
    pub coordinator: Mutex<Coordinator>,
    pub clients: PeerClients,
    /// Raft node id -> (member name, peer address).
    pub peers: HashMap<u64, (String, String)>,
}

impl Shared {
    pub fn name(&self) -> &str {
        &self.settings.raw.name
    }

    pub fn committed(&self) -> ClusterState {
        self.raft.state().borrow().state.clone()
    }

    pub fn leader(&self) -> Option<&(String, String)> {
        self.peers.get(&self.raft.status().borrow().leader_id)
    }

    /// The coordinator, even if a previous holder of the lock panicked: its data stays consistent
    /// because every method leaves it whole.
    pub fn coordinator(&self) -> std::sync::MutexGuard<'_, Coordinator> {
        self.coordinator.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let raw = &settings.raw;
    std::fs::create_dir_all(&raw.state_dir).with_context(|| format!("create {}", raw.state_dir.display()))?;
    let peers: HashMap<u64, (String, String)> =
        raw.members.iter().map(|m| (vigil_core::node_id(&m.name), (m.name.clone(), m.address.clone()))).collect();
    let t = &settings.timings;
    let cfg = RaftConfig {
        id: vigil_core::node_id(&raw.name),
        peers: peers.iter().map(|(id, (_, addr))| (*id, format!("http://{addr}"))).collect::<BTreeMap<_, _>>(),
        dir: raw.state_dir.join("raft"),
        tick: t.raft_tick,
        election_ticks: t.election_ticks as usize,
        heartbeat_ticks: t.heartbeat_ticks as usize,
        snapshot_threshold: 1000,
    };
    let raft_token = shutdown.child_token();
    let (raft, raft_task) =
        vigil_raft::start(cfg, Replicated::default(), raft_token.clone()).await.context("start the raft node")?;
    let coordinator = Coordinator::new(raw.members.iter().map(|m| m.name.clone()), t.clone())
        .with_sync(raw.replication.synchronous_mode, raw.replication.synchronous_node_count);
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        raft,
        coordinator: Mutex::new(coordinator),
        clients: PeerClients::new(),
        peers,
    });

    let listener = tokio::net::TcpListener::bind(&raw.listen)
        .await
        .with_context(|| format!("listen on {} (config key `listen`)", raw.listen))?;
    let server_token = shutdown.child_token();
    let server = tokio::spawn(peer_service::serve(shared.clone(), listener, server_token.clone()));
    let tasks_token = shutdown.child_token();
    let coord = tokio::spawn(coordination::run(shared.clone(), tasks_token.clone()));
    let agent = match raw.kind {
        MemberKind::Postgres => tokio::spawn(agent::run(shared.clone(), tasks_token.clone())),
        MemberKind::Witness => tokio::spawn(agent::run_witness(shared.clone(), tasks_token.clone())),
    };
    tracing::info!(member = %raw.name, listen = %raw.listen, "pgvigil started");

    shutdown.cancelled().await;
    tracing::info!("shutting down");
    // The agent stops PostgreSQL; give it time for a clean (fast) shutdown before anything else.
    let deadline = Duration::from_secs(30);
    for (what, task) in [("agent", agent), ("coordinator", coord)] {
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!("{what} stopped with an error: {e:#}"),
            Ok(Err(e)) => tracing::error!("{what} task failed: {e}"),
            Err(_) => tracing::error!("{what} did not stop within {deadline:?}"),
        }
    }
    server_token.cancel();
    raft_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), raft_task).await;
    tracing::info!("stopped");
    Ok(())
}
