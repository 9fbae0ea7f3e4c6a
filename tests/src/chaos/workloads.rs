//! The in-process workloads of the chaos suite: each records every
//! operation it runs, with its outcome, into the [`Recorder`]. (The lock
//! holders and election candidates run as processes of their own; see
//! [`super::workers`].)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gaios_client::{Error, OpenOptions};
use tokio::sync::watch;

use super::{Outcome, Recorder, connect, definite, lock};
use crate::linearizability::{Op, OpKind, OpResult};
use crate::rng::Rng;

/// Register files in use at once (one history each).
pub(super) const REGISTER_FILES: u64 = 3;
/// How long the register workload uses one file per key before moving on.
const REGISTER_PERIOD_SECS: u64 = 20;

pub(super) async fn registers(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    let mut client = connect(&addresses).await;
    let mut counter = 0u64;
    let mut handles: BTreeMap<String, gaios_client::Handle> = BTreeMap::new();
    let mut last_generation: BTreeMap<String, u64> = BTreeMap::new();
    while !*stop.borrow() {
        let key = rng.below(REGISTER_FILES);
        // A fresh file per key every period, which keeps each file's history
        // (and its linearizability search) small; all workers agree on the
        // file by the run's clock.
        let period = recorder.now() / 1_000_000 / REGISTER_PERIOD_SECS;
        let path = format!("/chaos/r{key}-{period}");
        let handle = match handles.get(&path) {
            Some(handle) => handle.clone(),
            None => match client.open(&path, OpenOptions::new().create().event_mask(0)).await {
                Ok(handle) => {
                    handles.insert(path.clone(), handle.clone());
                    handle
                }
                Err(Error::SessionExpired) => {
                    client = connect(&addresses).await;
                    handles.clear();
                    continue;
                }
                Err(_) => continue,
            },
        };
        counter += 1;
        let value = (worker as u64 + 1) * 1_000_000_000 + counter;
        let invoke = recorder.now();
        let choice = rng.below(3);
        let (kind, result, complete) = match choice {
            0 => match handle.contents().await {
                Ok((contents, stat)) => {
                    let value = std::str::from_utf8(&contents).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                    last_generation.insert(path.clone(), stat.content_generation);
                    recorder.count("registers", Outcome::Ok);
                    (OpKind::Read, OpResult::Read { value, generation: stat.content_generation }, Some(recorder.now()))
                }
                Err(error) => {
                    recorder.count("registers", Outcome::Fail);
                    if error == Error::SessionExpired {
                        client = connect(&addresses).await;
                        handles.clear();
                    }
                    continue; // a failed read says nothing
                }
            },
            1 => match handle.set_contents(value.to_string(), None).await {
                Ok(stat) => {
                    let done = recorder.now();
                    recorder.count("registers", Outcome::Ok);
                    recorder.write_ok(invoke, done);
                    let written = OpResult::Written { generation: Some(stat.content_generation) };
                    (OpKind::Write(value), written, Some(done))
                }
                Err(error) => {
                    if error == Error::SessionExpired {
                        client = connect(&addresses).await;
                        handles.clear();
                    }
                    recorder.count("registers", Outcome::Indeterminate);
                    (OpKind::Write(value), OpResult::Unknown, None)
                }
            },
            _ => {
                let expected = last_generation.get(&path).copied().unwrap_or(1);
                match handle.set_contents(value.to_string(), Some(expected)).await {
                    Ok(_) => {
                        let done = recorder.now();
                        recorder.count("registers", Outcome::Ok);
                        recorder.write_ok(invoke, done);
                        (OpKind::Cas { expected_generation: expected, value }, OpResult::CasOk, Some(done))
                    }
                    Err(Error::FailedPrecondition { .. }) => {
                        recorder.count("registers", Outcome::Fail);
                        (OpKind::Cas { expected_generation: expected, value }, OpResult::CasFailed, Some(recorder.now()))
                    }
                    Err(error) => {
                        if error == Error::SessionExpired {
                            client = connect(&addresses).await;
                            handles.clear();
                        }
                        recorder.count("registers", Outcome::Indeterminate);
                        (OpKind::Cas { expected_generation: expected, value }, OpResult::Unknown, None)
                    }
                }
            }
        };
        lock(&recorder.registers).entry(path).or_default().push(Op { client: worker, invoke, complete, kind, result });
    }
    let _ = client.close().await;
}

