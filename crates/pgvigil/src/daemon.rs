//! Wiring of one member: the Raft node, the peer gRPC server, the coordinator loop, and the agent.
//!
//! One `Shared` holds what the tasks have in common; a tree of cancellation tokens stops them, and
//! `run` joins them before a deadline.

use crate::config::{Settings, StopModeConfig};
use crate::replicated::Replicated;
use crate::tls_live::LiveTls;
use crate::{agent, coordination, hooks, http_api, logging, notify, peer_service, reload, telemetry};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vigil_core::{ClusterState, Coordinator, Lease, MemberKind, PgStatus};
use vigil_raft::{PeerClients, PeerNames, RaftConfig, RaftHandle};

pub struct Shared {
    pub settings: Settings,
    pub raft: RaftHandle<Replicated>,
    /// The coordinator task (`coordination::run`), which owns the coordinator.
    pub coordinator: coordination::CoordinatorHandle,
    pub clients: PeerClients,
    /// Raft node id -> (member name, peer address).
    pub peers: HashMap<u64, (String, String)>,
    /// The members' names by Raft node id, for log lines.
    pub names: PeerNames,
    /// What this member's agent last saw of its PostgreSQL (the agent publishes it).
    pub pg_status: watch::Sender<PgStatus>,
    /// The primary lease this member's agent holds.
    pub lease: Arc<Mutex<Lease>>,
    /// The primary's WAL position as the coordinator last told this member (0: not known).
    pub primary_lsn: AtomicU64,
    /// When the agent's reporter and the coordinator loop last went round.
    pub alive: Liveness,
    /// The metrics of this process, and what they need to measure a failover.
    pub telemetry: telemetry::Telemetry,
    /// The `[hooks]` commands.
    pub hooks: hooks::Hooks,
    /// What a configuration reload (SIGHUP) may change: tags, the API token, ... (`reload.rs`).
    /// Read it where it is used, never from `settings`.
    pub runtime: watch::Sender<reload::Runtime>,
    /// The TLS material in use for new connections (a reload may renew it); None: plain text.
    pub tls: Option<LiveTls>,
    /// The coordinator's latest answer, as the routing proxy needs it (`proxy_feed.rs`).
    pub proxy_feed: watch::Sender<Option<crate::proxy_feed::Feed>>,
    /// The routing proxy's view for `GET /proxy`, read live (unset: no proxy).
    pub proxy_status: std::sync::OnceLock<crate::proxy::StatusHandle>,
    /// What this member's reports offer as a backup source while its pgBackRest TLS server runs
    /// (`run_on = "standby"`; set by `backup/server.rs`). None: no server, or it is down.
    pub backup_source: std::sync::Mutex<Option<vigil_core::backup::BackupSource>>,
    /// When the latest report the coordinator acknowledged was sent: a backup on this standby
    /// is killed when its reports go unacknowledged (the coordinator then moves it).
    pub report_acked: std::sync::Mutex<Option<Instant>>,
}

/// When the daemon's periodic loops last went round, for `GET /liveness`.
pub struct Liveness {
    start: Instant,
    reporter_ms: AtomicU64,
    coordinator_ms: AtomicU64,
}

impl Liveness {
    fn new(start: Instant) -> Self {
        Liveness { start, reporter_ms: AtomicU64::new(0), coordinator_ms: AtomicU64::new(0) }
    }

    fn mark(&self, slot: &AtomicU64) {
        slot.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn mark_reporter(&self) {
        self.mark(&self.reporter_ms);
    }

    pub fn mark_coordinator(&self) {
        self.mark(&self.coordinator_ms);
    }

    /// Both loops went round within `within` before `now`.
    pub fn alive(&self, now: Instant, within: Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.start).as_millis() as u64;
        let limit = within.as_millis() as u64;
        [&self.reporter_ms, &self.coordinator_ms]
            .iter()
            .all(|s| now_ms.saturating_sub(s.load(Ordering::Relaxed)) <= limit)
    }
}

