//! A cluster of raft nodes in one process, each behind a real tonic server on a random
//! loopback port, with a tiny state machine (the list of applied commands).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use vigil_raft::proto::peer_server::{Peer, PeerServer};
use vigil_raft::proto::{
    AdminReply, AdminRequest, RaftAck, RaftMessage, ReportAck, ReportRequest, StateReply, StateRequest,
};
use vigil_raft::{RaftConfig, RaftError, RaftHandle, RaftStatus, StateMachine};

pub const DEADLINE: Duration = Duration::from_secs(15);
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(3);
pub const TICK: Duration = Duration::from_millis(25);
pub const ELECTION_TICKS: usize = 10;

/// The commands applied, in order. `applied_here` lists the indexes this process applied one by
/// one (not part of the snapshot), which tells catching up by log from catching up by snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestSm {
    pub cmds: Vec<String>,
    pub applied_here: Vec<u64>,
}

impl StateMachine for TestSm {
    fn apply(&mut self, index: u64, command: &[u8]) {
        match std::str::from_utf8(command) {
            Ok(c) => {
                self.cmds.push(c.to_string());
                self.applied_here.push(index);
            }
            Err(e) => eprintln!("test sm: undecodable command at {index}: {e}"),
        }
    }

    fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.cmds.join("\n").into_bytes())
    }

    fn restore(data: &[u8]) -> anyhow::Result<Self> {
        let text = std::str::from_utf8(data)?;
        let cmds = if text.is_empty() { Vec::new() } else { text.split('\n').map(String::from).collect() };
        Ok(TestSm { cmds, applied_here: Vec::new() })
    }
}

/// The daemon's `Peer` service, reduced to the `raft` RPC.
struct TestPeer {
    handle: RaftHandle<TestSm>,
}

