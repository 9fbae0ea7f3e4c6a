//! Master election for other services, as Chubby's paper describes it:
//! candidates take the exclusive lock on one file; the winner writes its
//! value (an address, say) into the file together with its sequencer;
//! others read or watch the file and believe a value only while its
//! sequencer is current.

use std::time::Duration;

use bytes::Bytes;
use gaios_proto::cell::v1 as api;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::Error;
use crate::handle::{Handle, LOCK_DELAY_DEFAULT, Lock, LockMode, LockState, OpenOptions};

/// How long one round of waiting for the lock lasts before the candidate
/// asks again (the wait itself survives failovers; this only bounds a call).
const CAMPAIGN_WAIT: Duration = Duration::from_secs(30);
/// How often `observe` re-reads the leader file besides reacting to events
/// (a leader's session can end without any event on the file).
const OBSERVE_INTERVAL: Duration = Duration::from_millis(250);
const HEADER: &str = "gaios-leader/1";

/// This process leads: it holds the election lock. Stop acting as leader
/// at [`Leadership::at_risk`] (jeopardy: another candidate may lead soon),
/// not only at [`Leadership::lost`]; see [`Lock`].
#[derive(Debug)]
pub struct Leadership {
    lock: Lock,
    value: Bytes,
}

impl Leadership {
    /// The leader's sequencer: hand it to the services it talks to.
    pub fn sequencer(&self) -> &api::Sequencer {
        self.lock.sequencer()
    }

    /// The value it published.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// Where leadership stands now (the election lock's state).
    pub fn state(&self) -> LockState {
        self.lock.state()
    }

    /// Leadership's state now and its changes, for a `select!` loop.
    pub fn states(&self) -> tokio::sync::watch::Receiver<LockState> {
        self.lock.states()
    }

    /// Resolves when leadership is at risk or worse: the session entered
    /// jeopardy (or expired), or the file was deleted. Stop acting as
    /// leader: the cell may soon let another candidate lead.
    /// [`Leadership::recovered`] says whether the risk passed.
    pub async fn at_risk(&self) {
        self.lock.at_risk().await;
    }

    /// Resolves once the risk has passed either way: `true` when the
    /// session is safe again and this process still leads, `false` when
    /// leadership was lost instead.
    pub async fn recovered(&self) -> bool {
        self.lock.recovered().await
    }

    /// Resolves when leadership is lost for sure (the session expired or
    /// the file was deleted).
    pub async fn lost(&self) {
        self.lock.lost().await;
    }

    /// Steps down: clears the published value and releases the lock.
    pub async fn resign(self) -> Result<(), Error> {
        self.lock.handle().set_contents(Bytes::new(), None).await?;
        self.lock.release().await
    }
}

/// Campaigns for leadership of `path` (created if missing); resolves once
/// this process leads, after publishing `value`. A leader whose session
/// expires keeps the others waiting for [`LOCK_DELAY_DEFAULT`] (see there
/// why); [`campaign_with_lock_delay`] chooses another.
pub async fn campaign(client: &Client, path: &str, value: impl Into<Bytes>) -> Result<Leadership, Error> {
    campaign_with_lock_delay(client, path, value, LOCK_DELAY_DEFAULT).await
}

/// [`campaign`] with the lock-delay a successor waits after this leader's
/// session expires (at most 60 s).
pub async fn campaign_with_lock_delay(
    client: &Client,
    path: &str,
    value: impl Into<Bytes>,
    lock_delay: Duration,
) -> Result<Leadership, Error> {
    let value = value.into();
    let handle = client.open(path, OpenOptions::new().create().lock_delay(lock_delay)).await?;
    let lock = loop {
        match handle.acquire(LockMode::Exclusive, CAMPAIGN_WAIT).await {
            Ok(lock) => break lock,
            Err(Error::Timeout(_)) => {}
            Err(error) => return Err(error),
        }
    };
    handle.set_contents(encode(lock.sequencer(), &value), None).await?;
    Ok(Leadership { lock, value })
}

/// The current leader's value, or `None` if nobody leads `path` now.
pub async fn leader(client: &Client, path: &str) -> Result<Option<Bytes>, Error> {
    let handle = match client.open(path, OpenOptions::new().event_mask(0)).await {
        Ok(handle) => handle,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    let found = current(client, &handle).await;
    let _ = handle.close().await;
    found
}

/// The leader's value now and after every change (`None` while nobody
/// leads), until the session ends or the receiver is dropped.
pub fn observe(client: &Client, path: &str) -> ReceiverStream<Result<Option<Bytes>, Error>> {
    let (tx, rx) = mpsc::channel(16);
    let path = path.to_string();
    let inner = client.inner().clone();
    let client_events = client.events();
    tokio::spawn(async move {
        let mut events = client_events;
        let handle = match Handle::open(inner.clone(), &path, OpenOptions::new().create()).await {
            Ok(handle) => handle,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        let mut last: Option<Option<Bytes>> = None;
        loop {
            let now = current_with(&inner, &handle).await;
            let changed = match (&now, &last) {
                (Ok(value), Some(previous)) => value != previous,
                _ => true,
            };
            if changed {
                let stop = now.is_err();
                if let Ok(value) = &now {
                    last = Some(value.clone());
                }
                if tx.send(now).await.is_err() || stop {
                    return;
                }
            }
            // Wake on any event of the session or after the interval.
            let _ = tokio::time::timeout(OBSERVE_INTERVAL, events.recv()).await;
        }
    });
    ReceiverStream::new(rx)
}

async fn current(client: &Client, handle: &Handle) -> Result<Option<Bytes>, Error> {
    current_with(client.inner(), handle).await
}

async fn current_with(inner: &std::sync::Arc<crate::client::Inner>, handle: &Handle) -> Result<Option<Bytes>, Error> {
    let (contents, _) = handle.contents().await?;
    let Some((sequencer, value)) = decode(handle.path(), &contents) else { return Ok(None) };
    Ok(inner.check_sequencer(&sequencer).await?.then_some(value))
}

/// The leader file: a header line, the lock generation and node instance
/// of the leader's sequencer, then the value.
fn encode(sequencer: &api::Sequencer, value: &Bytes) -> Bytes {
    let mut out = format!("{HEADER}\n{}\n{}\n", sequencer.lock_generation, sequencer.instance).into_bytes();
    out.extend_from_slice(value);
    Bytes::from(out)
}

fn decode(path: &str, contents: &Bytes) -> Option<(api::Sequencer, Bytes)> {
    let mut lines = contents.splitn(4, |&b| b == b'\n');
    if lines.next()? != HEADER.as_bytes() {
        return None;
    }
    let generation = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    let instance = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    let value = Bytes::copy_from_slice(lines.next().unwrap_or_default());
    let sequencer = api::Sequencer {
        path: path.to_string(),
        mode: api::LockMode::Exclusive as i32,
        lock_generation: generation,
        instance,
    };
    Some((sequencer, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_file_round_trips_and_garbage_is_nobody() {
        let sequencer = api::Sequencer { path: "/e".into(), mode: 1, lock_generation: 12, instance: 4 };
        let value = Bytes::from_static(b"10.0.0.1:80\nwith a newline");
        let (decoded, got) = decode("/e", &encode(&sequencer, &value)).expect("decodes");
        assert_eq!(decoded, sequencer);
        assert_eq!(got, value);
        assert!(decode("/e", &Bytes::from_static(b"")).is_none());
        assert!(decode("/e", &Bytes::from_static(b"something else\n1\n2\nv")).is_none());
    }
}
