//! Where errors become gRPC statuses: the one place that decides which code
//! a client sees (see "Errors and bad input" in the design).
//!
//! | cause | code |
//! |---|---|
//! | no such node, session handle | `NOT_FOUND` |
//! | node exists | `ALREADY_EXISTS` |
//! | lock held, stale sequencer, ended session, failed compare, invalid handle | `FAILED_PRECONDITION` (with a reason) |
//! | not the master | `UNAVAILABLE`, reason `NOT_MASTER` with the master's id and address (no details if none is known) |
//! | the master, not ready to serve yet | `UNAVAILABLE`, reason `MASTER_NOT_READY` |
//! | a call naming a session without its secret (or with a wrong one) | `PERMISSION_DENIED` |
//! | bad path or argument | `INVALID_ARGUMENT` |
//! | a limit hit | `RESOURCE_EXHAUSTED` |
//! | a waiting `Acquire` ran out of time | `DEADLINE_EXCEEDED` |
//!
//! The state machine already speaks in codes (its [`wire::Failure`] carries
//! one, so that a retried request gets the same answer) and, where a program
//! must tell cases apart, a [`api::ErrorReason`]; this module turns those
//! and the driver's refusals into `tonic::Status`. A reason travels as the
//! `reason` of a standard `google.rpc.ErrorInfo` (domain `gaios`) inside a
//! `google.rpc.Status` in the `grpc-status-details-bin` trailer, which every
//! gRPC library decodes; the redirect is one too (see [`not_master`]).
//! Every message is short: failures of `apply` are cut to 256 bytes and
//! echo at most a 64-byte excerpt of a path.

use gaios_paxos::ReplicaId;
use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};


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

use crate::shared::ChangeRefusal;
use gaios_paxos::ChangeError;

/// The `ErrorInfo` domain of Gaios's reasons.
pub const ERROR_DOMAIN: &str = "gaios";

/// Turns a state machine failure into a status with the same code and, when
/// it has one, its reason as a standard `google.rpc.ErrorInfo` in the
/// status details (what every gRPC library decodes), so that clients match
/// on the reason and never on the message.
pub fn failure_status(failure: &wire::Failure) -> Status {
    let code = Code::from_i32(failure.code);
    match api::ErrorReason::try_from(failure.reason) {
        Ok(api::ErrorReason::Unspecified) | Err(_) => Status::new(code, failure.message.clone()),
        Ok(reason) => with_reason(code, reason, failure.message.clone()),
    }
}

/// A status of `code` whose details say `reason`.
pub fn with_reason(code: Code, reason: api::ErrorReason, message: String) -> Status {
    let details = ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, message, details)
}

/// `FAILED_PRECONDITION` (`SESSION_ENDED`): `session` has ended; `why` says
/// how.
pub fn session_ended(session: u64, why: &str) -> Status {
    with_reason(Code::FailedPrecondition, api::ErrorReason::SessionEnded, format!("session {session} has ended ({why})"))
}

/// The `ErrorInfo` metadata key of the master's replica id in a redirect.
pub const MASTER_ID_KEY: &str = "master_id";
/// The `ErrorInfo` metadata key of the master's client address.
pub const MASTER_ADDRESS_KEY: &str = "master_address";

/// `UNAVAILABLE` from a replica that is not the master: reason `NOT_MASTER`
/// with the master's id and client address in the metadata, or no details
/// at all when no master is known (an election may be under way).
pub fn not_master(master: Option<ReplicaId>, address: &str, why: &str) -> Status {
    match master {
        Some(id) => redirect(api::ErrorReason::NotMaster, id, address, format!("{why}; the master is replica {id} at {address}")),
        None => Status::unavailable(format!("{why}; no master is known (an election may be under way)")),
    }
}

/// `UNAVAILABLE` from the master itself while it cannot serve yet (its
/// lease or its recovery is not complete): reason `MASTER_NOT_READY`, with
/// its own id and address, so a client retries it rather than look
/// elsewhere.
pub fn master_not_ready(id: ReplicaId, address: &str) -> Status {
    let message = format!("replica {id} is master but cannot serve yet (its lease or its recovery is not complete); retry shortly");
    redirect(api::ErrorReason::MasterNotReady, id, address, message)
}

