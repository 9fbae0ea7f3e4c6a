//! Five real `gaios-server` processes on loopback elect a master, survive
//! the master's SIGKILL, and take the killed replica back.
//!
//! The test polls every replica's `Cell.Status` over gRPC. It waits until
//! exactly one replica reports itself master and every other agrees; kills
//! that process with SIGKILL; waits until a different replica is master (the
//! only wall-clock assertion: a liveness deadline); restarts the killed
//! replica on its data directory and waits until it follows the new master
//! and its chosen prefix reaches the master's.
//!
//! Each replica's log goes to `replica-<id>.log` in the test's temporary
//! directory; a failure prints their tails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gaios_proto::cell::v1::cell_client::CellClient;
use gaios_proto::cell::v1::{Role, StatusRequest, StatusResponse};

const REPLICAS: u64 = 5;
/// How long the cell may take to elect its first master.
const FIRST_MASTER_DEADLINE: Duration = Duration::from_secs(20);
/// How long the cell may take to elect a new master after a SIGKILL.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a restarted replica may take to rejoin and catch up.
const REJOIN_DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const RPC_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
struct Member {
    id: u64,
    peer: SocketAddr,
    client: SocketAddr,
}

/// The five processes; dropping it kills every child still running and
/// reaps it, so a failing test leaves nothing behind.
struct Cell {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    children: Vec<Option<Child>>,
}

impl Cell {
    fn start() -> Cell {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        // Bind port 0 to find free ports, then release them for the replicas.
        let listeners: Vec<TcpListener> =
            (0..REPLICAS * 2).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().expect("local address")).collect();
        drop(listeners);
        let members = (0..REPLICAS as usize)
            .map(|i| Member { id: i as u64 + 1, peer: addresses[2 * i], client: addresses[2 * i + 1] })
            .collect();
        let mut cell = Cell { dir, members, children: Vec::new() };
        for index in 0..REPLICAS as usize {
            let child = cell.spawn(index);
            cell.children.push(Some(child));
        }
        cell
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}.log"))
    }

    fn spawn(&self, index: usize) -> Child {
        let me = self.members[index];
        let data_dir = self.dir.path().join(format!("data-{}", me.id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(me.id))
            .expect("open the replica's log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gaios-server"));
        command
            .arg("--id")
            .arg(me.id.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--cell-id")
            .arg("test-cell");
        for member in &self.members {
            command.arg("--peer").arg(format!("{}={}={}", member.id, member.peer, member.client));
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("clone the log file handle"));
        command.spawn().expect("start gaios-server")
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn restart(&mut self, index: usize) {
        assert!(self.children[index].is_none(), "replica {index} is still running");
        let child = self.spawn(index);
        self.children[index] = Some(child);
    }

    /// The tails of every replica's log, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for member in &self.members {
            let text = std::fs::read_to_string(self.log_path(member.id)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!("--- replica {} ---\n{}\n", member.id, tail.join("\n")));
        }
        out
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
        }
        // Reap, but never hang the test on a child that will not die.
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.iter_mut().flatten() {
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// One replica's Status, or `None` if it does not answer in time.
async fn status(address: SocketAddr) -> Option<StatusResponse> {
    let call = async {
        let mut client = CellClient::connect(format!("http://{address}")).await.ok()?;
        client.status(StatusRequest {}).await.ok().map(tonic::Response::into_inner)
    };
    tokio::time::timeout(RPC_TIMEOUT, call).await.ok().flatten()
}

/// The statuses of the replicas at `indexes` that answered.
async fn statuses(cell: &Cell, indexes: &[usize]) -> Vec<StatusResponse> {
    let mut out = Vec::new();
    for &index in indexes {
        if let Some(status) = status(cell.members[index].client).await {
            out.push(status);
        }
    }
    out
}

/// The master's id if every replica at `indexes` answered, exactly one says
/// it is master, and all the others name it.
fn agreed_master(statuses: &[StatusResponse], expected: usize) -> Option<u64> {
    if statuses.len() != expected {
        return None;
    }
    let masters: Vec<&StatusResponse> = statuses.iter().filter(|s| s.role() == Role::Master).collect();
    let [master] = masters.as_slice() else { return None };
    statuses.iter().all(|s| s.master_id == master.id).then_some(master.id)
}

async fn wait_for_master(cell: &Cell, indexes: &[usize], deadline: Duration) -> Option<(u64, Vec<StatusResponse>)> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let now = statuses(cell, indexes).await;
        if let Some(master) = agreed_master(&now, indexes.len()) {
            return Some((master, now));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}

fn data_dir_exists(path: &Path) -> bool {
    path.read_dir().map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_elects_fails_over_and_rejoins() {
    let mut cell = Cell::start();
    let all: Vec<usize> = (0..REPLICAS as usize).collect();

    let Some((first_master, first)) = wait_for_master(&cell, &all, FIRST_MASTER_DEADLINE).await else {
        panic!("no agreed master within {FIRST_MASTER_DEADLINE:?}\n{}", cell.logs());
    };
    for status in &first {
        assert_eq!(status.members.len(), REPLICAS as usize, "replica {} lists the members", status.id);
        assert_eq!(status.cell_id, "test-cell");
    }
    let master_status = first.iter().find(|s| s.id == first_master).expect("the master answered");
    assert!(master_status.own_ballot.is_some(), "the master reports its ballot");

    // SIGKILL the master; the four others must elect another one.
    let killed = all.iter().copied().find(|&i| cell.members[i].id == first_master).expect("master is a member");
    cell.kill(killed);
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != killed).collect();
    let Some((second_master, _)) = wait_for_master(&cell, &survivors, FAILOVER_DEADLINE).await else {
        panic!("no new master within {FAILOVER_DEADLINE:?} after killing replica {first_master}\n{}", cell.logs());
    };
    assert_ne!(second_master, first_master, "a killed replica cannot be master");

    // Restart the killed replica on its data; it must follow the master the
    // others follow and catch up with its chosen prefix.
    assert!(data_dir_exists(&cell.dir.path().join(format!("data-{first_master}"))));
    cell.restart(killed);
    let until = Instant::now() + REJOIN_DEADLINE;
    let mut last = None;
    let rejoined = loop {
        let now = statuses(&cell, &all).await;
        // Every replica, the restarted one included, names one master (the
        // cell may in principle have moved on from `second_master`).
        if let Some(master_id) = agreed_master(&now, all.len()) {
            let master = now.iter().find(|s| s.id == master_id);
            let restarted = now.iter().find(|s| s.id == first_master);
            if let (Some(master), Some(restarted)) = (master, restarted) {
                if restarted.chosen_through >= master.chosen_through {
                    break true;
                }
            }
        }
        last = Some(now);
        if Instant::now() >= until {
            break false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert!(
        rejoined,
        "replica {first_master} did not rejoin (master was {second_master}) within {REJOIN_DEADLINE:?}; last statuses: {last:?}\n{}",
        cell.logs()
    );
}
