//! The whole cell in the simulator.
//!
//! [`gaios_paxos::sim`] runs five Paxos cores under a hostile network, disks
//! that lose their unsynced tail, crashes, pauses and drifting clocks. This
//! crate plugs a [`Cell`] into it as its [`Application`], so that under every
//! one of those faults:
//!
//! - every replica applies the real commands of the chosen log to its own
//!   [`StateMachine`], snapshots it when its core compacts, restores it when it
//!   restarts or installs a peer's snapshot ([`replica`]);
//! - the replica that is master runs the master's duties of the server
//!   ([`gaios_state::master::MasterDuties`]: leases promoted when it can
//!   serve, sessions expired, lock-delays ended) on its own simulated
//!   monotonic clock, records each failover with `MasterTookOver`, stamps
//!   every command with the time and the lock-delay clock, and answers the
//!   clients as the `Cell` service does: KeepAlives renew its session
//!   leases, `Acquire` waits in line until a grant or its deadline
//!   (then `CancelWait`), `CheckSequencer` is read from its applied state;
//! - a handful of seeded clients ([`client`]) open sessions through the
//!   master, keep them alive (sometimes pausing past their lease), open
//!   files, take and release exclusive and shared locks (`Acquire` and
//!   `TryAcquire`), write with compare-and-set, check sequencers, close
//!   sessions, and retry every call with the same request number after a
//!   lost answer or a change of master.
//!
//! After every event, beside the Paxos simulator's own checks ([`checks`]):
//! at most one exclusive holder per lock on every replica; no two clients
//! each told they hold one lock at once (a client counts its locks only
//! while its own, conservative, session lease runs); no sequencer reported
//! current by a serving master after a newer grant of its lock was told to
//! a client; no session expired while its client's lease (and so the
//! master's) still ran; a retried request never applied twice (every
//! application of one (session, request number) yields the first answer);
//! replicas' applied outcomes and states equal at equal slots; and
//! `check_invariants()` on every replica after every command.
//!
//! A failure names its seed; `GAIOS_CELLSIM_SEED=<n> cargo test -p
//! gaios-cellsim` replays it.

pub mod checks;
pub mod client;
pub mod replica;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gaios_paxos::Entry;
use gaios_paxos::ready::RoleChange;
use gaios_paxos::rng::Rng;
use gaios_paxos::sim::{self, Application, Cluster, Options, Violation};
use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;
use gaios_state::StateMachine;

use crate::checks::History;
use crate::client::Client;
use crate::replica::CellReplica;

/// The largest command a simulated master proposes, in bytes.
pub const COMMAND_BYTES_MAX: usize = 512;
/// How often a master runs its duties, in microseconds of its own clock (as
/// its turns read it; see `CellReplica::duties_at_us`).
pub const DUTY_INTERVAL_US: u64 = 1_000;

/// What a whole-cell run did, beside the Paxos simulator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellReport {
    /// The Paxos simulator's report.
    pub paxos: sim::Report,
    /// Sessions the clients were told were created.
    pub sessions_created: u64,
    /// Sessions the masters expired (applied).
    pub sessions_expired: u64,
    /// Locks the clients were told they hold.
    pub locks_granted: u64,
    /// Writes the clients were told succeeded.
    pub writes: u64,
    /// Calls sent again with the same request number.
    pub retries: u64,
    /// Retried calls applied again that answered from the at-most-once
    /// window.
    pub duplicates_applied: u64,
    /// Sequencer checks answered.
    pub sequencer_checks: u64,
    /// Commands applied, over all replicas.
    pub commands_applied: u64,
    /// Client pauses past their lease.
    pub client_pauses: u64,
    /// ACL changes applied.
    pub acl_changes: u64,
    /// Calls refused by a node's ACL.
    pub acl_denials: u64,
}

/// Runs one seed of the whole cell.
pub fn run(seed: u64) -> Result<CellReport, Violation> {
    // The cell simulator keeps its five replicas: configuration changes are
    // the Paxos simulator's (its application state is per replica index).
    let options = Options {
        replay_with: "GAIOS_CELLSIM_SEED={seed} cargo test -p gaios-cellsim",
        membership_changes: false,
        ..Options::default()
    };
    let mut cell = Cell::new(seed, options.replicas as usize);
    let paxos = sim::run_application(seed, &options, &mut cell)?;
    Ok(CellReport { paxos, ..cell.report })
}

/// What happens between clients and replicas: a message in flight, a
/// client's turn to act, the masters' duties.
#[derive(Clone, Debug)]
pub enum Event {
    /// A client's request reaches replica `node`.
    Request {
        /// The replica.
        node: usize,
        /// The client.
        client: usize,
        /// The client's attempt it answers.
        attempt: u64,
        /// What it asks.
        request: Request,
    },
    /// A replica's answer reaches a client.
    Answer {
        /// The client.
        client: usize,
        /// The client's attempt it answers.
        attempt: u64,
        /// The answer.
        answer: Answer,
    },
    /// A client acts.
    Wake {
        /// The client.
        client: usize,
    },
}

/// What a client asks a replica.
#[derive(Clone, Debug)]
pub enum Request {
    /// Proposes a command (create or close a session, a session call).
    Propose(wire::command::Kind),
    /// Renews a session's lease.
    KeepAlive {
        /// The session.
        session: u64,
        /// Its secret.
        secret: Bytes,
    },
    /// Whether a sequencer is current (a read at the master).
    CheckSequencer(api::Sequencer),
}

