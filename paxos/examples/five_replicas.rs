//! Five in-memory replicas, one driver loop: elect a master, propose commands,
//! and print what every replica applies, in slot order.
//!
//! ```text
//! cargo run -p gaios-paxos --example five_replicas
//! ```
//!
//! The loop below is the whole driver contract in one page: tick, deliver,
//! take a `Ready`, send what may go now, "persist" (here: keep in memory),
//! send what waited for the write, apply, advance.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use gaios_paxos::{Config, Durable, Message, ReplicaId, Replica, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let members: Vec<ReplicaId> = vec![1, 2, 3, 4, 5];
    let mut replicas: BTreeMap<ReplicaId, Replica> = BTreeMap::new();
    for &id in &members {
        replicas.insert(id, Replica::new(Config::new(id, members.clone()), Durable::default())?);
    }
    // What each replica applied: (slot, command) in order.
    let mut applied: BTreeMap<ReplicaId, Vec<(u64, String)>> = BTreeMap::new();
    let mut network: VecDeque<(ReplicaId, ReplicaId, Message)> = VecDeque::new();
    let commands = ["set /ls/demo/config = v1", "lock /ls/demo/master", "set /ls/demo/config = v2", "unlock /ls/demo/master"];
    let mut next_command = 0;

    for tick in 0..2_000 {
        for replica in replicas.values_mut() {
            replica.tick();
        }
        // Propose the next command to whoever is master, a few ticks apart.
        let master = replicas.values_mut().find(|r| r.is_master());
        if let Some(master) = master.filter(|_| tick % 5 == 0 && next_command < commands.len()) {
            let command = commands[next_command];
            if master.propose(Bytes::from_static(command.as_bytes())).is_ok() {
                println!("tick {tick}: replica {} (master) proposes {command:?}", master.id());
                next_command += 1;
            }
        }
        // Deliver everything in flight, and drive every replica's Ready,
        // until the cell is quiet for this tick.
        loop {
            let mut progressed = false;
            while let Some((from, to, message)) = network.pop_front() {
                if let Some(replica) = replicas.get_mut(&to) {
                    replica.step(from, message);
                }
                progressed = true;
            }
            for (&id, replica) in replicas.iter_mut() {
                if !replica.has_ready() {
                    continue;
                }
                progressed = true;
                let ready = replica.ready();
                // 1. Messages that may go now.
                for envelope in &ready.messages {
                    network.push_back((id, envelope.to, envelope.message.clone()));
                }
                // 2. Persist hard_state / entries / snapshot with one synced
                //    write. In memory here; the server uses RocksDB.
                // 3. Messages that waited for the write.
                for envelope in &ready.persisted_messages {
                    network.push_back((id, envelope.to, envelope.message.clone()));
                }
                for change in &ready.role_changes {
                    println!("tick {tick}: replica {id}: {change:?}");
                }
                // 4. Apply chosen entries in slot order.
                for entry in &ready.committed {
                    if let Value::Batch(batch) = &entry.value {
                        for command in batch {
                            let text = String::from_utf8_lossy(command).into_owned();
                            applied.entry(id).or_default().push((entry.slot, text));
                        }
                    }
                }
                // 5. Tell the replica the Ready is done.
                replica.advance(ready);
            }
            if !progressed {
                break;
            }
        }
        let done = applied.len() == members.len() && applied.values().all(|log| log.len() == commands.len());
        if done {
            break;
        }
    }

    println!();
    for (id, log) in &applied {
        let line: Vec<String> = log.iter().map(|(slot, command)| format!("{slot}:{command:?}")).collect();
        println!("replica {id} applied {}", line.join(", "));
    }
    let first = applied.values().next().cloned().unwrap_or_default();
    if applied.len() != members.len() || applied.values().any(|log| *log != first) || first.len() != commands.len() {
        return Err("replicas did not all apply the same commands in the same order".into());
    }
    println!("\nall {} replicas applied the same {} commands in the same slots", members.len(), first.len());
    Ok(())
}
