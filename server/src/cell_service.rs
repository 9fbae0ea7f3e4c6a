//! The client-facing `Cell` gRPC service: master discovery and status.
//!
//! The handlers are thin: they read the latest [`ReplicaStatus`] the driver
//! published and translate it, so a status call never waits for, or slows
//! down, the Paxos loop. Every replica answers, master or not, which is how a
//! client finds the master by asking any replica.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use gaios_paxos::{Ballot, ReplicaId};
use gaios_proto::cell::v1 as pb;
use gaios_proto::cell::v1::cell_server::{Cell, CellServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config::PeerSpec;
use crate::driver::{ReplicaStatus, Role};
use crate::transport::{MESSAGE_BYTES_MAX, TransportStats};

/// Answers `FindMaster` and `Status` from the driver's published status.
#[derive(Debug, Clone)]
pub struct CellService {
    cell_id: String,
    members: Arc<[PeerSpec]>,
    status: watch::Receiver<ReplicaStatus>,
    stats: Arc<TransportStats>,
}

impl CellService {
    /// A service for the cell `cell_id` with `members`, reading `status`.
    pub fn new(
        cell_id: String,
        members: Vec<PeerSpec>,
        status: watch::Receiver<ReplicaStatus>,
        stats: Arc<TransportStats>,
    ) -> Self {
        CellService { cell_id, members: members.into(), status, stats }
    }

    /// Wraps the service for tonic with explicit message-size bounds.
    pub fn into_server(self) -> CellServer<CellService> {
        CellServer::new(self)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn client_address(&self, id: Option<ReplicaId>) -> String {
        id.and_then(|id| self.members.iter().find(|peer| peer.id == id))
            .map(|peer| peer.client_address.to_string())
            .unwrap_or_default()
    }
}

fn ballot(ballot: Ballot) -> Option<pb::Ballot> {
    (ballot != Ballot::ZERO).then_some(pb::Ballot { round: ballot.round, replica: ballot.replica })
}

#[tonic::async_trait]
impl Cell for CellService {
    async fn find_master(
        &self,
        _request: Request<pb::FindMasterRequest>,
    ) -> Result<Response<pb::FindMasterResponse>, Status> {
        let status = self.status.borrow().clone();
        let master_ballot = match status.role {
            Role::Master => status.own_ballot.unwrap_or(status.promised),
            Role::Follower | Role::Candidate => status.promised,
        };
        Ok(Response::new(pb::FindMasterResponse {
            master_id: status.master.unwrap_or(0),
            master_client_address: self.client_address(status.master),
            ballot: ballot(master_ballot),
            answered_by: status.id,
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.status.borrow().clone();
        let role = match status.role {
            Role::Follower => pb::Role::Follower,
            Role::Candidate => pb::Role::Candidate,
            Role::Master => pb::Role::Master,
        };
        let lease_remaining_ms = status
            .lease_valid_until
            .map(|until| until.saturating_duration_since(Instant::now()).as_millis())
            .map_or(0, |ms| u64::try_from(ms).unwrap_or(u64::MAX));
        Ok(Response::new(pb::StatusResponse {
            id: status.id,
            role: role.into(),
            promised: ballot(status.promised),
            own_ballot: status.own_ballot.and_then(ballot),
            master_id: status.master.unwrap_or(0),
            master_client_address: self.client_address(status.master),
            chosen_through: status.chosen_through,
            applied: status.applied,
            log_start: status.log_start,
            lease_remaining_ms,
            members: self
                .members
                .iter()
                .map(|peer| pb::Member {
                    id: peer.id,
                    client_address: peer.client_address.to_string(),
                    peer_address: peer.peer_address.to_string(),
                })
                .collect(),
            cell_id: self.cell_id.clone(),
            inbox_dropped: self.stats.inbox_dropped.load(Ordering::Relaxed),
        }))
    }
}