/// A replica's answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Not a master that can serve: try another replica (this one, by
    /// index, if the replica knows the master).
    NotMaster(Option<usize>),
    /// The master lost mastership or gave up; the outcome is unknown.
    Indeterminate,
    /// The command's outcome.
    Outcome(wire::Outcome),
    /// A KeepAlive's answer: renewed (true) or the session ended.
    KeepAlive(bool),
    /// A sequencer check's answer.
    Sequencer(api::CheckSequencerResponse),
}

/// The whole cell: replicas' state machines and master memory, the clients,
/// the messages between them, and the history the checks read.
#[derive(Debug)]
pub struct Cell {
    rng: Rng,
    /// The base of every replica's monotonic clock.
    base: Instant,
    replicas: Vec<CellReplica>,
    clients: Vec<Client>,
    /// Messages and wake-ups, by (time, order).
    queue: BTreeMap<(u64, u64), Event>,
    order: u64,
    /// Replicas whose role changed since the last step.
    role_changed: bool,
    /// This seed's client settings.
    session_lease_us: u64,
    drop_per_mille: u64,
    delay_us_max: u64,
    history: History,
    report: CellReport,
}

impl Cell {
    /// A cell of `replicas` replicas with a seeded handful of clients.
    pub fn new(seed: u64, replicas: usize) -> Cell {
        let mut rng = Rng::new(seed ^ 0x00ce_11ce_11ce_11ce);
        let session_lease_us = [30_000, 60_000, 120_000][rng.range(0, 2) as usize];
        let clients = rng.range(2, 6) as usize;
        let mut cell = Cell {
            base: Instant::now(),
            replicas: (0..replicas).map(|_| CellReplica::new(Duration::from_micros(session_lease_us))).collect(),
            clients: (0..clients).map(|index| Client::new(index, replicas)).collect(),
            queue: BTreeMap::new(),
            order: 0,
            role_changed: false,
            session_lease_us,
            drop_per_mille: rng.range(0, 60),
            delay_us_max: [300, 1_000, 3_000][rng.range(0, 2) as usize],
            history: History::new(session_lease_us),
            report: CellReport::default(),
            rng,
        };
        for client in 0..clients {
            let first = cell.rng.range(0, 5_000);
            cell.schedule(0, first, Event::Wake { client });
        }
        cell
    }

    fn schedule(&mut self, now_us: u64, delay_us: u64, event: Event) {
        self.order += 1;
        self.queue.insert((now_us + delay_us, self.order), event);
    }

    /// Sends a message over the clients' network: delayed, sometimes lost.
    fn send(&mut self, now_us: u64, message: Event) {
        if self.rng.chance(self.drop_per_mille, 1_000) {
            return;
        }
        let delay = self.rng.range(30, self.delay_us_max);
        self.schedule(now_us, delay, message);
    }

    /// Replica `node`'s monotonic clock now.
    fn local_now(&self, cluster: &dyn Cluster, node: usize) -> Instant {
        self.base + Duration::from_micros(cluster.view(node).local_us)
    }
}

impl Application for Cell {
    fn command_bytes_max(&self) -> usize {
        COMMAND_BYTES_MAX
    }

    fn restore(&mut self, cluster: &dyn Cluster, node: usize, data: Option<&[u8]>) -> Result<(), String> {
        let view = cluster.view(node);
        let state = match data {
            None => StateMachine::new(),
            Some(data) => StateMachine::restore(data).map_err(|error| format!("replica {} cannot restore: {error}", view.id))?,
        };
        state.check_invariants();
        self.history.restored(view.id, view.applied, &state)?;
        self.replicas[node].restore(view, state);
        Ok(())
    }

    fn loads(&self, data: &[u8]) -> bool {
        StateMachine::restore(data).is_ok()
    }

    fn snapshot(&mut self, node: usize) -> Bytes {
        self.replicas[node].state.snapshot()
    }

    fn apply(&mut self, cluster: &dyn Cluster, node: usize, entry: &Entry) -> Result<(), String> {
        self.apply_entry(cluster, node, entry)
    }

    fn role_change(&mut self, node: usize, change: &RoleChange) {
        self.role_changed = true;
        self.replicas[node].role_change(change);
    }

    fn crashed(&mut self, node: usize) {
        self.replicas[node].crashed();
    }

    fn step(&mut self, cluster: &mut dyn Cluster) -> Result<(), String> {
        let now_us = cluster.now_us();
        if self.role_changed {
            self.role_changed = false;
            self.answer_role_changes(cluster);
        }
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now_us {
                break;
            }
            let message = entry.remove();
            match message {
                Event::Request { node, client, attempt, request } => self.serve(cluster, node, client, attempt, request)?,
                Event::Answer { client, attempt, answer } => self.hear(now_us, client, attempt, answer)?,
                Event::Wake { client } => {
                    self.wake(now_us, client);
                    let gap = self.rng.range(500, 4_000);
                    self.schedule(now_us, gap, Event::Wake { client });
                }
            }
        }
        // The masters whose duties are due run them (each on its own clock).
        self.duties(cluster)
    }

    fn finish(&mut self, cluster: &dyn Cluster) -> Result<(), String> {
        self.history.finish(cluster, &self.replicas)
    }
}
