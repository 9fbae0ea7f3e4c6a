//! The Gaios client library: sessions, handles, locks with sequencers,
//! fencing, and an election recipe, over the cell's gRPC API.
//!
//! ```no_run
//! # async fn example() -> Result<(), gaios_client::Error> {
//! use std::time::Duration;
//! use gaios_client::{Client, LockMode, OpenOptions, Options};
//!
//! // Needs a running cell, e.g. `scripts/cell`.
//! let cell: Vec<String> = (1..=5).map(|i| format!("127.0.0.1:720{i}")).collect();
//! let client = Client::connect(&cell, Options::default()).await?;
//! let config = client.open("/config", OpenOptions::new().create()).await?;
//! config.set_contents("color = blue", None).await?;
//! let lock = config.acquire(LockMode::Exclusive, Duration::from_secs(10)).await?;
//! println!("holding {:?}", lock.sequencer());
//! lock.release().await?;
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! - **Connecting** ([`Client::connect`]): from any replica addresses; the
//!   library finds the master, follows `UNAVAILABLE` redirects and reconnects
//!   after a failover. Every attempt has a timeout, so a hung master is
//!   noticed; calls retry until [`Options::call_deadline`].
//! - **Sessions**: created on connect and kept alive in the background. When
//!   the local lease runs out without an answer the session is in
//!   [`SessionState::Jeopardy`]; after [`Options::grace_period`] without a
//!   master it is [`SessionState::Expired`]. The local lease ends a margin
//!   before the master's ([`CLOCK_DRIFT_PPM`]), so jeopardy comes first.
//!   Mutating calls carry a request number and are retried with the same
//!   one, so a failover never applies them twice.
//! - **Handles** ([`Handle`]): read, write (optionally compare-and-set on the
//!   content generation), list, delete; [`Handle::events`] streams events,
//!   with [`EventKind::Missed`] when the numbers show a gap and
//!   [`EventKind::MasterFailover`] to re-validate caches.
//! - **Locks** ([`Lock`]): exclusive or shared; a lock knows its sequencer
//!   and its [`LockState`]: [`Lock::at_risk`] when the session enters
//!   jeopardy (stop acting on it), [`Lock::recovered`] when that passed,
//!   [`Lock::lost`] when it is gone for sure. A holder whose session expires
//!   keeps others out for its lock-delay ([`LOCK_DELAY_DEFAULT`], 15 s).
//! - **Fencing** ([`Fence`]): for services that must reject stale holders.
//! - **Election** ([`election`]): `campaign`, `resign`, `leader`, `observe`.
//! - **Configuration** ([`membership`]): read the members, add a learner,
//!   promote it, remove a member (no session needed).

mod client;
pub mod election;
mod error;
mod fence;
mod handle;
mod lease;
pub mod membership;
pub mod tls;
mod routing;

pub use client::{Client, Event, EventKind, Options, SessionState, cell_status, who_am_i};
pub use error::{Error, Redirect, redirect};
pub use fence::{FENCE_LOCKS_MAX, Fence, FenceError};
pub use gaios_proto::cell::v1::{Acl, ErrorReason, Sequencer, Stat, StatusResponse, WhoAmIResponse};
pub use handle::{Handle, LOCK_DELAY_DEFAULT, Lock, LockMode, LockState, OpenOptions};
pub use lease::CLOCK_DRIFT_PPM;
pub use tls::Tls;

/// The addresses of the development cell `scripts/cell` starts.
pub const LOCAL_CELL: &str = "127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203,127.0.0.1:7204,127.0.0.1:7205";

/// The cell's client addresses from `GAIOS_CELL` (comma-separated), or the
/// local development cell's, as the `gaios` tool and the examples use them.
pub fn cell_from_env() -> Vec<String> {
    std::env::var("GAIOS_CELL")
        .unwrap_or_else(|_| LOCAL_CELL.to_string())
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(str::to_string)
        .collect()
}

/// The TLS material named by `GAIOS_CACERT`, `GAIOS_CERT` and `GAIOS_KEY`
/// (the variables `scripts/cell` prints and the `gaios` tool reads);
/// `None` if none is set, an error if only some are or a file cannot be
/// read.
pub fn tls_from_env() -> std::io::Result<Option<Tls>> {
    let var = |name| std::env::var_os(name).map(std::path::PathBuf::from);
    match (var("GAIOS_CACERT"), var("GAIOS_CERT"), var("GAIOS_KEY")) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Tls::from_files(&ca, &cert, &key).map(Some),
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "set all of GAIOS_CACERT, GAIOS_CERT and GAIOS_KEY, or none")),
    }
}
