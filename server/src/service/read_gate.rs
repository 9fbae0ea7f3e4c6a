//! The read gate: the one check every answer from the applied state goes
//! through (reads, KeepAlives, and a waiting `Acquire` before it looks for
//! its grant). It applies the replica's rule
//! ([`crate::replica::status::may_serve`]) to the status the driver
//! published last, and when it refuses it tells the client where to go:
//! `NOT_MASTER` with the master's address, or `MASTER_NOT_READY` from a
//! master that has not yet applied everything chosen before its reign (or
//! lost its lease).

use std::time::Instant;

use tonic::Status;

use super::CellService;
use super::errors::{master_not_ready, not_master};
use crate::replica::status::Role;

impl CellService {
    /// `Ok` if this replica may answer reads now, else the `UNAVAILABLE`
    /// that sends the client to the master.
    pub(super) fn read_gate(&self) -> Result<(), Status> {
        let status = self.status.borrow().clone();
        if status.can_serve_reads(Instant::now()) {
            return Ok(());
        }
        if status.role == Role::Master {
            return Err(master_not_ready(status.id, &self.client_address(Some(status.id))));
        }
        Err(not_master(status.master, &self.client_address(status.master), "this replica is not the master"))
    }
}
