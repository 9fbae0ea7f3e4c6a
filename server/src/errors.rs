//! Where errors become gRPC statuses: the one place that decides which code
//! a client sees (see "Errors and bad input" in the design).
//!
//! | cause | code |
//! |---|---|
//! | no such node, session handle | `NOT_FOUND` |
//! | node exists | `ALREADY_EXISTS` |
//! | lock held, stale sequencer, ended session, failed compare, invalid handle | `FAILED_PRECONDITION` |
//! | not the master, or master not ready to serve | `UNAVAILABLE` + [`NotMaster`](api::NotMaster) details |
//! | a call naming a session without its secret (or with a wrong one) | `PERMISSION_DENIED` |
//! | bad path or argument | `INVALID_ARGUMENT` |
//! | a limit hit | `RESOURCE_EXHAUSTED` |
//! | a waiting `Acquire` ran out of time | `DEADLINE_EXCEEDED` |
//!
//! The state machine already speaks in codes (its [`wire::Failure`] carries
//! one, so that a retried request gets the same answer); this module turns
//! those and the driver's refusals into `tonic::Status`.

use bytes::Bytes;
use gaios_paxos::ReplicaId;
use gaios_proto::cell::v1 as api;
use gaios_proto::v1 as wire;
use prost::Message as _;
use tonic::{Code, Status};

use crate::namespace::PathError;

/// Why the driver could not get a command chosen and applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This replica is not the master; `master` is the one it believes in.
    #[error("replica is not the master")]
    NotMaster {
        /// The master this replica believes in, if any.
        master: Option<ReplicaId>,
    },
    /// Mastership was lost (or the driver stopped) before the command was
    /// chosen: it may or may not take effect. Retrying with the same request
    /// number is safe.
    #[error("mastership lost before the command was chosen; it may or may not take effect, retry with the same request number")]
    Indeterminate,
    /// Too many commands wait to be chosen.
    #[error("too many commands wait to be chosen; retry later")]
    Overloaded,
    /// The command is larger than a command may be.
    #[error("the command is {size_bytes} bytes, over the limit of {limit_bytes}")]
    TooLarge {
        /// Its size.
        size_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
}

/// Turns a state machine failure into a status with the same code.
pub fn failure_status(failure: &wire::Failure) -> Status {
    Status::new(Code::from_i32(failure.code), failure.message.clone())
}

/// `UNAVAILABLE` with the master's id and address in the details.
pub fn not_master(master: Option<ReplicaId>, address: &str, why: &str) -> Status {
    let details = api::NotMaster { master_id: master.unwrap_or(0), master_client_address: address.to_string() };
    let message = match master {
        Some(id) => format!("{why}; the master is replica {id} at {address}"),
        None => format!("{why}; no master is known (an election may be under way)"),
    };
    Status::with_details(Code::Unavailable, message, Bytes::from(details.encode_to_vec()))
}

/// The status of a refused proposal; `address` resolves a replica id to its
/// client address.
pub fn propose_status(error: &ProposeError, address: impl Fn(Option<ReplicaId>) -> String) -> Status {
    match error {
        ProposeError::NotMaster { master } => not_master(*master, &address(*master), "this replica is not the master"),
        ProposeError::Indeterminate => Status::unavailable(error.to_string()),
        ProposeError::Overloaded => Status::resource_exhausted(error.to_string()),
        ProposeError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
    }
}

/// `INVALID_ARGUMENT` for a path that does not parse.
pub fn bad_path(error: &PathError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// Reads a `NotMaster` back from a status's details (for clients and
/// tests); `None` if the status carries none.
pub fn not_master_details(status: &Status) -> Option<api::NotMaster> {
    if status.code() != Code::Unavailable || status.details().is_empty() {
        return None;
    }
    api::NotMaster::decode(status.details()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_master_carries_the_address_in_the_details() {
        let status = not_master(Some(3), "127.0.0.1:7203", "not the master");
        assert_eq!(status.code(), Code::Unavailable);
        let details = not_master_details(&status).expect("details");
        assert_eq!(details.master_id, 3);
        assert_eq!(details.master_client_address, "127.0.0.1:7203");
        assert!(status.message().contains("replica 3"));
    }

    #[test]
    fn failures_keep_their_codes() {
        for code in [
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::PermissionDenied,
        ] {
            let failure = wire::Failure { code: code as i32, message: "m".into() };
            assert_eq!(failure_status(&failure).code(), code);
        }
        let refused = propose_status(&ProposeError::Overloaded, |_| String::new());
        assert_eq!(refused.code(), Code::ResourceExhausted);
    }
}