impl Shared {
    /// Proposes `cmd` (see `RaftHandle::propose`). A command that does not encode is refused
    /// here, never proposed as an empty entry.
    pub async fn propose(&self, cmd: &vigil_core::Command, timeout: Duration) -> Result<u64, vigil_raft::RaftError> {
        let bytes = cmd.encode().map_err(|e| vigil_raft::RaftError::Unencodable(e.to_string()))?;
        self.raft.propose(bytes, timeout).await
    }

    pub fn name(&self) -> &str {
        &self.settings.raw.name
    }

    pub fn committed(&self) -> ClusterState {
        self.raft.state().borrow().state.clone()
    }

    pub fn leader(&self) -> Option<&(String, String)> {
        self.peers.get(&self.raft.status().borrow().leader_id)
    }

    /// Whether this member holds the primary lease for `epoch` now.
    pub fn lease_valid(&self, epoch: u64, now: Instant) -> bool {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).valid(epoch, now)
    }

    pub fn lease_remaining(&self, epoch: u64, now: Instant) -> Duration {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).remaining(epoch, now)
    }
}

/// The state dir's mode: 0700, or 0711 when PostgreSQL's data or socket directory lies below it
/// (PostgreSQL, running as its own user, must traverse it; it needs not list it). A wider mode is
/// narrowed to that; the files below are the daemon's own (0600) or PostgreSQL's (0700 dirs).
fn secure_state_dir(settings: &Settings) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &settings.raw.state_dir;
    let below = |p: &std::path::Path| p.starts_with(dir);
    // With [backup], PostgreSQL's archive command reaches `<state_dir>/pgbackrest` too.
    let pg_below =
        settings.raw.postgres.as_ref().is_some_and(|pg| below(&pg.data_dir) || below(&settings.socket_dir()))
            || settings.backup.is_some();
    let target = if pg_below { 0o711 } else { 0o700 };
    let mode = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?.permissions().mode() & 0o777;
    if mode & !target != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(target))
            .with_context(|| format!("chmod {target:o} {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "state directory mode {mode:o} narrowed to {target:o}");
    }
    Ok(())
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let raw = &settings.raw;
    std::fs::create_dir_all(&raw.state_dir).with_context(|| format!("create {}", raw.state_dir.display()))?;
    secure_state_dir(&settings)?;
    let peers: HashMap<u64, (String, String)> =
        raw.members.iter().map(|m| (vigil_core::node_id(&m.name), (m.name.clone(), m.address.clone()))).collect();
    let t = &settings.timings;
    crate::tls::install_provider();
    // The Raft transport gets channels of its own. A reload renews the TLS material of both
    // (clones share it).
    let (raft_clients, clients) = (settings.peer_clients(), settings.peer_clients());
    if settings.raw.peer_auth.insecure_unauthenticated {
        tracing::warn!(
            listen = %raw.listen,
            "peer_auth.insecure_unauthenticated = true: anyone who can reach the peer port can step Raft, \
             read the cluster state and pause or switch over the cluster"
        );
    }
    let tls = match &settings.tls {
        Some(tls) => Some(LiveTls::new(tls, vec![raft_clients.clone(), clients.clone()]).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let names = PeerNames::new(peers.iter().map(|(id, (name, _))| (*id, name.clone())).collect());
    let cfg = RaftConfig {
        id: vigil_core::node_id(&raw.name),
        peers: peers.iter().map(|(id, (_, addr))| (*id, addr.clone())).collect::<BTreeMap<_, _>>(),
        names: names.clone(),
        clients: raft_clients,
        dir: raw.state_dir.join("raft"),
        tick: t.raft_tick,
        election_ticks: t.election_ticks as usize,
        heartbeat_ticks: t.heartbeat_ticks as usize,
        follower_wake: t.follower_wake(),
        snapshot_threshold: 1000,
    };
    let raft_token = CancellationToken::new();
    let (raft, raft_task) =
        vigil_raft::start(cfg, Replicated::default(), raft_token.clone()).await.context("start the raft node")?;
    let coordinator = Coordinator::new(raw.members.iter().map(|m| m.name.clone()), t.clone())
        .with_sync(raw.replication.synchronous_mode, raw.replication.synchronous_node_count)
        .with_preferred_primary(raw.replication.preferred_primary.clone())
        .named(&raw.name)
        .with_backups(crate::backup::policy(&settings));
    let (coordinator, coordinator_task) = coordination::channel(coordinator);
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        raft,
        coordinator,
        clients,
        peers,
        names,
        pg_status: watch::Sender::new(PgStatus::default()),
        lease: Default::default(),
        primary_lsn: AtomicU64::new(0),
        alive: Liveness::new(Instant::now()),
        telemetry: telemetry::Telemetry::install(),
        hooks: hooks::Hooks::new(&raw.name, &raw.hooks),
        runtime: watch::Sender::new(reload::Runtime::of(&settings)),
        tls,
        proxy_feed: watch::Sender::new(None),
        proxy_status: std::sync::OnceLock::new(),
        backup_source: std::sync::Mutex::new(None),
        report_acked: std::sync::Mutex::new(None),
    });
    tokio::spawn(reload::run(shared.clone(), shutdown.child_token()));
    tokio::spawn(logging::follow_epoch(shared.raft.state(), shutdown.child_token()));

    let listener = tokio::net::TcpListener::bind(&raw.listen)
        .await
        .with_context(|| format!("listen on {} (config key `listen`)", raw.listen))?;
    let server_token = CancellationToken::new();
    let server = tokio::spawn(peer_service::serve(shared.clone(), listener, server_token.clone()));
    let tasks_token = CancellationToken::new();
    let coord = tokio::spawn(coordination::run(shared.clone(), coordinator_task, tasks_token.clone()));
    let api_token = CancellationToken::new();
    let api = match &raw.api {
        Some(api) => {
            let listener = tokio::net::TcpListener::bind(&api.listen)
                .await
                .with_context(|| format!("listen on {} (config key `api.listen`)", api.listen))?;
            let (shared, token) = (shared.clone(), api_token.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = http_api::serve(shared, listener, token).await {
                    tracing::error!("the HTTP API stopped: {e:#}");
                }
            }))
        }
        None => {
            tracing::warn!("no [api] table: no HTTP API (health checks, metrics, pause/resume)");
            None
        }
    };
    // Before the agent starts PostgreSQL: its archive command needs the files and the permits.
    crate::backup::start(&shared, tasks_token.clone()).context("prepare backups ([backup])")?;
    // Bound here so that a port in use fails the start, naming the key.
    let proxy = match &raw.proxy {
        Some(cfg) => Some(crate::proxy::Proxy::bind(cfg).await?),
        None => None,
    };
    let proxy_token = CancellationToken::new();
    let proxy = proxy.map(|p| tokio::spawn(p.run(shared.clone(), proxy_token.clone())));
    let agent = match raw.kind {
        MemberKind::Postgres => tokio::spawn(agent::run(shared.clone(), tasks_token.clone())),
        MemberKind::Witness => tokio::spawn(agent::run_witness(shared.clone(), tasks_token.clone())),
    };
    let api_listen = raw.api.as_ref().map(|a| a.listen.as_str()).unwrap_or("none");
    let tls = settings.tls.as_ref();
    let security = match tls {
        None => "plain text",
        Some(t) if t.peer_mtls => "TLS, mutual on the peer port",
        Some(_) => "TLS",
    };
    let api_scheme = if tls.is_some_and(|t| t.api) { "https" } else { "http" };
    tracing::info!(listen = %raw.listen, api = %api_listen, api_scheme, "pgvigil started ({security})");
    // The config is valid, the Raft storage open, the API listens: ready (PostgreSQL may still
    // be recovering; the agent goes on). The task keeps STATUS, WATCHDOG and STOPPING.
    tokio::spawn(notify::run(shared.clone(), shutdown.clone()));

    shutdown.cancelled().await;
    tracing::info!(mode = ?raw.stop.mode, "shutting down");
    // In order, each step with a deadline: hand the primary over while everything still runs;
    // stop the agent (it stops PostgreSQL, or leaves it to the keeper); hand the coordinator role
    // to another member; then the servers and Raft.
    if raw.stop.mode == StopModeConfig::Switchover {
        hand_over_primary(&shared).await;
    }
    tasks_token.cancel();
    let deadline = Duration::from_secs(60);
    for (what, task) in [("agent", agent), ("coordinator", coord)] {
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!("{what} stopped with an error: {e:#}"),
            Ok(Err(e)) => tracing::error!("{what} task failed: {e}"),
            Err(_) => tracing::error!("{what} did not stop within {deadline:?}"),
        }
    }
    hand_over_coordinator(&shared).await;
    server_token.cancel();
    api_token.cancel();
    proxy_token.cancel();
    if let Some(proxy) = proxy {
        let _ = tokio::time::timeout(Duration::from_secs(5), proxy).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(api) = api {
        let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    }
    raft_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), raft_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// The committed primary stopping: a planned switchover to a healthy standby first (the zero-loss
