//! The client's errors, rebuilt from the cell's status codes.

use gaios_proto::cell::v1 as api;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// Why a call failed. The cell's status codes become variants; transient
/// failures (no master, a failover) are retried inside the library until
/// the call's deadline and surface as [`Error::NoMaster`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No node at the path, or no such handle.
    #[error("not found: {0}")]
    NotFound(String),
    /// A node already exists at the path.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The lock is held by someone else, or in its lock-delay.
    #[error("lock held: {0}")]
    LockHeld(String),
    /// The call's precondition failed; `reason` says which (the cell's
    /// typed reason; `ErrorReason::Unspecified` when it gave none this
    /// library knows): a compare-and-set found another generation (`GenerationMismatch`,
    /// `AclGenerationMismatch`), a handle is invalid (`HandleInvalid`), a
    /// sequencer is stale (`SequencerStale`), a directory is not empty
    /// (`NotEmpty`), a file is not a directory or the other way round
    /// (`NotADirectory`, `IsADirectory`), no lock is held or one is already
    /// asked for (`LockNotHeld`, `LockAlreadyRequested`), a waiting acquire
    /// ended without the lock (`WaitEnded`), a membership change cannot be
    /// made now (`ChangeInFlight`, `WouldLoseQuorum`, ...). Programs match
    /// on `reason`, never on `message`.
    #[error("failed precondition{}: {message}", reason_text(*reason))]
    FailedPrecondition {
        /// Why, as the cell typed it.
        reason: api::ErrorReason,
        /// The cell's words (may name a path).
        message: String,
    },
    /// A bad path or argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cell refused to act for the session: the call did not carry the
    /// session's secret (the library always does; a raw client may not),
    /// the session belongs to another identity, or the call needs a cell
    /// administrator.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The node's ACL does not give this session's identity (or its
    /// groups) the permission the call needs.
    #[error("denied by the ACL: {0}")]
    AclDenied(String),
    /// On a TLS cell, the client's certificate names no identity (no
    /// subject CN, or one over 256 bytes): fix the certificate.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A limit of the cell was hit.
    #[error("limit reached: {0}")]
    ResourceExhausted(String),
    /// The session ended (expired or closed); nothing more can be done with
    /// it or its handles and locks.
    #[error("the session has expired")]
    SessionExpired,
    /// No master answered before the deadline (no quorum, or an election
    /// that took too long).
    #[error("no master answered: {0}")]
    NoMaster(String),
    /// A wait (for a lock) ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The addresses given do not parse.
    #[error("bad cell address {0:?}")]
    BadAddress(String),
    /// Something the library did not expect from the cell.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl Error {
    /// Classifies a status that ends a call (not one the library retries).
    pub(crate) fn from_status(status: &Status) -> Error {
        let message = status.message().to_string();
        let reason = reason(status);
        match status.code() {
            Code::NotFound => Error::NotFound(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            // The cell's reason names these cases (never its message, which
            // may echo a path); everything else that is
            // FAILED_PRECONDITION stays general.
            Code::FailedPrecondition
                if matches!(reason, Some(api::ErrorReason::LockHeld | api::ErrorReason::LockDelay)) =>
            {
                Error::LockHeld(message)
            }
            Code::FailedPrecondition if reason == Some(api::ErrorReason::SessionEnded) => Error::SessionExpired,
            Code::FailedPrecondition => Error::FailedPrecondition { reason: reason.unwrap_or(api::ErrorReason::Unspecified), message },
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::PermissionDenied if reason == Some(api::ErrorReason::AclDenied) => Error::AclDenied(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::ResourceExhausted | Code::OutOfRange => Error::ResourceExhausted(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            Code::Unavailable => Error::NoMaster(message),
            _ => Error::Unexpected(format!("{:?}: {message}", status.code())),
        }
    }
}

/// ` (NAME)` of a reason for [`Error`]'s text; nothing for none.
fn reason_text(reason: api::ErrorReason) -> String {
    match reason {
        api::ErrorReason::Unspecified => String::new(),
        reason => format!(" ({})", reason.as_str_name()),
    }
}

/// The cell's reason for a failure: the `reason` of the standard
/// `google.rpc.ErrorInfo` in the status details, when its domain is
/// Gaios's and the reason one this library knows.
pub(crate) fn reason(status: &Status) -> Option<api::ErrorReason> {
    let info = status.get_error_details().error_info()?.clone();
    (info.domain == ERROR_DOMAIN).then(|| api::ErrorReason::from_str_name(&info.reason)).flatten()
}

/// The `ErrorInfo` domain of the cell's reasons.
const ERROR_DOMAIN: &str = "gaios";

/// Where an `UNAVAILABLE` answer sends the client: the master a replica
/// believes in (`NOT_MASTER`), or a master that cannot serve yet
/// (`MASTER_NOT_READY`), read from the standard `ErrorInfo` in the details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `NotMaster` or `MasterNotReady`.
    pub reason: api::ErrorReason,
    /// The master's replica id.
    pub master_id: u64,
    /// The master's client address (`host:port`).
    pub master_address: String,
}

/// The redirect an `UNAVAILABLE` status carries; `None` for any other
/// status, and when no master is known (the cell sends no details then).
pub fn redirect(status: &Status) -> Option<Redirect> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let reason = reason(status).filter(|r| matches!(r, api::ErrorReason::NotMaster | api::ErrorReason::MasterNotReady))?;
    let info = status.get_error_details().error_info()?.clone();
    let master_id = info.metadata.get("master_id")?.parse().ok()?;
    let master_address = info.metadata.get("master_address").filter(|a| !a.is_empty())?.clone();
    Some(Redirect { reason, master_id, master_address })
}

