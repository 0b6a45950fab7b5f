//! The peer gRPC service: Raft messages, health reports, state queries, forwarded admin requests;
//! each request authenticated by the cluster's secret (`vigil_raft::auth`) unless mutual TLS does
//! it or the operator turned it off; over TLS (optionally mutual) when the `[tls]` table is there, through our own acceptor
//! (`tls_live::TlsListener`) so that a reload can renew the certificate for new connections.

use crate::admin;
use crate::convert;
use crate::coordination;
use crate::daemon::Shared;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use vigil_raft::auth::{Authenticated, Guard};
use vigil_raft::proto::{self, peer_server::PeerServer};

struct PeerService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl proto::peer_server::Peer for PeerService {
    async fn raft(&self, req: Request<proto::RaftMessage>) -> Result<Response<proto::RaftAck>, Status> {
        self.shared.raft.step(&req.into_inner().message).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::RaftAck {}))
    }

    async fn report(&self, req: Request<proto::HealthReport>) -> Result<Response<proto::ReportAck>, Status> {
        let report = convert::from_proto(req.into_inner()).map_err(Status::invalid_argument)?;
        Ok(Response::new(coordination::handle_report(&self.shared, report).await))
    }

    async fn get_state(&self, _req: Request<proto::StateRequest>) -> Result<Response<proto::StateReply>, Status> {
        let status = self.shared.raft.status().borrow().clone();
        let cluster_json =
            serde_json::to_string(&self.shared.committed()).map_err(|e| Status::internal(e.to_string()))?;
        let reports: std::collections::BTreeMap<String, vigil_core::HealthReport> =
            self.shared.coordinator().reports().iter().map(|(k, v)| (k.clone(), v.report.clone())).collect();
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
    let service =
        PeerServer::new(PeerService { shared }).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    // Every RPC, before the service sees it: without the cluster's credential, UNAUTHENTICATED.
    let service = Authenticated::new(service, guard);
    let server = tonic::transport::Server::builder().add_service(service);
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
