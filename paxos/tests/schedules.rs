//! Hand-routed schedules against the public API of `gaios-paxos`: five
//! replicas whose every message is delivered, held or dropped by the test,
//! as a hostile network would. Each test replays a fault sequence that broke
//! (or could break) safety and checks that no slot ever gets two values.

use std::collections::BTreeMap;

use bytes::Bytes;
use gaios_paxos::{Ballot, Config, Durable, Membership, Message, Replica, ReplicaId, Slot, Snapshot, Value};

const MEMBERS: [ReplicaId; 5] = [1, 2, 3, 4, 5];
const LEASE_TICKS: u64 = 8;

/// Five replicas and a pool of messages in flight that the test routes.
struct Net {
    nodes: BTreeMap<ReplicaId, Replica>,
    /// Messages sent and not yet delivered or dropped: (from, to, message).
    pool: Vec<(ReplicaId, ReplicaId, Message)>,
    /// What each replica applied, by slot.
    applied: BTreeMap<ReplicaId, BTreeMap<Slot, Value>>,
}

fn config(id: ReplicaId) -> Config {
    let mut config = Config::new(id, MEMBERS.to_vec());
    // No election happens unless the test calls `campaign`.
    config.election_ticks_min = 1_000;
    config.election_ticks_max = 1_000;
    config.heartbeat_ticks = 2;
    config.lease_ticks = LEASE_TICKS;
    config.lease_drift_ticks = 2;
    config
}

fn command(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

fn batch(text: &'static str) -> Value {
    Value::Batch(vec![command(text)])
}

impl Net {
    fn new() -> Net {
        let mut net = Net { nodes: BTreeMap::new(), pool: Vec::new(), applied: BTreeMap::new() };
        for id in MEMBERS {
            let replica = Replica::new(config(id), Durable::default()).expect("valid config");
            net.nodes.insert(id, replica);
            net.applied.insert(id, BTreeMap::new());
        }
        // Wait out the lease every fresh acceptor honours after a start.
        net.tick_all(LEASE_TICKS);
        net.pool.clear();
        net
    }

    fn node(&mut self, id: ReplicaId) -> &mut Replica {
        self.nodes.get_mut(&id).expect("a member")
    }

    /// Carries out every `Ready` of `id` as a driver would (all writes
    /// durable at once); what it sends goes to the pool.
    fn settle(&mut self, id: ReplicaId) {
        loop {
            let replica = self.nodes.get_mut(&id).expect("a member");
            if !replica.has_ready() {
                return;
            }
            let mut ready = replica.ready();
            for envelope in ready.messages.drain(..).chain(ready.persisted_messages.drain(..)) {
                self.pool.push((id, envelope.to, envelope.message));
            }
            let applied = self.applied.get_mut(&id).expect("a member");
            for entry in &ready.committed {
                applied.insert(entry.slot, entry.value.clone());
            }
            replica.advance(ready);
        }
    }

    /// Delivers (and removes from the pool) every message from `from` to
    /// `to` that `pick` selects, in the order sent; returns how many.
    fn deliver(&mut self, from: ReplicaId, to: ReplicaId, pick: impl Fn(&Message) -> bool) -> usize {
        let mut chosen = Vec::new();
        let mut rest = Vec::new();
        for (f, t, message) in std::mem::take(&mut self.pool) {
            if f == from && t == to && pick(&message) {
                chosen.push(message);
            } else {
                rest.push((f, t, message));
            }
        }
        self.pool = rest;
        let count = chosen.len();
        for message in chosen {
            self.node(to).step(from, message);
            self.settle(to);
        }
        count
    }

    /// Takes (without delivering) the first message from `from` to `to`
    /// that `pick` selects: the network holds it.
    fn hold(&mut self, from: ReplicaId, to: ReplicaId, pick: impl Fn(&Message) -> bool) -> Message {
        let index = self
            .pool
            .iter()
            .position(|(f, t, m)| *f == from && *t == to && pick(m))
            .expect("the message to hold was sent");
        self.pool.remove(index).2
    }

    /// Delivers a message the network held.
    fn release(&mut self, from: ReplicaId, to: ReplicaId, message: Message) {
        self.node(to).step(from, message);
        self.settle(to);
    }

    /// Advances every replica's clock; what they send meanwhile is lost.
    fn tick_all(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for id in MEMBERS {
                self.node(id).tick();
                self.settle(id);
            }
        }
        self.pool.clear();
    }

    fn tick(&mut self, id: ReplicaId, ticks: u64) {
        for _ in 0..ticks {
            self.node(id).tick();
            self.settle(id);
        }
    }

    /// Runs phase 1 for `candidate` with exactly `acceptors` answering.
    fn elect(&mut self, candidate: ReplicaId, acceptors: &[ReplicaId]) -> Ballot {
        self.node(candidate).campaign();
        self.settle(candidate);
        for &acceptor in acceptors {
            self.deliver(candidate, acceptor, |m| matches!(m, Message::Prepare { .. }));
            self.deliver(acceptor, candidate, |m| matches!(m, Message::Promise { .. }));
        }
        let replica = self.node(candidate);
        assert!(replica.is_master(), "replica {candidate} won with {acceptors:?}: {:?}", replica.status());
        replica.master_ballot().expect("master")
    }

    /// Proposes `text` at `master`, has exactly `acceptors` accept it and
    /// returns the slot it went to.
    fn propose(&mut self, master: ReplicaId, text: &'static str, acceptors: &[ReplicaId]) -> Slot {
        self.node(master).propose(command(text)).expect("the master takes proposals");
        self.settle(master);
        let slot = self
            .pool
            .iter()
            .find_map(|(f, _, m)| match m {
                Message::Accept { entries, .. } if *f == master => {
                    entries.iter().find(|e| e.value == batch(text)).map(|e| e.slot)
                }
                _ => None,
            })
            .expect("the master sent an accept");
        for &acceptor in acceptors {
            self.deliver(master, acceptor, |m| matches!(m, Message::Accept { .. }));
            self.deliver(acceptor, master, |m| matches!(m, Message::Accepted { .. }));
        }
        slot
    }

    /// Has `master` send a heartbeat and delivers it to `to` only.
    fn heartbeat(&mut self, master: ReplicaId, to: &[ReplicaId]) {
        self.pool.clear();
        self.tick(master, 2);
        for &to in to {
            self.deliver(master, to, |m| matches!(m, Message::Heartbeat { .. }));
        }
        self.pool.retain(|(f, _, _)| *f != master);
    }

    /// Every slot any replica applied holds one value everywhere.
    fn check_one_value_per_slot(&self) {
        let mut seen: BTreeMap<Slot, (ReplicaId, &Value)> = BTreeMap::new();
        for (&id, applied) in &self.applied {
            for (&slot, value) in applied {
                match seen.get(&slot) {
                    Some((other, first)) => assert_eq!(
                        *first, value,
                        "slot {slot}: replica {other} applied {first:?} but replica {id} applied {value:?}"
                    ),
                    None => {
                        seen.insert(slot, (id, value));
                    }
                }
            }
        }
    }
}