/// Whether the library should try again (another replica, a new master).
/// A transport failure (a connection reset, an HTTP/2 error) arrives as a
/// status made locally from the error, which keeps it as its source; a
/// status the cell sent has none.
pub(crate) fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted)
        || (status.code() == Code::Internal && std::error::Error::source(status).is_some())
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_typed_errors() {
        assert_eq!(Error::from_status(&Status::not_found("x")), Error::NotFound("x".into()));
        // The reason decides, never the message.
        let with = |reason: &str, message: &str| {
            let details = tonic_types::ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
            <Status as tonic_types::StatusExt>::with_error_details(Code::FailedPrecondition, message, details)
        };
        assert!(matches!(Error::from_status(&with("LOCK_HELD", "/a")), Error::LockHeld(_)));
        assert!(matches!(Error::from_status(&with("LOCK_DELAY", "/a")), Error::LockHeld(_)));
        assert_eq!(Error::from_status(&with("SESSION_ENDED", "session 4")), Error::SessionExpired);
        assert_eq!(
            Error::from_status(&with("NOT_EMPTY", "/has ended is locked")),
            Error::FailedPrecondition { reason: api::ErrorReason::NotEmpty, message: "/has ended is locked".into() }
        );
        assert!(matches!(
            Error::from_status(&with("WAIT_ENDED", "/a")),
            Error::FailedPrecondition { reason: api::ErrorReason::WaitEnded, .. }
        ));
        assert_eq!(
            Error::from_status(&Status::failed_precondition("session 4 has ended")),
            Error::FailedPrecondition { reason: api::ErrorReason::Unspecified, message: "session 4 has ended".into() }
        );
        assert_eq!(
            Error::from_status(&with("NOT_A_DIRECTORY", "/f")).to_string(),
            "failed precondition (NOT_A_DIRECTORY): /f"
        );
        assert_eq!(Error::from_status(&Status::failed_precondition("x")).to_string(), "failed precondition: x");
        let foreign = tonic_types::ErrorDetails::with_error_info("SESSION_ENDED", "example.com", std::collections::HashMap::new());
        let foreign = <Status as tonic_types::StatusExt>::with_error_details(Code::FailedPrecondition, "x", foreign);
        assert!(
            matches!(Error::from_status(&foreign), Error::FailedPrecondition { reason: api::ErrorReason::Unspecified, .. }),
            "another domain's reason"
        );
        assert!(matches!(Error::from_status(&Status::invalid_argument("bad")), Error::InvalidArgument(_)));
        assert!(matches!(Error::from_status(&Status::permission_denied("no secret")), Error::PermissionDenied(_)));
        assert!(matches!(Error::from_status(&Status::unauthenticated("no CN")), Error::Unauthenticated(_)));
        let metadata = std::collections::HashMap::from([
            ("master_id".to_string(), "2".to_string()),
            ("master_address".to_string(), "127.0.0.1:7202".to_string()),
        ]);
        let details = tonic_types::ErrorDetails::with_error_info("NOT_MASTER", ERROR_DOMAIN, metadata);
        let status = <Status as tonic_types::StatusExt>::with_error_details(Code::Unavailable, "not master", details);
        assert_eq!(redirect(&status).map(|r| r.master_address).as_deref(), Some("127.0.0.1:7202"));
        assert_eq!(redirect(&status).map(|r| (r.reason, r.master_id)), Some((api::ErrorReason::NotMaster, 2)));
        assert!(is_retryable(&status));
        assert_eq!(redirect(&Status::unavailable("no master is known")), None);
        assert!(!is_retryable(&Status::internal("h2 protocol error: sent by the cell")), "only a local transport error");
    }
}