/// path), bounded by `switchover_timeout` and then some. Nothing to do on other members, while
/// paused, or when no standby can take over (the coordinator refuses: logged, and the stop goes on).
async fn hand_over_primary(shared: &Arc<Shared>) {
    let state = shared.committed();
    if !state.is_primary(shared.name()) || state.paused {
        return;
    }
    let started = Instant::now();
    tracing::warn!("stopping the primary: switching over to a standby first");
    let body = serde_json::json!({ "primary": shared.name() }).to_string();
    let limit = shared.settings.timings.switchover_timeout + shared.settings.timings.promotion_wait() * 2;
    let answer =
        tokio::time::timeout(limit, crate::admin::run(shared, crate::admin::Action::Switchover, body.as_bytes())).await;
    let took_ms = started.elapsed().as_millis() as u64;
    match answer {
        Ok(a) if a.status == 200 => tracing::warn!(took_ms, "switched over before stopping: {}", a.body),
        Ok(a) => tracing::error!(took_ms, status = a.status, "no switchover before stopping: {}", a.body),
        Err(_) => tracing::error!(took_ms, "no switchover before stopping: no answer within {limit:?}"),
    }
}

/// The coordinator stopping: ask Raft to hand leadership to another voter and wait (bounded) for
/// it, so the cluster does not wait out an election timeout first.
async fn hand_over_coordinator(shared: &Arc<Shared>) {
    let mut status = shared.raft.status();
    if !status.borrow().is_leader {
        return;
    }
    let me = vigil_core::node_id(shared.name());
    let started = Instant::now();
    // Raft refuses a target that lags; try each other voter in turn. Done once another member
    // leads (not merely once this one stepped down: then no leader is known for a moment).
    for id in shared.peers.keys().copied().filter(|id| *id != me) {
        shared.raft.transfer_leader(id);
        let moved = tokio::time::timeout(
            Duration::from_millis(700),
            status.wait_for(|s| !s.is_leader && s.leader_id != 0 && s.leader_id != me),
        )
        .await
        .map(|r| r.map(|s| s.leader_id));
        let took_ms = started.elapsed().as_millis() as u64;
        if let Ok(Ok(leader)) = moved {
            let to = shared.names.of(leader).to_string();
            tracing::info!(%to, took_ms, "handed the coordinator role over");
            return;
        }
        if !status.borrow().is_leader {
            tracing::info!(took_ms, "stepped down as the coordinator; the others are electing one");
            return;
        }
    }
    tracing::warn!("could not hand the coordinator role over; the others will elect one");
}