fn redirect(reason: api::ErrorReason, id: ReplicaId, address: &str, message: String) -> Status {
    let metadata = std::collections::HashMap::from([
        (MASTER_ID_KEY.to_string(), id.to_string()),
        (MASTER_ADDRESS_KEY.to_string(), address.to_string()),
    ]);
    let details = ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
    Status::with_error_details(Code::Unavailable, message, details)
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

/// The status of a configuration change that was not made (or not known to
/// be): the table in `cell.proto` at `ChangeMembershipRequest`.
pub fn change_status(refusal: &ChangeRefusal, address: impl Fn(Option<ReplicaId>) -> String) -> Status {
    use api::ErrorReason as R;
    let message = refusal.to_string();
    let error = match refusal {
        ChangeRefusal::Refused(error) => error,
        ChangeRefusal::Indeterminate => return Status::unavailable(message),
        ChangeRefusal::Busy => return with_reason(Code::FailedPrecondition, R::ChangeInFlight, message),
    };
    match error {
        ChangeError::NotMaster { master_hint } => {
            not_master(*master_hint, &address(*master_hint), "only the master changes the configuration")
        }
        ChangeError::Recovering => Status::unavailable(message),
        ChangeError::InFlight => with_reason(Code::FailedPrecondition, R::ChangeInFlight, message),
        ChangeError::WouldLoseQuorum { .. } => with_reason(Code::FailedPrecondition, R::WouldLoseQuorum, message),
        ChangeError::TooFewVoters { .. } => with_reason(Code::FailedPrecondition, R::TooFewVoters, message),
        ChangeError::NotCaughtUp { .. } => with_reason(Code::FailedPrecondition, R::LearnerBehind, message),
        ChangeError::NotAMember(_) => with_reason(Code::FailedPrecondition, R::NotAMember, message),
        ChangeError::AlreadyAMember(_) | ChangeError::AlreadyAVoter(_) => {
            with_reason(Code::FailedPrecondition, R::AlreadyAMember, message)
        }
        ChangeError::IdUsedBefore { .. } => with_reason(Code::InvalidArgument, R::IdUsedBefore, message),
        _ => Status::invalid_argument(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_refusal_carries_its_reason() {
        let address = |_: Option<ReplicaId>| String::new();
        let reason = |refusal: ChangeRefusal| {
            let status = change_status(&refusal, address);
            (status.code(), status.get_error_details().error_info().map(|info| info.reason.clone()))
        };
        assert_eq!(
            reason(ChangeError::InFlight.into()),
            (Code::FailedPrecondition, Some("CHANGE_IN_FLIGHT".to_string()))
        );
        assert_eq!(
            reason(ChangeError::WouldLoseQuorum { reachable: 2, needed: 3 }.into()),
            (Code::FailedPrecondition, Some("WOULD_LOSE_QUORUM".to_string()))
        );
        assert_eq!(
            reason(ChangeError::TooFewVoters { voters: 2 }.into()),
            (Code::FailedPrecondition, Some("TOO_FEW_VOTERS".to_string()))
        );
        assert_eq!(
            reason(ChangeError::IdUsedBefore { id: 3, highest: 5 }.into()),
            (Code::InvalidArgument, Some("ID_USED_BEFORE".to_string()))
        );
        assert_eq!(reason(ChangeRefusal::Indeterminate), (Code::Unavailable, None));
    }

    #[test]
    fn a_failure_with_a_reason_carries_a_standard_error_info() {
        let failure = wire::Failure {
            code: Code::FailedPrecondition as i32,
            message: "session 7 has ended".into(),
            reason: api::ErrorReason::SessionEnded as i32,
        };
        let status = failure_status(&failure);
        assert_eq!(status.code(), Code::FailedPrecondition);
        // What any gRPC library reads: a google.rpc.Status in the details.
        let info = status.get_error_details().error_info().cloned().expect("an ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("SESSION_ENDED", ERROR_DOMAIN));
        let plain = wire::Failure { reason: 0, ..failure };
        assert!(failure_status(&plain).get_error_details().error_info().is_none(), "no reason, no details");
    }

    #[test]
    fn a_redirect_is_unavailable_with_a_standard_error_info_naming_the_master() {
        let info = |status: &Status| status.get_error_details().error_info().cloned().expect("an ErrorInfo");
        let status = not_master(Some(3), "127.0.0.1:7203", "not the master");
        assert_eq!(status.code(), Code::Unavailable);
        let redirect = info(&status);
        assert_eq!((redirect.reason.as_str(), redirect.domain.as_str()), ("NOT_MASTER", ERROR_DOMAIN));
        assert_eq!(redirect.metadata.get(MASTER_ID_KEY).map(String::as_str), Some("3"));
        assert_eq!(redirect.metadata.get(MASTER_ADDRESS_KEY).map(String::as_str), Some("127.0.0.1:7203"));
        let unknown = not_master(None, "", "not the master");
        assert_eq!(unknown.code(), Code::Unavailable);
        assert!(unknown.details().is_empty(), "no details when no master is known");
        let not_ready = info(&master_not_ready(2, "127.0.0.1:7202"));
        assert_eq!(not_ready.reason, "MASTER_NOT_READY");
        assert_eq!(not_ready.metadata.get(MASTER_ID_KEY).map(String::as_str), Some("2"));
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
            let failure = wire::Failure { code: code as i32, message: "m".into(), reason: 0 };
            assert_eq!(failure_status(&failure).code(), code);
        }
        let refused = propose_status(&ProposeError::Overloaded, |_| String::new());
        assert_eq!(refused.code(), Code::ResourceExhausted);
    }
}
