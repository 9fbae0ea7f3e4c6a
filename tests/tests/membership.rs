//! Membership change over real processes (issue 13):
//!
//! - a replica is SIGKILLed and its data directory wiped; a new replica (a
//!   new id, the dead one's addresses) is started with `gaios-server init
//!   --join` and `gaios member replace` puts it in the dead one's place,
//!   under a steady write load. The cell ends with five voters, no write
//!   fails, and every acknowledged write is on the new replica's disk (read
//!   back from its data directory after it is stopped);
//! - the refusals: removing a voter when the voters left would not make a
//!   reachable majority, changing while another change is in flight, and
//!   starting a replica that was removed.
//!
//! One cell at a time, like the other end-to-end tests.

#![allow(clippy::await_holding_lock)]

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gaios_client::membership::configuration;
use gaios_client::{Client, OpenOptions, Options};
use gaios_proto::cell::v1 as api;
use gaios_tests::*;
use tonic_types::StatusExt as _;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long `gaios member replace` may take here (the state is small).
const REPLACE_DEADLINE: Duration = Duration::from_secs(120);
/// Files the write load cycles over.
const LOAD_FILES: usize = 16;
/// The most writes the load makes, whatever happens.
const LOAD_WRITES_MAX: u64 = 20_000;
/// No write may take longer than this, retries included: about one
/// election and a failed-over call, far above a replacement's stall.
const WRITE_LATENCY_BOUND: Duration = Duration::from_secs(10);

fn client_addresses(members: &[Member]) -> Vec<String> {
    members.iter().map(|m| m.client.to_string()).collect()
}

