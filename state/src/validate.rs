//! One validator per request: the checks that need no state (sizes, enum
//! values, paths, ids that must be set). The server's handlers call them to
//! refuse a bad request before it costs a Paxos slot, and `apply` calls the
//! same ones again, because the log is input it must not trust. Both
//! therefore refuse with the same code, reason and words.
//!
//! Checks that need the state (does the session exist, is the handle valid,
//! is the lock free) are `apply`'s alone.

use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;

use crate::code::Code;
use crate::limits::{
    ACQUIRE_WAIT_MS_MAX, COMPONENT_BYTES_MAX, READ_DIR_PAGE_MAX, CLIENT_NAME_BYTES_MAX, CONTENTS_BYTES_MAX, EVENT_MASK_ALL, FAILURE_MESSAGE_BYTES_MAX, IDENTITY_BYTES_MAX,
    LOCK_DELAY_MS_MAX, SESSION_SECRET_BYTES,
};
use crate::acl::Acl;
use crate::locks::LockMode;
use crate::namespace::{NodeKind, Path};

/// A failure with `code`, `reason` and a message for people, cut to
/// [`FAILURE_MESSAGE_BYTES_MAX`] bytes (it may echo a path), so that a
/// status never outgrows a client's trailer limit.
pub fn failure(code: Code, reason: api::ErrorReason, message: impl Into<String>) -> wire::Failure {
    let mut message = message.into();
    if message.len() > FAILURE_MESSAGE_BYTES_MAX {
        let mut cut = FAILURE_MESSAGE_BYTES_MAX - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    wire::Failure { code: code.number(), message, reason: reason as i32 }
}

fn invalid(message: impl Into<String>) -> wire::Failure {
    failure(Code::InvalidArgument, api::ErrorReason::Unspecified, message)
}

/// A path given by a client.
pub fn path(text: &str) -> Result<Path, wire::Failure> {
    Path::parse(text).map_err(|error| invalid(error.to_string()))
}

/// `CreateSession`'s client name.
pub fn client_name(name: &str) -> Result<(), wire::Failure> {
    if name.len() > CLIENT_NAME_BYTES_MAX {
        return Err(invalid(format!("client_name over {CLIENT_NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// The `CreateSession` command: its client name and the secret the master
/// drew.
pub fn create_session(create: &wire::CreateSession) -> Result<[u8; SESSION_SECRET_BYTES], wire::Failure> {
    client_name(&create.client_name)?;
    if create.owner.len() > IDENTITY_BYTES_MAX {
        return Err(invalid(format!("an owner identity over {IDENTITY_BYTES_MAX} bytes")));
    }
    crate::acl::groups(&create.groups)?;
    <[u8; SESSION_SECRET_BYTES]>::try_from(create.session_secret.as_ref())
        .map_err(|_| invalid(format!("a session needs a secret of {SESSION_SECRET_BYTES} bytes")))
}

/// A session named by a call, with the secret it presents. A secret of the
/// wrong length cannot be the session's: `PERMISSION_DENIED`.
pub fn session(session_id: u64, secret: &[u8]) -> Result<(), wire::Failure> {
    if session_id == 0 {
        return Err(invalid("session_id 0 names no session"));
    }
    if secret.len() != SESSION_SECRET_BYTES {
        return Err(failure(
            Code::PermissionDenied,
            api::ErrorReason::SessionSecretMismatch,
            format!("the call carries no secret for session {session_id} (it needs the {SESSION_SECRET_BYTES} bytes CreateSession returned)"),
        ));
    }
    Ok(())
}

/// A handle named by a call (handle ids start at 1).
pub fn handle(handle_id: u64) -> Result<(), wire::Failure> {
    if handle_id == 0 {
        return Err(invalid("handle must be set"));
    }
    Ok(())
}

/// A request number of a mutating call (they start at 1).
pub fn request_number(number: u64) -> Result<(), wire::Failure> {
    if number == 0 {
        return Err(invalid("request numbers start at 1"));
    }
    Ok(())
}

/// Contents to store in a file.
pub fn contents(contents: &[u8]) -> Result<(), wire::Failure> {
    if contents.len() > CONTENTS_BYTES_MAX {
        return Err(failure(
            Code::ResourceExhausted,
            api::ErrorReason::Unspecified,
            format!("contents of {} bytes exceed the limit of {CONTENTS_BYTES_MAX}", contents.len()),
        ));
    }
    Ok(())
}

/// `Open`: its path, initial contents, lock-delay, event mask, node kind
/// and the ACL a create gives. Returns the parsed path, the kind a create
/// makes, and that ACL if one is given.
pub fn open(open: &api::OpenRequest) -> Result<(Path, NodeKind, Option<Acl>), wire::Failure> {
    let path = path(&open.path)?;
    let acl = open.acl.as_ref().map(Acl::from_proto).transpose()?;
    contents(&open.initial_contents)?;
    if open.lock_delay_ms > LOCK_DELAY_MS_MAX {
        return Err(invalid(format!("lock_delay_ms {} over {LOCK_DELAY_MS_MAX}", open.lock_delay_ms)));
    }
    if open.event_mask & !EVENT_MASK_ALL != 0 {
        return Err(invalid(format!("unknown bits in event_mask {:#x}", open.event_mask)));
    }
    let kind = match api::NodeKind::try_from(open.kind) {
        Ok(api::NodeKind::Directory) => NodeKind::Directory,
        Ok(api::NodeKind::File | api::NodeKind::Unspecified) => NodeKind::File,
        Err(_) => return Err(invalid(format!("unknown node kind {}", open.kind))),
    };
    Ok((path, kind, acl))
}

/// A `ReadDir` page: its size (0 means [`READ_DIR_PAGE_MAX`]) and token;
/// returns how many names the page may hold.
pub fn read_dir_page(page_size: u32, page_token: &str) -> Result<usize, wire::Failure> {
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    if size > READ_DIR_PAGE_MAX {
        return Err(invalid(format!("page_size {page_size} over {READ_DIR_PAGE_MAX}")));
    }
    if page_token.len() > COMPONENT_BYTES_MAX {
        return Err(invalid(format!("a page_token of {} bytes (at most {COMPONENT_BYTES_MAX})", page_token.len())));
    }
    Ok(if size == 0 { READ_DIR_PAGE_MAX } else { size })
}

/// `SetAcl`: its handle and the new ACL, which is required.
pub fn set_acl(set: &api::SetAclRequest) -> Result<Acl, wire::Failure> {
    handle(set.handle)?;
    Acl::from_proto(set.acl.as_ref().ok_or_else(|| invalid("SetAcl needs an ACL"))?)
}

/// A lock mode given by a client.
pub fn lock_mode(mode: i32) -> Result<LockMode, wire::Failure> {
    match api::LockMode::try_from(mode) {
        Ok(api::LockMode::Exclusive) => Ok(LockMode::Exclusive),
        Ok(api::LockMode::Shared) => Ok(LockMode::Shared),
        _ => Err(invalid("lock mode must be LOCK_MODE_EXCLUSIVE or LOCK_MODE_SHARED")),
    }
}

/// `Acquire` and `TryAcquire`: the handle, the mode and the wait.
pub fn acquire(acquire: &api::AcquireRequest) -> Result<LockMode, wire::Failure> {
    handle(acquire.handle)?;
    let mode = lock_mode(acquire.mode)?;
    if acquire.wait_ms > ACQUIRE_WAIT_MS_MAX {
        return Err(invalid(format!("wait_ms {} over {ACQUIRE_WAIT_MS_MAX}", acquire.wait_ms)));
    }
    Ok(mode)
}

/// A sequencer given by a client (`CheckSequencer`, `SetSequencer`).
pub fn sequencer(sequencer: Option<&api::Sequencer>) -> Result<(Path, LockMode), wire::Failure> {
    let sequencer = sequencer.ok_or_else(|| invalid("the sequencer is missing"))?;
    Ok((path(&sequencer.path)?, lock_mode(sequencer.mode)?))
}

/// A session's mutating call as the log carries it: the session and its
/// secret, the request number, and the call's own arguments.
pub fn session_call(call: &wire::SessionCall) -> Result<(), wire::Failure> {
    use wire::session_call::Call;
    session(call.session_id, &call.session_secret)?;
    request_number(call.request_number)?;
    match call.call.as_ref().ok_or_else(|| invalid("empty call"))? {
        Call::Open(request) => open(request).map(|_| ()),
        Call::SetContents(request) => {
            handle(request.handle)?;
            contents(&request.contents)
        }
        Call::Acquire(request) | Call::TryAcquire(request) => acquire(request).map(|_| ()),
        Call::SetSequencer(request) => {
            handle(request.handle)?;
            sequencer(request.sequencer.as_ref()).map(|_| ())
        }
        Call::Close(request) => handle(request.handle),
        Call::Delete(request) => handle(request.handle),
        Call::Release(request) => handle(request.handle),
        Call::SetAcl(request) => set_acl(request).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<impl std::fmt::Debug, wire::Failure>) -> Code {
        let failure = result.expect_err("refused");
        assert!(failure.message.len() <= FAILURE_MESSAGE_BYTES_MAX, "message bounded: {}", failure.message.len());
        Code::from_number(failure.code).expect("a failure code")
    }

    #[test]
    fn open_refuses_each_bad_field_and_accepts_a_good_request() {
        let good = api::OpenRequest { path: "/a/b".into(), create: true, ..Default::default() };
        assert_eq!(open(&good).expect("good").0.as_str(), "/a/b");
        let bad_acl = api::OpenRequest { acl: Some(api::Acl { read: vec![String::new()], ..Default::default() }), ..good.clone() };
        assert_eq!(code(open(&bad_acl)), Code::InvalidArgument);
        let bad_path = api::OpenRequest { path: "x".repeat(10_000), ..good.clone() };
        assert_eq!(code(open(&bad_path)), Code::InvalidArgument);
        let big = api::OpenRequest { initial_contents: vec![0; CONTENTS_BYTES_MAX + 1].into(), ..good.clone() };
        assert_eq!(code(open(&big)), Code::ResourceExhausted);
        let delay = api::OpenRequest { lock_delay_ms: LOCK_DELAY_MS_MAX + 1, ..good.clone() };
        assert_eq!(code(open(&delay)), Code::InvalidArgument);
        let mask = api::OpenRequest { event_mask: EVENT_MASK_ALL + 1, ..good.clone() };
        assert_eq!(code(open(&mask)), Code::InvalidArgument);
        let kind = api::OpenRequest { kind: 99, ..good };
        assert_eq!(code(open(&kind)), Code::InvalidArgument);
    }

    #[test]
    fn a_session_call_is_checked_whole() {
        let secret = bytes::Bytes::from(vec![7; SESSION_SECRET_BYTES]);
        let call = |session_id, number, secret: &bytes::Bytes, call| wire::SessionCall {
            session_id,
            request_number: number,
            session_secret: secret.clone(),
            call: Some(call),
        };
        let release = wire::session_call::Call::Release(api::ReleaseRequest { header: None, handle: 1 });
        assert!(session_call(&call(1, 1, &secret, release.clone())).is_ok());
        assert_eq!(code(session_call(&call(0, 1, &secret, release.clone()))), Code::InvalidArgument);
        assert_eq!(code(session_call(&call(1, 0, &secret, release.clone()))), Code::InvalidArgument);
        assert_eq!(code(session_call(&call(1, 1, &bytes::Bytes::new(), release))), Code::PermissionDenied);
        let no_handle = wire::session_call::Call::Delete(api::DeleteRequest { header: None, handle: 0 });
        assert_eq!(code(session_call(&call(1, 1, &secret, no_handle))), Code::InvalidArgument);
        let bad_mode = wire::session_call::Call::Acquire(api::AcquireRequest { handle: 1, mode: 0, ..Default::default() });
        assert_eq!(code(session_call(&call(1, 1, &secret, bad_mode))), Code::InvalidArgument);
        let empty = wire::SessionCall { session_id: 1, request_number: 1, session_secret: secret, call: None };
        assert_eq!(code(session_call(&empty)), Code::InvalidArgument);
    }

    #[test]
    fn messages_echo_at_most_a_short_excerpt_of_a_bad_path() {
        let long = format!("no-slash-{}", "y".repeat(10_000));
        let refused = path(&long).expect_err("not absolute");
        assert!(refused.message.len() < 200, "{}", refused.message);
        assert!(refused.message.contains("10009 bytes"), "says how long it was: {}", refused.message);
        let long_message = failure(Code::InvalidArgument, api::ErrorReason::Unspecified, "é".repeat(1_000));
        assert!(long_message.message.len() <= FAILURE_MESSAGE_BYTES_MAX && long_message.message.ends_with("..."));
    }
}