/// Reads the register files straight from each replica in turn, without
/// following redirects: a replica that is not the master must refuse, and
/// one that was deposed (isolated, paused) must not answer from its stale
/// state. Every answer goes into the register histories.
pub(super) async fn pinned_reads(reader: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    use gaios_proto::cell::v1 as api;
    let mut client = connect(&addresses).await;
    let mut handles: BTreeMap<String, u64> = BTreeMap::new();
    let mut channels: BTreeMap<usize, api::cell_client::CellClient<tonic::transport::Channel>> = BTreeMap::new();
    let mut next = 0usize;
    while !*stop.borrow() {
        let key = rng.below(REGISTER_FILES);
        let period = recorder.now() / 1_000_000 / REGISTER_PERIOD_SECS;
        let path = format!("/chaos/r{key}-{period}");
        let handle = match handles.get(&path) {
            Some(&handle) => handle,
            None => match client.open(&path, OpenOptions::new().create().event_mask(0)).await {
                Ok(handle) => {
                    handles.insert(path.clone(), handle.id());
                    handle.id()
                }
                Err(Error::SessionExpired) => {
                    client = connect(&addresses).await;
                    handles.clear();
                    continue;
                }
                Err(_) => continue,
            },
        };
        next = (next + 1) % addresses.len();
        if let std::collections::btree_map::Entry::Vacant(e) = channels.entry(next) {
            let Some(endpoint) = super::endpoint(&addresses[next].to_string()) else { continue };
            if let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_millis(500), endpoint.connect()).await {
                let cell = api::cell_client::CellClient::new(channel);
                e.insert(cell);
            } else {
                continue;
            }
        }
        let Some(cell) = channels.get_mut(&next) else { continue };
        let request = api::GetContentsAndStatRequest {
            handle: Some(api::HandleRef { session_id: client.session_id(), handle, session_secret: client.session_secret().to_vec().into() }),
        };
        let invoke = recorder.now();
        match tokio::time::timeout(Duration::from_millis(500), cell.get_contents_and_stat(request)).await {
            Ok(Ok(answer)) => {
                let complete = recorder.now();
                let answer = answer.into_inner();
                let value = std::str::from_utf8(&answer.contents).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
                let generation = answer.stat.map_or(0, |s| s.content_generation);
                recorder.count("pinned-reads", Outcome::Ok);
                let op = Op { client: reader, invoke, complete: Some(complete), kind: OpKind::Read, result: OpResult::Read { value, generation } };
                lock(&recorder.registers).entry(path).or_default().push(op);
            }
            Ok(Err(_)) => recorder.count("pinned-reads", Outcome::Fail),
            Err(_) => {
                recorder.count("pinned-reads", Outcome::Fail);
                channels.remove(&next);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = client.close().await;
}

pub(super) async fn ephemerals(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>, mut rng: Rng) {
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let client = connect(&addresses).await;
        let name = format!("w{worker}-{n}");
        let path = format!("/chaos/eph/{name}");
        match client.open(&path, OpenOptions::new().create_new().ephemeral().event_mask(0)).await {
            Ok(_) => {
                recorder.count("ephemerals", Outcome::Ok);
                lock(&recorder.ephemerals).nodes.insert(name.clone(), (recorder.now(), None));
            }
            Err(error) => {
                recorder.count("ephemerals", if definite(&error) { Outcome::Fail } else { Outcome::Indeterminate });
            }
        }
        tokio::time::sleep(rng.between(Duration::from_millis(500), Duration::from_millis(2_000))).await;
        let ended = recorder.now();
        let expired = *client.session_state().borrow() == gaios_client::SessionState::Expired;
        {
            let mut log = lock(&recorder.ephemerals);
            if let Some(node) = log.nodes.get_mut(&name) {
                node.1 = Some(ended);
            }
            if expired {
                log.expired_early.insert(name.clone());
            }
        }
        if rng.chance(0.5) {
            let _ = client.close().await;
        } else {
            drop(client); // abandoned: the cell expires it after its lease
        }
    }
}

pub(super) async fn observe_ephemerals(addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>) {
    let mut client = connect(&addresses).await;
    let mut directory = None;
    while !*stop.borrow() {
        if directory.is_none() {
            directory = client.open("/chaos/eph", OpenOptions::new().event_mask(0)).await.ok();
        }
        if let Some(handle) = &directory {
            let invoked = recorder.now();
            match handle.read_dir().await {
                Ok(names) => {
                    let completed = recorder.now();
                    lock(&recorder.ephemerals).observations.push((invoked, completed, names.into_iter().collect()));
                }
                Err(Error::SessionExpired) => {
                    client = connect(&addresses).await;
                    directory = None;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = client.close().await;
}

pub(super) async fn unique_set(worker: usize, addresses: Vec<String>, recorder: Arc<Recorder>, stop: watch::Receiver<bool>) {
    let mut client = connect(&addresses).await;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let name = format!("v{worker}-{n}");
        let invoked = recorder.now();
        match client.open(&format!("/chaos/set/{name}"), OpenOptions::new().create().event_mask(0)).await {
            Ok(handle) => {
                let done = recorder.now();
                recorder.count("unique-set", Outcome::Ok);
                recorder.write_ok(invoked, done);
                lock(&recorder.set_acknowledged).insert(name);
                let _ = handle.close().await;
            }
            Err(error) => {
                recorder.count("unique-set", if definite(&error) { Outcome::Fail } else { Outcome::Indeterminate });
                if error == Error::SessionExpired {
                    client = connect(&addresses).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.close().await;
}

