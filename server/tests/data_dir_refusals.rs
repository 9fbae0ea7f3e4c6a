//! A replica refuses to start on a data directory that is not its own, and
//! the other four keep serving: five real `gaios-server` processes.
//!
//! A follower is stopped and started again, each time on something other
//! than the directory `init` made for it with the flags it was given:
//! another `--cell-id`, another `--id`, another address for a member, then
//! its directory deleted, then its directory emptied (as a replaced disk or
//! a failed mount would leave it). Every start must exit non-zero with an
//! error that says why and what to do, must leave the directory as it was
//! (a deleted one is not re-created), and writes to the cell must still be
//! acknowledged by the four others. Finally every acknowledged write is read
//! back.
//!
//! The only wall-clock bounds are liveness deadlines: a refused start must
//! exit within [`REFUSAL_DEADLINE`].

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use gaios_tests::*;

/// How long a refused start may take to exit.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(20);

/// Runs `gaios-server` with `args` until it exits or the deadline passes
/// (then kills it); returns its exit status (`None` if it had to be killed)
/// and what it wrote to stderr.
fn run_to_exit(cell: &Cell, name: &str, args: &[String]) -> (Option<ExitStatus>, String) {
    let log_path = cell.dir.path().join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).expect("create the log file");
    let mut child = Command::new(binary("gaios-server"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gaios-server");
    let until = Instant::now() + REFUSAL_DEADLINE;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log_path).unwrap_or_default())
}

/// `args` with the value of `flag` (the first one after it) replaced.
fn with_flag(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args.iter().position(|arg| arg == flag).expect("the flag is given");
    args[at + 1] = value.to_owned();
    args
}

/// The names of the files in `dir`, sorted, or `None` if it is missing.
fn names(dir: &Path) -> Option<Vec<std::ffi::OsString>> {
    let mut names: Vec<_> = std::fs::read_dir(dir).ok()?.map(|entry| entry.expect("a directory entry").file_name()).collect();
    names.sort();
    Some(names)
}

/// Asserts that a start exited non-zero and said each of `needles`.
fn assert_refused(what: &str, status: Option<ExitStatus>, output: &str, needles: &[&str]) {
    let Some(status) = status else {
        panic!("{what}: the replica did not exit within {REFUSAL_DEADLINE:?}; it ran. Its output:\n{output}");
    };
    assert!(!status.success(), "{what}: exited successfully:\n{output}");
    for needle in needles {
        assert!(output.contains(needle), "{what}: {needle:?} is not in the error:\n{output}");
    }
}

/// Writes one file with ever-new request numbers.
struct Writer {
    client: Client,
    session: Session,
    handle: u64,
    request_number: u64,
}

impl Writer {
    async fn write(&mut self, contents: &str) {
        self.request_number += 1;
        self.client
            .set_contents(&self.session, self.request_number, self.handle, contents.as_bytes())
            .await
            .unwrap_or_else(|status| panic!("write {contents:?} was not acknowledged: {status:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_a_data_directory_that_is_not_its_own_and_the_cell_keeps_serving() {
    let mut cell = Cell::start();
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let Some((master, _)) = wait_for_master(&cell, &all, FIRST_MASTER_DEADLINE).await else {
        panic!("no agreed master within {FIRST_MASTER_DEADLINE:?}\n{}", cell.logs());
    };
    let mut client = cell.client();
    let session = client.create_session().await;
    let _keep_alive = KeepAlive::start(&cell, &session);
    let handle = client.open_file(&session, 1, "/written").await;
    let mut writer = Writer { client, session: session.clone(), handle, request_number: 1 };
    writer.write("before").await;

    // A follower, stopped; its directory is intact.
    let index = all.iter().copied().find(|&i| cell.members[i].id != master).expect("a follower");
    let id = cell.members[index].id;
    let data_dir = cell.data_dir(id);
    cell.kill(index);
    let intact = names(&data_dir).expect("the follower's directory exists");
    let args = cell.replica_args(index);

    let (status, output) = run_to_exit(&cell, "other-cell", &with_flag(&args, "--cell-id", "other-cell"));
    assert_refused("another --cell-id", status, &output, &["other-cell", CELL_ID]);
    let other_id = cell.members[(index + 1) % REPLICAS as usize].id;
    let (status, output) = run_to_exit(&cell, "other-id", &with_flag(&args, "--id", &other_id.to_string()));
    assert_refused("another --id", status, &output, &[&format!("replica {id}"), &format!("replica {other_id}")]);
    // Member `other_id` at another client address than `init` recorded.
    let moved = format!("--peer={other_id}=127.0.0.1:9=127.0.0.1:10");
    let mut other_members: Vec<String> = Vec::new();
    let mut skip = false;
    for (at, arg) in args.iter().enumerate() {
        if skip {
            skip = false;
            continue;
        }
        if arg == "--peer" && args[at + 1].starts_with(&format!("{other_id}=")) {
            other_members.push(moved.clone());
            skip = true;
        } else {
            other_members.push(arg.clone());
        }
    }
    let (status, output) = run_to_exit(&cell, "other-members", &other_members);
    assert_refused("another member address", status, &output, &[&format!("member {other_id}"), "127.0.0.1:9"]);
    assert_eq!(names(&data_dir).as_ref(), Some(&intact), "a refused start changed the directory");
    writer.write("after refused flags").await;

    // Its directory deleted: the start refuses and creates nothing.
    std::fs::remove_dir_all(&data_dir).expect("delete the follower's directory");
    cell.restart(index);
    let status = cell.wait_exit(index, REFUSAL_DEADLINE);
    let log = std::fs::read_to_string(cell.log_path(id)).unwrap_or_default();
    assert_refused("a deleted directory", status, &log, &["does not exist", "gaios-server init", "do NOT", "membership change"]);
    assert!(!data_dir.exists(), "a plain start re-created the deleted directory");
    writer.write("after a deleted directory").await;

    // Its directory emptied (a new disk, a failed mount).
    std::fs::create_dir(&data_dir).expect("create an empty directory");
    cell.restart(index);
    let status = cell.wait_exit(index, REFUSAL_DEADLINE);
    let log = std::fs::read_to_string(cell.log_path(id)).unwrap_or_default();
    assert_refused("an empty directory", status, &log, &["is empty", "gaios-server init", "do NOT"]);
    assert_eq!(names(&data_dir), Some(Vec::new()), "a plain start wrote into the empty directory");
    writer.write("after an empty directory").await;

    let read = writer.client.contents(&session, handle).await.expect("read back");
    assert_eq!(read.contents.as_ref(), b"after an empty directory");
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != index).collect();
    assert!(
        wait_for_master(&cell, &survivors, FAILOVER_DEADLINE).await.is_some(),
        "the four others no longer agree on a master\n{}",
        cell.logs()
    );
}