/// Runs the `gaios` tool against `cell` and returns (exit code, stdout, stderr).
fn gaios(cell: &[String], args: &[&str], deadline: Duration) -> (i32, String, String) {
    let mut child = Command::new(binary("gaios"))
        .arg("--cell")
        .arg(cell.join(","))
        .args(args)
        .env_remove("GAIOS_CELL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gaios");
    let until = Instant::now() + deadline;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            panic!("gaios {args:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("gaios output");
    let ran = (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    eprintln!("gaios {args:?} -> {ran:?}");
    ran
}

/// The master's id, waiting for one agreed by the replicas at `indexes`.
async fn master_of(cell: &Cell, indexes: &[usize]) -> u64 {
    match wait_for_master(cell, indexes, FIRST_MASTER_DEADLINE).await {
        Some((master, _)) => master,
        None => panic!("no agreed master within {FIRST_MASTER_DEADLINE:?}\n{}", cell.logs()),
    }
}

/// What the write load did.
#[derive(Default)]
struct Load {
    /// Per file, the highest write number acknowledged.
    acknowledged: Vec<Option<u64>>,
    /// Per file, the highest write number attempted.
    attempted: Vec<Option<u64>>,
    /// (seconds since the load began, latency) of every acknowledged write.
    latencies: Vec<(f64, Duration)>,
    /// Writes that failed.
    failures: Vec<String>,
}

/// Writes `v<n>` to `/load/k<n % 16>` one after another until `stop`.
async fn write_load(addresses: Vec<String>, stop: Arc<AtomicBool>) -> Load {
    let options = Options { call_deadline: Duration::from_secs(30), client_name: "membership load".into(), ..Options::default() };
    let client = Client::connect(&addresses, options).await.expect("a session for the load");
    client.open("/load", OpenOptions::new().directory().create().event_mask(0)).await.expect("/load");
    let mut handles = Vec::new();
    for file in 0..LOAD_FILES {
        let path = format!("/load/k{file}");
        handles.push(client.open(&path, OpenOptions::new().create().event_mask(0)).await.expect("a load file"));
    }
    let mut load = Load { acknowledged: vec![None; LOAD_FILES], attempted: vec![None; LOAD_FILES], ..Load::default() };
    let began = Instant::now();
    for n in 0..LOAD_WRITES_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let file = (n % LOAD_FILES as u64) as usize;
        load.attempted[file] = Some(n);
        let started = Instant::now();
        match handles[file].set_contents(format!("v{n}"), None).await {
            Ok(_) => {
                load.acknowledged[file] = Some(n);
                load.latencies.push((began.elapsed().as_secs_f64(), started.elapsed()));
            }
            Err(error) => load.failures.push(format!("write {n}: {error}")),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    load
}

/// Writes about `mib` MiB of 256 KiB files under /fill.
async fn fill_state(addresses: Vec<String>, mib: usize) {
    let options = Options { call_deadline: Duration::from_secs(60), client_name: "membership fill".into(), ..Options::default() };
    let client = Client::connect(&addresses, options).await.expect("a session for the fill");
    client.open("/fill", OpenOptions::new().directory().create().event_mask(0)).await.expect("/fill");
    let block = vec![b'x'; 256 << 10];
    for file in 0..mib * 4 {
        let options = OpenOptions::new().create().event_mask(0).contents(block.clone());
        let handle = client.open(&format!("/fill/f{file}"), options).await.expect("a fill file");
        let _ = handle.close().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
}

fn percentile(mut latencies: Vec<Duration>, fraction: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let index = ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[index]
}

/// The applied state in a stopped replica's data directory: its snapshot
/// and every chosen command after it, applied as its driver would.
fn state_on_disk(cell: &Cell, id: u64) -> gaios_state::machine::StateMachine {
    use gaios_paxos::Value;
    use gaios_server::replica::storage::{Identity, Storage};
    use prost::Message as _;
    let identity = Identity { cell_id: CELL_ID.to_string(), replica_id: id };
    let storage = Storage::open(&cell.data_dir(id), &identity).expect("open the replica's data directory");
    let durable = storage.load().expect("load the replica's data directory");
    let (mut state, from) = match &durable.snapshot {
        Some(snapshot) => (gaios_state::machine::StateMachine::restore(&snapshot.data).expect("restore"), snapshot.slot),
        None => (gaios_state::machine::StateMachine::new(), 0),
    };
    let mut entries = durable.entries;
    entries.sort_by_key(|entry| entry.slot);
    for entry in entries.iter().filter(|e| e.slot > from && e.slot <= durable.hard_state.chosen_through) {
        if let Value::Batch(commands) = &entry.value {
            for bytes in commands {
                if let Ok(command) = gaios_proto::state::v1::Command::decode(bytes.as_ref()) {
                    let _ = state.apply(&command);
                }
            }
        }
    }
    state
}

#[test]
fn a_wiped_replica_is_replaced_under_load_without_losing_a_write() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    // A soak, not CI: GAIOS_REPLACE_STATE_MIB=N fills the state with about
    // N MiB first (at most 480: the state limit is 512 MiB), to time a
    // replacement that must move that much.
    let state_mib: usize = std::env::var("GAIOS_REPLACE_STATE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(0).min(480);
    // Snapshots often enough that the master's log is compacted past what
    // the newcomer needs: it must be sent a snapshot (streamed in chunks).
    let snapshot_every = if state_mib > 0 { "500" } else { "200" };
    let mut cell = Cell::start_with(&["--snapshot-every-slots", snapshot_every]);
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let master = runtime.block_on(master_of(&cell, &all));
    if state_mib > 0 {
        let began = Instant::now();
        runtime.block_on(fill_state(client_addresses(&cell.members), state_mib));
        println!("filled the state with {state_mib} MiB in {:?}", began.elapsed());
    }

    // The write load, on every founding address (the client learns the
    // new member's from Status).
    let stop = Arc::new(AtomicBool::new(false));
    let load_began = Instant::now();
    let load = runtime.spawn(write_load(client_addresses(&cell.members), stop.clone()));
    std::thread::sleep(Duration::from_secs(3));
    // The master has compacted its log at least once, so the newcomer
    // needs a snapshot.
    let until = Instant::now() + Duration::from_secs(60);
    while !runtime.block_on(statuses(&cell, &all)).iter().any(|s| s.role() == api::Role::Master && s.snapshot_slot > 0) {
        assert!(Instant::now() < until, "the master took no snapshot\n{}", cell.logs());
        std::thread::sleep(POLL_INTERVAL);
    }

    // A follower dies for good: SIGKILL, data directory wiped.
    let victim = cell.members.iter().map(|m| m.id).find(|&id| id != master).expect("a follower");
    let victim_index = cell.index_of(victim);
    let victim_member = cell.members[victim_index];
    cell.kill(victim_index);
    std::fs::remove_dir_all(cell.data_dir(victim)).expect("wipe the data directory");
    let replace_began = Instant::now();
    let replace_from = load_began.elapsed().as_secs_f64();

    // Its replacement: a new id, on the same machine (addresses).
    let alive: Vec<Member> = cell.members.iter().copied().filter(|m| m.id != victim).collect();
    let alive_clients = client_addresses(&alive);
    let config = runtime.block_on(configuration(&alive_clients, None)).expect("the configuration");
    let new_id = config.highest_member_id + 1;
    let newcomer = Member { id: new_id, ..victim_member };
    // It is told of one member only: it learns the others (and their
    // addresses) from the log.
    let new_index = cell.join(newcomer, &alive[..1]);
    let (code, stdout, stderr) = gaios(
        &alive_clients,
        &[
            "member",
            "replace",
            &victim.to_string(),
            "--id",
            &new_id.to_string(),
            "--peer",
            &newcomer.peer.to_string(),
            "--client",
            &newcomer.client.to_string(),
            "--timeout-ms",
            &REPLACE_DEADLINE.as_millis().to_string(),
        ],
        REPLACE_DEADLINE + Duration::from_secs(10),
    );
    let replace_took = replace_began.elapsed();
    assert_eq!(code, 0, "gaios member replace failed: {stdout} {stderr}\n{}", cell.logs());

    // Five voters, the new one among them and the dead one gone.
    let (code, stdout, _) = gaios(&alive_clients, &["--json", "member", "list"], Duration::from_secs(30));
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&stdout).expect("member list --json");
    let mut voters: Vec<u64> = listed["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == serde_json::Value::Bool(true))
        .filter_map(|m| m["id"].as_u64())
        .collect();
    voters.sort_unstable();
    let mut expected: Vec<u64> = alive.iter().map(|m| m.id).chain([new_id]).collect();
    expected.sort_unstable();
    assert_eq!(voters, expected, "five voters: the four survivors and the newcomer");

    // A little more load after the change, then stop.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let load = runtime.block_on(load).expect("the load task");
    assert!(load.failures.is_empty(), "writes failed during the replacement: {:?}", load.failures);
    let acknowledged: usize = load.latencies.len();
    assert!(acknowledged > 100, "the load wrote too little to mean anything: {acknowledged}");
    let worst = load.latencies.iter().map(|(_, latency)| *latency).max().unwrap_or_default();
    assert!(worst < WRITE_LATENCY_BOUND, "a write took {worst:?}, more than about one election");

    // The newcomer has applied what the master applied: stop it and read
    // its disk.
    let indexes: Vec<usize> = (0..cell.members.len()).filter(|&i| i != victim_index).collect();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let statuses = runtime.block_on(statuses(&cell, &indexes));
        let master_applied = statuses.iter().find(|s| s.role() == api::Role::Master).map(|s| s.applied);
        let newcomer_applied = statuses.iter().find(|s| s.id == new_id).map(|s| s.applied);
        if let (Some(master_applied), Some(newcomer_applied)) = (master_applied, newcomer_applied)
            && newcomer_applied >= master_applied
        {
            break;
        }
        assert!(Instant::now() < until, "the newcomer did not catch up with the master\n{}", cell.logs());
        std::thread::sleep(POLL_INTERVAL);
    }
    cell.kill(new_index);
    let log = std::fs::read_to_string(cell.log_path(new_id)).expect("the newcomer's log");
    assert!(log.contains("installed a snapshot from another replica"), "the newcomer caught up without a snapshot:\n{}", cell.logs());
    if state_mib > 0 {
        // Turns of any replica's driver that took 100 ms or more (taking
        // and installing snapshots must not make them).
        for line in cell.logs().lines().filter(|line| line.contains("slow driver turn") || line.contains("took a snapshot") || line.contains("became master")) {
            println!("{line}");
        }
        // Where the soak's time went, on the newcomer.
        for line in log.lines().filter(|line| line.contains("snapshot") || line.contains("driver started")) {
            println!("newcomer: {line}");
        }
    }
    let state = state_on_disk(&cell, new_id);
    for file in 0..LOAD_FILES {
        let Some(acked) = load.acknowledged[file] else { continue };
        let path = gaios_state::namespace::Path::parse(&format!("/load/k{file}")).expect("a path");
        let (contents, _) = state.namespace().get_contents_and_stat(&path, None).expect("the file is on the newcomer's disk");
        let text = String::from_utf8_lossy(&contents);
        let found: u64 = text.trim_start_matches('v').parse().unwrap_or_else(|_| panic!("odd contents {text:?}"));
        let attempted = load.attempted[file].unwrap_or(acked);
        assert!(
            found >= acked && found <= attempted,
            "/load/k{file} holds v{found} on the newcomer, but v{acked} was acknowledged (v{attempted} attempted)"
        );
    }

    let before: Vec<Duration> = load
        .latencies
        .iter()
        .filter(|(at, _)| *at < replace_from)
        .map(|(_, latency)| *latency)
        .collect();
    let during: Vec<Duration> = load
        .latencies
        .iter()
        .filter(|(at, _)| *at >= replace_from && *at < replace_from + replace_took.as_secs_f64())
        .map(|(_, latency)| *latency)
        .collect();
    println!(
        "replaced replica {victim} by {new_id} in {replace_took:?}; {acknowledged} writes acknowledged, none failed; \
         write p99 before {:?} ({} writes), during the replacement {:?} ({} writes), worst {worst:?}",
        percentile(before.clone(), 0.99),
        before.len(),
        percentile(during.clone(), 0.99),
        during.len(),
    );
}

#[test]
fn the_master_refuses_unsafe_changes_and_a_removed_replica_never_starts_again() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let mut cell = Cell::start();
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let master = runtime.block_on(master_of(&cell, &all));
    let cell_addresses = client_addresses(&cell.members);
    let others: Vec<u64> = cell.members.iter().map(|m| m.id).filter(|&id| id != master).collect();

    // 1. Two voters stopped (SIGSTOP): removing a third live one would
    // leave the master and one other of four voters reachable.
    for &id in &others[..2] {
        cell.signal(cell.index_of(id), libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (code, _, stderr) =
        gaios(&cell_addresses, &["member", "remove", &others[2].to_string(), "--timeout-ms", "20000"], Duration::from_secs(60));
    assert_eq!(
        code,
        4,
        "removing a voter must be refused when the rest would not make a reachable majority: {stderr}\n{}",
        cell.logs()
    );
    assert!(stderr.contains("reachable"), "the refusal says why: {stderr}");

    // 2. With a third voter stopped the cell has no quorum: a forced change
    // stays in flight (until the master notices it lost its quorum), and
    // another change meanwhile is refused. Both go straight to the master.
    let master_address = cell.members[cell.index_of(master)].client;
    let config = runtime.block_on(configuration(&cell_addresses, None)).expect("the configuration");
    let learner = api::ChangeMembershipRequest {
        change: Some(api::change_membership_request::Change::AddLearner(api::change_membership_request::AddLearner {
            id: config.highest_member_id + 1,
            peer_address: "127.0.0.1:9".into(),
            client_address: "127.0.0.1:9".into(),
            incarnation: 7,
        })),
        force: true,
    };
    let remove = api::ChangeMembershipRequest {
        change: Some(api::change_membership_request::Change::Remove(others[3])),
        force: true,
    };
    let connect = || async move {
        api::cell_client::CellClient::connect(format!("http://{master_address}")).await.expect("connect to the master")
    };
    let mut first = runtime.block_on(connect());
    let mut second = runtime.block_on(connect());
    cell.signal(cell.index_of(others[2]), libc::SIGSTOP);
    let stuck = runtime.spawn(async move { first.change_membership(learner).await });
    std::thread::sleep(Duration::from_millis(100));
    let refused = runtime.block_on(second.change_membership(remove));
    match refused {
        Err(status) => {
            let info = status.get_error_details().error_info().cloned();
            assert_eq!(
                info.map(|info| info.reason),
                Some("CHANGE_IN_FLIGHT".to_string()),
                "a second change while one is in flight: {status:?}"
            );
        }
        Ok(answer) => panic!("a second change was made while one was in flight: {answer:?}"),
    }
    // The stuck change's fate is unknown to its caller once the master gave
    // up its quorum: UNAVAILABLE, to be read back from the configuration.
    match runtime.block_on(stuck) {
        Ok(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "the stuck change: {status:?}"),
        other => panic!("a change without a quorum must not be answered as made: {other:?}"),
    }
    for &id in &others[..3] {
        cell.signal(cell.index_of(id), libc::SIGCONT);
    }
    let master = runtime.block_on(master_of(&cell, &all));

    // The forced learner may have been chosen after all; it never runs.
    let config = runtime.block_on(configuration(&cell_addresses, None)).expect("the configuration");
    for member in config.members.iter().filter(|m| !m.voter) {
        let (code, _, stderr) = gaios(&cell_addresses, &["member", "remove", &member.id.to_string()], Duration::from_secs(60));
        assert_eq!(code, 0, "remove the learner that never ran: {stderr}");
    }

    // 3. A live follower is removed: it stops by itself, and its data
    // directory refuses to start again.
    let removed = cell.members.iter().map(|m| m.id).find(|&id| id != master).expect("a follower");
    let removed_index = cell.index_of(removed);
    let (code, _, stderr) = gaios(&cell_addresses, &["member", "remove", &removed.to_string()], Duration::from_secs(60));
    assert_eq!(code, 0, "remove a live follower: {stderr}");
    let exit = cell.wait_exit(removed_index, Duration::from_secs(20));
    assert!(exit.is_some_and(|status| !status.success()), "the removed replica must stop by itself: {exit:?}\n{}", cell.logs());
    cell.restart(removed_index);
    let exit = cell.wait_exit(removed_index, Duration::from_secs(20));
    assert!(exit.is_some_and(|status| !status.success()), "a removed replica must refuse to start: {exit:?}");
    let log = std::fs::read_to_string(cell.log_path(removed)).unwrap_or_default();
    assert!(log.contains("was removed from its cell"), "the refusal says why:\n{log}");

    // The cell goes on with four voters.
    let config = runtime.block_on(configuration(&cell_addresses, None)).expect("the configuration");
    assert_eq!(config.members.iter().filter(|m| m.voter).count(), 4);

    // 4. A replacement interrupted after its first step (here: the learner
    // added, not promoted) is resumed by running `replace` again: it skips
    // what is done.
    let master = runtime.block_on(master_of(&cell, &[0, 1, 2, 3, 4].into_iter().filter(|&i| i != removed_index).collect::<Vec<_>>()));
    let old = cell.members.iter().map(|m| m.id).find(|&id| id != master && id != removed).expect("a follower");
    let spare = Cell::free_members()[0];
    let newcomer = Member { id: config.highest_member_id + 1, ..spare };
    let contacts: Vec<Member> = cell.members.iter().copied().filter(|m| m.id != removed).take(1).collect();
    cell.join(newcomer, &contacts);
    let new_flags = ["--id".to_string(), newcomer.id.to_string(), "--peer".into(), newcomer.peer.to_string(), "--client".into(), newcomer.client.to_string()];
    let new_flags: Vec<&str> = new_flags.iter().map(String::as_str).collect();
    let (code, _, stderr) = gaios(&cell_addresses, &[&["member", "add", "--no-promote"], new_flags.as_slice()].concat(), Duration::from_secs(60));
    assert_eq!(code, 0, "add a learner: {stderr}");
    let config = runtime.block_on(configuration(&cell_addresses, None)).expect("the configuration");
    assert!(config.members.iter().any(|m| m.id == newcomer.id && !m.voter), "a learner after add --no-promote");
    let old_text = old.to_string();
    let (code, _, stderr) =
        gaios(&cell_addresses, &[&["member", "replace", old_text.as_str()], new_flags.as_slice()].concat(), Duration::from_secs(90));
    assert_eq!(code, 0, "the resumed replace: {stderr}\n{}", cell.logs());
    let config = runtime.block_on(configuration(&cell_addresses, None)).expect("the configuration");
    let voters: Vec<u64> = config.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    assert!(voters.contains(&newcomer.id) && !voters.contains(&old) && voters.len() == 4, "after the resumed replace: {voters:?}");
}