#[tonic::async_trait]
impl Peer for TestPeer {
    async fn raft(&self, req: Request<RaftMessage>) -> Result<Response<RaftAck>, Status> {
        match self.handle.step(&req.into_inner().message).await {
            Ok(()) => Ok(Response::new(RaftAck {})),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn raft_stream(&self, req: Request<tonic::Streaming<RaftMessage>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(msg) = stream.message().await? {
            self.handle.step(&msg.message).await.map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn report(&self, _: Request<ReportRequest>) -> Result<Response<ReportAck>, Status> {
        Err(Status::unimplemented("test peer"))
    }

    async fn get_state(&self, _: Request<StateRequest>) -> Result<Response<StateReply>, Status> {
        Err(Status::unimplemented("test peer"))
    }

    async fn admin(&self, _: Request<AdminRequest>) -> Result<Response<AdminReply>, Status> {
        Err(Status::unimplemented("test peer"))
    }
}

pub struct Member {
    pub handle: RaftHandle<TestSm>,
    token: CancellationToken,
    node: JoinHandle<()>,
    server: JoinHandle<()>,
}

pub struct Cluster {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    peers: BTreeMap<u64, String>,
    addrs: BTreeMap<u64, SocketAddr>,
    /// Listeners bound up front (random ports), used by the first start of each node.
    listeners: BTreeMap<u64, TcpListener>,
    pub members: BTreeMap<u64, Member>,
    snapshot_threshold: u64,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

impl Cluster {
    /// Binds `n` random loopback ports; starts nothing.
    pub async fn new(n: u64, snapshot_threshold: u64) -> Cluster {
        init_tracing();
        let tmp = tempfile::tempdir().unwrap();
        let mut peers = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            peers.insert(id, format!("http://{addr}"));
            addrs.insert(id, addr);
            listeners.insert(id, l);
        }
        Cluster {
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
            peers,
            addrs,
            listeners,
            members: BTreeMap::new(),
            snapshot_threshold,
        }
    }

    pub async fn start_all(&mut self) {
        for id in self.addrs.keys().copied().collect::<Vec<_>>() {
            self.start(id).await;
        }
    }

    /// Starts (or restarts, from its directory) node `id` and its gRPC server.
    pub async fn start(&mut self, id: u64) {
        assert!(!self.members.contains_key(&id), "node {id} already running");
        let listener = match self.listeners.remove(&id) {
            Some(l) => l,
            None => rebind(self.addrs[&id]).await,
        };
        let member = spawn_member(id, self.peers.clone(), self.dir(id), listener, self.snapshot_threshold).await;
        self.members.insert(id, member);
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}"))
    }

    pub fn peers(&self) -> &BTreeMap<u64, String> {
        &self.peers
    }

    /// Gives up the reserved listener of a node that will run elsewhere (another process).
    pub fn release_port(&mut self, id: u64) -> SocketAddr {
        self.listeners.remove(&id);
        self.addrs[&id]
    }

    /// Stops node `id` and its server, as a crash would: nothing is flushed on the way out.
    pub async fn stop(&mut self, id: u64) {
        let m = self.members.remove(&id).expect("node is running");
        m.token.cancel();
        tokio::time::timeout(DEADLINE, m.node).await.expect("node task ends after cancel").unwrap();
        let mut server = m.server;
        if tokio::time::timeout(DEADLINE, &mut server).await.is_err() {
            server.abort();
        }
    }

    pub async fn stop_all(&mut self) {
        for id in self.members.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await;
        }
    }

    pub fn handle(&self, id: u64) -> &RaftHandle<TestSm> {
        &self.members[&id].handle
    }

    pub fn status(&self, id: u64) -> RaftStatus {
        self.handle(id).status().borrow().clone()
    }

    pub fn state(&self, id: u64) -> TestSm {
        self.handle(id).state().borrow().clone()
    }

    pub fn running(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Waits for a leader that every running node agrees on.
    pub async fn wait_leader(&self) -> u64 {
        let mut found = 0;
        wait_until("a leader all running nodes agree on", || {
            let statuses: Vec<RaftStatus> = self.running().iter().map(|&id| self.status(id)).collect();
            let leaders: Vec<&RaftStatus> = statuses.iter().filter(|s| s.is_leader).collect();
            let [leader] = leaders[..] else { return false };
            found = leader.id;
            statuses.iter().all(|s| s.leader_id == leader.id && s.term == leader.term)
        })
        .await;
        found
    }

    /// Proposes on whoever leads, retrying through elections. Returns (leader, index).
    pub async fn propose(&self, cmd: &str) -> (u64, u64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let leader = self.wait_leader().await;
            match self.handle(leader).propose(cmd.as_bytes().to_vec(), PROPOSE_TIMEOUT).await {
                Ok(index) => return (leader, index),
                Err(e @ (RaftError::NotLeader { .. } | RaftError::Dropped | RaftError::Timeout)) => {
                    assert!(Instant::now() < deadline, "propose {cmd:?}: {e}");
                }
                Err(e) => panic!("propose {cmd:?}: {e}"),
            }
        }
    }

    /// Waits until node `id` has applied exactly `cmds`.
    pub async fn wait_cmds(&self, id: u64, cmds: &[String]) {
        let mut state = self.handle(id).state();
        let res = tokio::time::timeout(DEADLINE, state.wait_for(|s| s.cmds == cmds)).await;
        if res.is_err() {
            panic!("node {id} did not apply {cmds:?}; it has {:?}", self.state(id).cmds);
        }
    }
}

/// Starts one raft node and its gRPC server on `listener`.
pub async fn spawn_member(
    id: u64,
    peers: BTreeMap<u64, String>,
    dir: PathBuf,
    listener: TcpListener,
    snapshot_threshold: u64,
) -> Member {
    let token = CancellationToken::new();
    let names = vigil_raft::PeerNames::new(peers.keys().map(|id| (*id, format!("n{id}"))).collect());
    let cfg = RaftConfig {
        id,
        peers,
        names,
        dir,
        tick: TICK,
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: 2,
        // Followers count their ticks in batches, as the daemon's do with the default timings.
        follower_wake: Some(TICK * 3),
        snapshot_threshold,
        clients: vigil_raft::PeerClients::new(),
    };
    let (handle, node) = vigil_raft::start(cfg, TestSm::default(), token.clone()).await.unwrap();
    let service = PeerServer::new(TestPeer { handle: handle.clone() }).max_decoding_message_size(64 << 20);
    let stop = token.clone();
    let server = tokio::spawn(async move {
        let incoming = TcpListenerStream::new(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            eprintln!("test server {id}: {e}");
        }
    });
    Member { handle, token, node, server }
}

pub async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Polls `cond` until it holds, failing the test after `DEADLINE`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn cmds(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}