/// The common first half of finding 1: p chosen at slot 1 in b0 (master 4)
/// while replica 1 lags, its catch-up request to 4 held by the network;
/// replica 1 master in b1 with {1, 2, 3}, x accepted at slot 2 by 3 only;
/// replica 2 master in b2 with {2, 4, 5}, y chosen at slot 2 and applied by
/// 2 and (through a heartbeat) 4. Returns the held request.
fn deposed_master_with_a_held_catch_up_request(net: &mut Net) -> Message {
    net.elect(4, &[2, 3, 5]);
    let slot = net.propose(4, "p", &[2, 3, 5]);
    assert_eq!(slot, 1);
    // Replica 1 hears "chosen through 1" without holding slot 1 and asks 4.
    net.heartbeat(4, &[1, 2, 3, 5]);
    let held = net.hold(1, 4, |m| matches!(m, Message::CatchUpRequest { .. }));
    net.pool.clear();
    // Master 4 hears no acknowledgement for an election timeout and steps
    // down (check quorum); then every lease it was granted runs out.
    net.tick(4, 1_001);
    assert!(!net.node(4).is_master());
    net.tick_all(LEASE_TICKS + 1);

    let b1 = net.elect(1, &[2, 3]);
    let x = net.propose(1, "x", &[3]);
    assert_eq!(x, 2);
    assert!(net.node(1).chosen_through() < 2, "x is not chosen");
    net.pool.clear();

    let b2 = net.elect(2, &[4, 5]);
    assert!(b1 < b2);
    let y = net.propose(2, "y", &[4, 5]);
    assert_eq!(y, 2);
    assert_eq!(net.applied[&2].get(&2), Some(&batch("y")), "y is chosen and acknowledged");
    net.heartbeat(2, &[4]);
    assert_eq!(net.node(4).chosen_through(), 2);
    assert!(net.node(1).is_master(), "replica 1 does not know it was deposed");
    held
}

