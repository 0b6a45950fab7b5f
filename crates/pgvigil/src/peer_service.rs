//! The peer gRPC service: Raft messages, health reports, state queries, forwarded admin requests;
//! each request authenticated by the cluster's secret (`vigil_raft::auth`) unless mutual TLS does
//! it or the operator turned it off; over TLS (optionally mutual) when the `[tls]` table is there, through our own acceptor
//! (`tls_live::TlsListener`) so that a reload can renew the certificate for new connections.

use crate::admin;
use crate::convert;
use crate::coordination;
use crate::daemon::Shared;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use vigil_core::repeats::{Repeats, LOG_EVERY};
use vigil_raft::auth::{Authenticated, Guard};
use vigil_raft::proto::{self, peer_server::PeerServer};
use vigil_raft::RaftError;

struct PeerService {
    shared: Arc<Shared>,
    /// Raft messages refused (not from a member, or not for this one), by (from, to, sender's
    /// name): a daemon configured with another member list sends several a second, forever.
    refused: Mutex<Repeats<(u64, u64, String)>>,
}

impl PeerService {
    fn refused(&self) -> std::sync::MutexGuard<'_, Repeats<(u64, u64, String)>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A refused raft message: logged at most once a minute per sender, and the sender is told why.
    fn refuse(&self, from: u64, to: u64, sender: String, addr: String) -> Status {
        let me = self.shared.name();
        let names = &self.shared.names;
        let sender = if sender.is_empty() { "a daemon that gave no name".to_string() } else { sender };
        let members: Vec<&str> = names.names().collect();
        let why = if names.get(from).is_none() {
            format!("{sender} is not in the members list of {me} ({})", members.join(", "))
        } else if from == self.shared.raft.id() {
            format!("{sender} uses the name of {me}")
        } else {
            format!("{sender} addresses {me} by another name: do the members lists agree?")
        };
        if let Some(o) = self.refused().occurred(Instant::now(), (from, to, sender.clone())) {
            tracing::warn!(%sender, %addr, suppressed = o.field(), "raft messages refused: {why}");
        }
        Status::permission_denied(format!("raft message refused: {why}"))
    }

    /// Says once that the refused messages of a sender stopped.
    fn expire_refused(&self) {
        for ((_, _, sender), e) in self.refused().expired(Instant::now()) {
            let (suppressed, total) = (e.suppressed, e.total);
            tracing::info!(%sender, suppressed, total, "no more refused raft messages from {sender}");
        }
    }
}

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerService {
    async fn raft(&self, req: Request<proto::RaftMessage>) -> Result<Response<proto::RaftAck>, Status> {
        // Several messages a second arrive in a working cluster: enough of a clock for this.
        self.expire_refused();
        let addr = req.remote_addr().map_or_else(|| "unknown address".to_string(), |a| a.to_string());
        let msg = req.into_inner();
        match self.shared.raft.step(&msg.message).await {
            Ok(()) => Ok(Response::new(proto::RaftAck {})),
            Err(RaftError::NotAPeer { from, to }) => Err(self.refuse(from, to, msg.sender, addr)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn raft_stream(
        &self,
        req: Request<tonic::Streaming<proto::RaftMessage>>,
    ) -> Result<Response<proto::RaftAck>, Status> {
        let addr = req.remote_addr().map_or_else(|| "unknown address".to_string(), |a| a.to_string());
        let mut stream = req.into_inner();
        while let Some(msg) = stream.message().await? {
            self.expire_refused();
            match self.shared.raft.step(&msg.message).await {
                Ok(()) => {}
                Err(RaftError::NotAPeer { from, to }) => return Err(self.refuse(from, to, msg.sender, addr)),
                Err(e) => return Err(Status::unavailable(e.to_string())),
            }
        }
        Ok(Response::new(proto::RaftAck {}))
    }

    async fn report(&self, req: Request<proto::ReportRequest>) -> Result<Response<proto::ReportAck>, Status> {
        let report = convert::decode_report(&req.into_inner().report_json).map_err(Status::invalid_argument)?;
        Ok(Response::new(coordination::handle_report(&self.shared, report).await))
    }

    async fn get_state(&self, _req: Request<proto::StateRequest>) -> Result<Response<proto::StateReply>, Status> {
        let status = self.shared.raft.status().borrow().clone();
        let cluster_json =
            serde_json::to_string(&self.shared.committed()).map_err(|e| Status::internal(e.to_string()))?;
        let reports = self.shared.coordinator.reports().await;
        let reports_json = serde_json::to_string(&reports).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::StateReply {
            cluster_json,
            reports_json,
            leader_id: status.leader_id,
            term: status.term,
            member: self.shared.name().to_string(),
            leader_address: self.shared.leader().map(|(_, a)| a.clone()).unwrap_or_default(),
        }))
    }

    async fn admin(&self, req: Request<proto::AdminRequest>) -> Result<Response<proto::AdminReply>, Status> {
        let r = req.into_inner();
        let answer = admin::run_forwarded(&self.shared, &r.action, &r.body_json).await;
        Ok(Response::new(proto::AdminReply {
            http_status: u32::from(answer.status),
            body_json: answer.body.to_string(),
        }))
    }
}

pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = shared.tls.as_ref().map(|live| live.peer());
    let guard = shared.settings.peer_key.clone().map(Guard::new);
    // A Raft snapshot travels in one message; the client side allows the same size.
    let service = PeerServer::new(PeerService { shared, refused: Mutex::new(Repeats::new(LOG_EVERY)) })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // Every RPC, before the service sees it: without the cluster's credential, UNAUTHENTICATED.
    let service = Authenticated::new(service, guard);
    // The server PINGs too, so a client gone behind a partition is dropped in seconds; and many
    // streams reset at once by a client whose requests timed out (it reconnects after a heal) are
    // not an error.
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(vigil_raft::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(vigil_raft::KEEPALIVE_TIMEOUT))
        .http2_max_pending_accept_reset_streams(Some(1024))
        .add_service(service);
    match tls {
        // With peer_mtls, a client without a certificate from the CA fails the handshake.
        Some(configs) => {
            let incoming = crate::tls_live::TlsListener::new(listener, configs, "peer port")?.into_incoming();
            server.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            server.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?
        }
    }
    Ok(())
}