/// The second half: replica 1, still master of b1 in its own view, tells 3
/// (still on b1) what it believes is chosen; then 5 wins b3 with {3, 4, 5}.
fn finish_finding_1(net: &mut Net) {
    net.heartbeat(1, &[3]);
    net.check_one_value_per_slot();
    net.tick_all(LEASE_TICKS + 1);
    net.elect(5, &[3, 4]);
    net.propose(5, "z", &[3, 4]);
    net.heartbeat(5, &[3, 4]);
    net.check_one_value_per_slot();
    assert_eq!(net.applied[&5].get(&2), Some(&batch("y")), "the new master keeps the acknowledged y");
}

#[test]
fn finding_1_a_deposed_master_never_vouches_for_values_it_learned_by_catch_up() {
    let mut net = Net::new();
    let held = deposed_master_with_a_held_catch_up_request(&mut net);
    // The held request reaches 4 at last; its catch-up reaches 1.
    net.release(1, 4, held);
    assert_eq!(net.deliver(4, 1, |m| matches!(m, Message::CatchUp { .. })), 1);
    finish_finding_1(&mut net);
}

#[test]
fn finding_1_with_a_snapshot_instead_of_a_catch_up() {
    let mut net = Net::new();
    let held = deposed_master_with_a_held_catch_up_request(&mut net);
    let snapshot = Snapshot { slot: 2, data: Bytes::from_static(b"state through slot 2"), membership: Membership::default() };
    net.node(4).compact(snapshot).expect("4 applied slot 2");
    net.settle(4);
    net.release(1, 4, held);
    assert_eq!(net.deliver(4, 1, |m| matches!(m, Message::InstallSnapshot { .. })), 1);
    net.heartbeat(1, &[3]);
    net.check_one_value_per_slot();
    assert_eq!(net.node(3).chosen_through(), 1, "3 takes nothing from the deposed master");
    // 5 wins b3 with {3, 4}; 4 compacted slot 2 away, so 5 first learns it
    // from 4's snapshot and recovers from slot 3 on.
    net.tick_all(LEASE_TICKS + 1);
    net.node(5).campaign();
    net.settle(5);
    net.deliver(5, 4, |m| matches!(m, Message::Prepare { .. }));
    net.deliver(4, 5, |m| matches!(m, Message::Nack { .. }));
    net.deliver(5, 4, |m| matches!(m, Message::CatchUpRequest { .. }));
    assert_eq!(net.deliver(4, 5, |m| matches!(m, Message::InstallSnapshot { .. })), 1);
    assert_eq!(net.node(5).chosen_through(), 2);
    net.pool.clear();
    net.elect(5, &[3, 4]);
    net.propose(5, "z", &[3, 4]);
    net.heartbeat(5, &[3, 4]);
    net.check_one_value_per_slot();
    assert_ne!(net.applied[&3].get(&2), Some(&batch("x")));
}

#[test]
fn finding_1_a_catch_up_past_the_masters_next_slot_never_makes_it_propose_at_chosen_slots() {
    let mut net = Net::new();
    let held = deposed_master_with_a_held_catch_up_request(&mut net);
    // y is followed by w at slot 3 in b2, chosen and known to 4.
    net.propose(2, "w", &[4, 5]);
    net.heartbeat(2, &[4]);
    assert_eq!(net.node(4).chosen_through(), 3);
    net.release(1, 4, held);
    assert_eq!(net.deliver(4, 1, |m| matches!(m, Message::CatchUp { .. })), 1);
    // Replica 1 (master of b1 with x in flight at slot 2 and next slot 3)
    // takes a new proposal: it must not go to a slot it believes chosen.
    if net.node(1).propose(command("v")).is_ok() {
        net.settle(1);
        net.deliver(1, 3, |m| matches!(m, Message::Accept { .. }));
    }
    finish_finding_1(&mut net);
}
