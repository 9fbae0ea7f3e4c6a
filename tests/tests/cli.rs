//! The `gaios` command-line tool against a real five-process cell: every
//! command with and without `--json` and its exit codes, `gaios lock`
//! running commands one at a time, `gaios lock` and `gaios elect` stopping
//! their command when the session enters jeopardy (and keeping it with
//! `--keep-through-jeopardy`), and `gaios elect` failing over to the other
//! candidate, after the lock-delay, when the leader's process is SIGKILLed.
//!
//! The tool runs as a child process (`std::process::Command`), as a user
//! would run it. Every child has a deadline and is killed (with its
//! process group) if it overruns; the tests run one at a time so elections
//! and leases are not starved of the machine's cores.

// One cell at a time: the guard is held for the whole test on purpose.
#![allow(clippy::await_holding_lock)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gaios_tests::*;
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long one short invocation of the tool may take.
const INVOCATION_DEADLINE: Duration = Duration::from_secs(60);

/// Starts a cell with `flags` and waits for its first master.
fn start_cell(flags: &[&str]) -> Cell {
    let cell = Cell::start_with(flags);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    if runtime.block_on(wait_for_master(&cell, &all, FIRST_MASTER_DEADLINE)).is_none() {
        panic!("no agreed master within {FIRST_MASTER_DEADLINE:?}\n{}", cell.logs());
    }
    cell
}

fn cell_flag(cell: &Cell) -> String {
    cell.members.iter().map(|m| m.client.to_string()).collect::<Vec<_>>().join(",")
}

/// `gaios --cell <cell> --deadline-ms 20000 <args>`, not yet started.
fn gaios(cell: &Cell, args: &[&str]) -> Command {
    let mut command = Command::new(binary("gaios"));
    command.arg("--cell").arg(cell_flag(cell)).args(["--deadline-ms", "20000"]).args(args);
    // A developer's shell may hold `scripts/cell`'s exports.
    for variable in ["GAIOS_CELL", "GAIOS_CACERT", "GAIOS_CERT", "GAIOS_KEY"] {
        command.env_remove(variable);
    }
    // Its own process group, so a guard can kill it with its CMD.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

/// What one invocation did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not one JSON value ({e}): {self:?}"))
    }
}

/// Runs `gaios <args>` with `stdin`, waits at most [`INVOCATION_DEADLINE`].
fn run_with_stdin(cell: &Cell, args: &[&str], stdin: &[u8]) -> Ran {
    let mut command = gaios(cell, args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start gaios");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(INVOCATION_DEADLINE) {
        Ok(output) => output.expect("wait for gaios"),
        Err(_) => {
            kill_group(pid);
            panic!("gaios {args:?} did not finish within {INVOCATION_DEADLINE:?}\n{}", cell.logs());
        }
    };
    let ran = Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("gaios {args:?} -> {} {:?} {:?}", ran.code, ran.stdout, ran.stderr);
    ran
}

fn run(cell: &Cell, args: &[&str]) -> Ran {
    run_with_stdin(cell, args, b"")
}

/// Runs `gaios <args>` and requires exit code `code`.
fn expect(cell: &Cell, args: &[&str], code: i32) -> Ran {
    let ran = run(cell, args);
    assert_eq!(ran.code, code, "gaios {args:?}: {ran:?}");
    if code != 0 {
        assert!(ran.stderr.starts_with("gaios: ") || code == 2, "an error message on stderr: {ran:?}");
    }
    ran
}

/// Runs `gaios lock|elect ...` whose CMD exits with `code` (no message).
fn expect_cmd_status(cell: &Cell, args: &[&str], code: i32) -> Ran {
    let ran = run(cell, args);
    assert_eq!(ran.code, code, "gaios {args:?}: {ran:?}");
    assert_eq!(ran.stderr, "", "gaios {args:?} says nothing of its own");
    ran
}

/// SIGKILLs a process group (a gaios process and its CMD).
fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // `kill(2)` through libc, on a process group the test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// Children started in the background; dropping it kills each one's
/// process group (the CMDs too) and reaps them.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn spawn(&mut self, mut command: Command) -> usize {
        self.0.push(command.spawn().expect("start gaios"));
        self.0.len() - 1
    }

    /// SIGKILLs the gaios process `index` alone (its CMD keeps running).
    fn kill_only(&mut self, index: usize) {
        let _ = self.0[index].kill();
        let _ = self.0[index].wait();
    }

    /// Waits for `index` to exit, at most `deadline`.
    fn wait(&mut self, index: usize, deadline: Duration) -> Option<i32> {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.0[index].try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}

/// Lines from a child's pipe, read by a thread.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle` (at most 30 s).
fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no line containing {needle:?} within 30 s");
}

/// Reads exactly `count` lines (at most 30 s).
fn read_lines(lines: &mpsc::Receiver<String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("line {i} of {count} within 30 s")))
        .collect()
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos()
}

fn read_to_string(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `gaios status` shows everything the retired `gaios-status` showed: per
/// replica its id, role, master, chosen and applied slots, master lease and
/// incarnation (checked against the replicas' own `Status` answers), and
/// `--wait-ms` waits for an agreed master or exits 5.
fn status_shows_what_gaios_status_showed(cell: &Cell) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let truth = runtime.block_on(statuses(cell, &all));
    assert_eq!(truth.len(), REPLICAS as usize, "every replica answers the harness");
    let incarnation_of = |id: u64| format!("{:016x}", truth.iter().find(|s| s.id == id).expect("a replica").incarnation);

    let waited = expect(cell, &["--json", "status", "--wait-ms", "20000"], 0).json();
    let rows = waited.as_array().expect("an array");
    assert_eq!(rows.len(), REPLICAS as usize, "{waited}");
    for row in rows {
        let id = row["id"].as_u64().expect("an id");
        assert_eq!(row["incarnation"], incarnation_of(id), "{row}");
        assert!(["master", "follower", "candidate"].contains(&row["role"].as_str().expect("a role")), "{row}");
        assert!(row["applied"].is_u64() && row["chosen_through"].is_u64() && row["lease_remaining_ms"].is_u64(), "{row}");
        assert!(row["promised"]["round"].is_u64(), "{row}");
    }
    let master = rows.iter().find(|row| row["role"] == "master").expect("a master");
    assert!(master["master_address"].as_str().is_some_and(|address| !address.is_empty()), "{master}");

    let table = expect(cell, &["status", "--wait-ms", "20000"], 0);
    let mut lines = table.stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    for column in ["ID", "ADDRESS", "ROLE", "MASTER", "BALLOT", "CHOSEN", "APPLIED", "LEASE_MS", "INCARNATION"] {
        assert!(header.contains(&column), "{column} in {header:?}");
    }
    let column = |name: &str| header.iter().position(|h| *h == name).expect("a column");
    for line in lines {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), header.len(), "{line}");
        let id: u64 = cells[column("ID")].parse().expect("an id");
        assert_eq!(cells[column("INCARNATION")], incarnation_of(id), "{line}");
        assert!(cells[column("APPLIED")].parse::<u64>().is_ok(), "{line}");
    }

    // An address where nobody answers: --wait-ms gives up with 5 (each
    // round is bounded by the client's one-second connect timeout).
    let mut command = Command::new(binary("gaios"));
    command.args(["--cell", "127.0.0.1:1", "status", "--wait-ms", "500"]).env_remove("GAIOS_CELL");
    let output = command.output().expect("run gaios status");
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("no answer"), "{output:?}");
}

#[test]
fn every_command_with_and_without_json() {
    let _serial = serial();
    let cell = start_cell(&[]);
    let started = Instant::now();

    // status: a table with a row per replica, one master; JSON array.
    let table = expect(&cell, &["status"], 0);
    assert_eq!(table.stdout.lines().count(), 1 + REPLICAS as usize, "{table:?}");
    assert!(table.stdout.lines().next().is_some_and(|header| header.starts_with("ID")), "{table:?}");
    assert_eq!(table.stdout.lines().filter(|line| line.contains(" master ")).count(), 1, "{table:?}");
    let status = expect(&cell, &["--json", "status"], 0).json();
    let rows = status.as_array().expect("an array");
    assert_eq!(rows.len(), REPLICAS as usize);
    assert!(rows.iter().all(|row| row["answered"] == true && row["chosen_through"].is_u64() && row["sessions"].is_u64()));
    let mut ids: Vec<u64> = rows.iter().map(|row| row["id"].as_u64().expect("an id")).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=REPLICAS).collect::<Vec<_>>());
    assert_eq!(rows.iter().filter(|row| row["role"] == "master").count(), 1, "{status}");
    let master = rows.iter().find(|row| row["role"] == "master").expect("a master")["id"].clone();
    assert!(rows.iter().all(|row| row["master_id"] == master), "{status}");
    status_shows_what_gaios_status_showed(&cell);

    // mkdir, -p, already exists.
    expect(&cell, &["mkdir", "/d"], 0);
    expect(&cell, &["mkdir", "/d"], 7);
    let made = expect(&cell, &["--json", "mkdir", "/j"], 0).json();
    assert_eq!(made["created"], true);
    expect(&cell, &["mkdir", "-p", "/d/e/f"], 0);
    let again = expect(&cell, &["--json", "mkdir", "-p", "/d/e/f"], 0).json();
    assert_eq!(again["created"], false);

    // put (argument, stdin, compare-and-set) and cat.
    let put = expect(&cell, &["put", "/d/a", "hello"], 0);
    assert_eq!(put.stdout, "");
    assert_eq!(expect(&cell, &["cat", "/d/a"], 0).stdout, "hello");
    let put = expect(&cell, &["--json", "put", "/d/a", "world"], 0).json();
    assert_eq!(put["path"], "/d/a");
    assert_eq!(put["stat"]["content_generation"], 2);
    let piped = run_with_stdin(&cell, &["put", "/d/b"], b"from stdin\n\x01");
    assert_eq!(piped.code, 0, "{piped:?}");
    assert_eq!(expect(&cell, &["cat", "/d/b"], 0).stdout, "from stdin\n\x01");
    expect(&cell, &["put", "--if-generation", "1", "/d/a", "stale"], 4);
    expect(&cell, &["put", "--if-generation", "2", "/d/a", "fresh"], 0);
    expect(&cell, &["put", "--if-generation", "1", "/d/none", "x"], 3);
    let cat = expect(&cell, &["--json", "cat", "/d/a"], 0).json();
    assert_eq!(cat["path"], "/d/a");
    assert_eq!(cat["contents"], "fresh");
    assert_eq!(cat["stat"]["content_generation"], 3);
    assert_eq!(cat["stat"]["kind"], "file");
    assert_eq!(cat["stat"]["contents_bytes"], 5);

    // ls and stat.
    assert_eq!(expect(&cell, &["ls", "/d"], 0).stdout, "a\nb\ne\n");
    let listed = expect(&cell, &["--json", "ls", "/"], 0).json();
    let children: Vec<&str> = listed["children"].as_array().expect("children").iter().filter_map(Value::as_str).collect();
    assert!(children.contains(&"d") && children.contains(&"j"), "{listed}");
    let stat = expect(&cell, &["stat", "/d/a"], 0);
    assert!(stat.stdout.contains("content generation: 3") && stat.stdout.contains("kind:               file"), "{stat:?}");
    let stat = expect(&cell, &["--json", "stat", "/d"], 0).json();
    assert_eq!(stat["stat"]["kind"], "directory");
    assert_eq!(stat["stat"]["children"], 3);

    // rm; a missing node is 3; a directory that is not empty is 4.
    expect(&cell, &["rm", "/d/b"], 0);
    expect(&cell, &["cat", "/d/b"], 3);
    assert_eq!(expect(&cell, &["--json", "rm", "/d/a"], 0).json()["deleted"], true);
    expect(&cell, &["rm", "/d"], 4);
    expect(&cell, &["stat", "/missing"], 3);
    expect(&cell, &["ls", "/missing/deeper"], 3);

    // Bad paths are 6; bad usage is 2.
    expect(&cell, &["ls", "relative"], 6);
    expect(&cell, &["put", "/bad//path", "x"], 6);
    expect(&cell, &["mkdir", "-p", "/d//x"], 6);
    expect(&cell, &["cat"], 2);
    expect(&cell, &["lock", "/l"], 2);

    // lock: the sequencer in the environment, CMD's status, shared mode.
    let locked = expect(&cell, &["lock", "/l", "--", "sh", "-c", "echo $GAIOS_SEQUENCER $GAIOS_LOCK_GENERATION"], 0);
    let fields: Vec<&str> = locked.stdout.split_whitespace().collect();
    let [sequencer, generation] = fields.as_slice() else { panic!("{locked:?}") };
    let parts: Vec<&str> = sequencer.split(':').collect();
    assert_eq!(parts.len(), 4, "{locked:?}");
    assert_eq!(&parts[..2], &["/l", "exclusive"]);
    assert_eq!(parts[2], *generation);
    let first: u64 = generation.parse().expect("a generation");
    let again = expect(&cell, &["--json", "lock", "/l", "--", "sh", "-c", "echo $GAIOS_LOCK_GENERATION"], 0);
    assert!(again.stdout.trim().parse::<u64>().expect("a generation") > first, "{again:?}");
    expect_cmd_status(&cell, &["lock", "/l", "--", "sh", "-c", "exit 42"], 42);
    let shared = expect(&cell, &["lock", "--shared", "/l", "--", "sh", "-c", "echo $GAIOS_SEQUENCER"], 0);
    assert!(shared.stdout.starts_with("/l:shared:"), "{shared:?}");
    expect(&cell, &["lock", "/l", "--", "/nonexistent/cmd"], 127);
    // Held by another: --timeout 0 and a short timeout are 4.
    let marker = cell.dir.path().join("held");
    let mut children = Children::default();
    let mut holder = gaios(&cell, &["lock", "/held", "--", "sh", "-c", "touch \"$0\"; sleep 4", marker.to_str().expect("utf-8")]);
    holder.stdout(Stdio::null()).stderr(Stdio::null());
    let holder = children.spawn(holder);
    let until = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < until, "the holder did not get the lock within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    expect(&cell, &["lock", "--timeout", "0", "/held", "--", "true"], 4);
    expect(&cell, &["lock", "--timeout", "0.5", "/held", "--", "true"], 4);
    assert_eq!(children.wait(holder, Duration::from_secs(30)), Some(0));
    expect(&cell, &["lock", "--timeout", "0", "/held", "--", "true"], 0);

    // A lock lost while CMD runs (its file deleted): CMD gets SIGTERM and
    // gaios exits 8.
    let marker = cell.dir.path().join("gone");
    let script = "touch \"$0\"; trap 'touch \"$0.term\"; exit 143' TERM; sleep 30 & wait";
    let mut holder = gaios(&cell, &["lock", "/gone", "--", "sh", "-c", script, marker.to_str().expect("utf-8")]);
    holder.stdout(Stdio::null()).stderr(Stdio::null());
    let holder = children.spawn(holder);
    let until = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < until, "the holder did not get the lock within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    expect(&cell, &["rm", "/gone"], 0);
    assert_eq!(children.wait(holder, Duration::from_secs(15)), Some(8), "gaios lock exits 8 when the lock is lost");
    assert!(cell.dir.path().join("gone.term").exists(), "CMD got SIGTERM");

    // elect and leader: CMD asks who leads and sees itself; after it
    // exits, nobody leads.
    let gaios_path = binary("gaios");
    let gaios_path = gaios_path.to_str().expect("utf-8");
    let cell_addresses = cell_flag(&cell);
    let elected = expect(&cell, &["elect", "/e", "me", "--", gaios_path, "--cell", &cell_addresses, "leader", "/e"], 0);
    assert_eq!(elected.stdout, "me\n");
    let elected = expect(&cell, &["--json", "elect", "/e", "you", "--", gaios_path, "--cell", &cell_addresses, "--json", "leader", "/e"], 0);
    assert_eq!(elected.json()["leader"], "you");
    expect_cmd_status(&cell, &["elect", "/e", "me", "--", "sh", "-c", "exit 3"], 3);
    expect(&cell, &["leader", "/e"], 3);
    let nobody = expect(&cell, &["--json", "leader", "/e"], 3).json();
    assert_eq!(nobody["leader"], Value::Null);
    expect(&cell, &["leader", "/never"], 3);

    // watch: two writes to a file, then a child added to a directory.
    expect(&cell, &["put", "/w", "0"], 0);
    for json in [false, true] {
        let mut args = vec!["watch", "/w", "--count", "2"];
        if json {
            args.insert(0, "--json");
        }
        let mut watcher = gaios(&cell, &args);
        watcher.stdout(Stdio::piped()).stderr(Stdio::piped());
        let index = children.spawn(watcher);
        let stdout = lines_of(children.0[index].stdout.take().expect("stdout"));
        let stderr = lines_of(children.0[index].stderr.take().expect("stderr"));
        wait_for_line(&stderr, "watching /w");
        expect(&cell, &["put", "/w", "1"], 0);
        expect(&cell, &["put", "/w", "2"], 0);
        let lines = read_lines(&stdout, 2);
        assert_eq!(children.wait(index, Duration::from_secs(30)), Some(0), "watch --count 2 exits");
        let mut numbers = Vec::new();
        for line in &lines {
            if json {
                let event: Value = serde_json::from_str(line).expect("a JSON line");
                assert_eq!(event["kind"], "contents_modified", "{line}");
                assert_eq!(event["path"], "/w", "{line}");
                numbers.push(event["number"].as_u64().expect("a number"));
            } else {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(&fields[1..], &["contents_modified", "/w"], "{line}");
                numbers.push(fields[0].parse().expect("a number"));
            }
        }
        assert!(numbers[0] < numbers[1], "{lines:?}");
    }
    let mut watcher = gaios(&cell, &["--json", "watch", "/j", "--count", "1"]);
    watcher.stdout(Stdio::piped()).stderr(Stdio::piped());
    let index = children.spawn(watcher);
    let stdout = lines_of(children.0[index].stdout.take().expect("stdout"));
    let stderr = lines_of(children.0[index].stderr.take().expect("stderr"));
    wait_for_line(&stderr, "watching /j");
    expect(&cell, &["put", "/j/new", "x"], 0);
    let event: Value = serde_json::from_str(&read_lines(&stdout, 1)[0]).expect("a JSON line");
    assert_eq!(event["kind"], "child_added", "{event}");
    assert_eq!(event["path"], "/j/new", "{event}");
    assert_eq!(children.wait(index, Duration::from_secs(30)), Some(0));
    expect(&cell, &["watch", "/missing"], 3);

    // Every invocation closed its session (the watchers included).
    let status = expect(&cell, &["--json", "status"], 0).json();
    let master = status.as_array().expect("rows").iter().find(|row| row["role"] == "master").expect("a master").clone();
    assert_eq!(master["sessions"], 0, "{status}");
    assert_eq!(master["locks_held"], 0, "{status}");
    eprintln!("every command checked in {:?}", started.elapsed());
}

#[test]
fn locked_commands_do_not_overlap() {
    let _serial = serial();
    let cell = start_cell(&[]);
    let record = cell.dir.path().join("intervals");
    let script = "echo \"$GAIOS_LOCK_GENERATION start $(date +%s%N)\" >> \"$0\"; sleep 1; \
                  echo \"$GAIOS_LOCK_GENERATION end $(date +%s%N)\" >> \"$0\"";
    let mut children = Children::default();
    let runs = 3;
    let indexes: Vec<usize> = (0..runs)
        .map(|_| {
            let mut command = gaios(&cell, &["lock", "/l", "--", "sh", "-c", script, record.to_str().expect("utf-8")]);
            command.stdout(Stdio::null()).stderr(Stdio::inherit());
            children.spawn(command)
        })
        .collect();
    for index in indexes {
        assert_eq!(children.wait(index, Duration::from_secs(60)), Some(0), "gaios lock exits with CMD's status");
    }
    // generation -> (start, end)
    let mut intervals: std::collections::BTreeMap<u64, (Option<u128>, Option<u128>)> = Default::default();
    let text = read_to_string(&record);
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [generation, which, at] = fields.as_slice() else { panic!("a bad line {line:?} in\n{text}") };
        let entry = intervals.entry(generation.parse().expect("a generation")).or_default();
        let at = Some(at.parse().expect("a time"));
        match *which {
            "start" => entry.0 = at,
            _ => entry.1 = at,
        }
    }
    assert_eq!(intervals.len(), runs, "one generation per holder:\n{text}");
    let mut spans: Vec<(u128, u128)> = intervals
        .values()
        .map(|(start, end)| (start.expect("a start"), end.expect("an end")))
        .collect();
    // In generation order (the BTreeMap's) the holders ran one after the other.
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "intervals overlap or run out of generation order:\n{text}");
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "intervals overlap:\n{text}");
    }
    let gaps_ms: Vec<u128> = spans.windows(2).map(|pair| (pair[1].0 - pair[0].1) / 1_000_000).collect();
    eprintln!("{runs} holders ran one at a time; hand-over gaps {gaps_ms:?} ms");
}

#[test]
fn the_other_candidate_leads_after_the_leader_is_killed() {
    let _serial = serial();
    let session_lease_ms = 2000u128;
    let lock_delay_ms = 3000u128;
    let cell = start_cell(&["--session-lease-ms", "2000"]);
    let record = cell.dir.path().join("leaders");
    let script = "echo \"$1 $GAIOS_LOCK_GENERATION $(date +%s%N)\" >> \"$0\"; exec sleep 60";
    let mut children = Children::default();
    let mut candidates = Vec::new();
    for name in ["A", "B"] {
        let log = std::fs::File::create(cell.dir.path().join(format!("candidate-{name}.log"))).expect("a log");
        let args = ["--grace-ms", "1000", "elect", "--lock-delay-ms", "3000", "/e", name, "--", "sh", "-c", script];
        let mut command = gaios(&cell, &args);
        command.args([record.to_str().expect("utf-8"), name]);
        command.stdout(Stdio::null()).stderr(log);
        candidates.push((name, children.spawn(command)));
    }
    let leader_now = || {
        let ran = run(&cell, &["--grace-ms", "1000", "leader", "/e"]);
        (ran.code == 0).then(|| ran.stdout.trim().to_string())
    };
    let poll = |deadline: Duration, want: &dyn Fn(&str) -> bool| -> Option<String> {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Some(leader) = leader_now().filter(|leader| want(leader)) {
                return Some(leader);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    };
    let first = poll(Duration::from_secs(30), &|leader| leader == "A" || leader == "B")
        .unwrap_or_else(|| {
            let logs: String = ["A", "B"]
                .iter()
                .map(|name| {
                    let path = cell.dir.path().join(format!("candidate-{name}.log"));
                    format!("--- candidate {name} ---\n{}", std::fs::read_to_string(path).unwrap_or_default())
                })
                .collect();
            panic!("no leader within 30 s\n{logs}\n{}", cell.logs())
        });
    let (_, winner) = *candidates.iter().find(|(name, _)| *name == first).expect("a candidate");
    let other = if first == "A" { "B" } else { "A" };
    // The leader stays the leader while it lives.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leader_now().as_deref(), Some(first.as_str()));

    let killed_ns = now_ns();
    let killed = Instant::now();
    children.kill_only(winner);
    let second = poll(Duration::from_secs(15), &|leader| leader == other);
    let took = killed.elapsed();
    assert_eq!(second.as_deref(), Some(other), "{other} did not lead within 15 s of the SIGKILL\n{}", cell.logs());

    let text = read_to_string(&record);
    let starts: Vec<(String, u64, u128)> = text
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [name, generation, at] = fields.as_slice() else { panic!("a bad line {line:?} in\n{text}") };
            ((*name).to_string(), generation.parse().expect("a generation"), at.parse().expect("a time"))
        })
        .collect();
    let [(name_one, generation_one, _), (name_two, generation_two, started_two)] = starts.as_slice() else {
        panic!("two leaders expected:\n{text}")
    };
    assert_eq!((name_one.as_str(), name_two.as_str()), (first.as_str(), other), "{text}");
    assert!(generation_two > generation_one, "the lock generation rose:\n{text}");
    // The new leader started only after the old session expired and its
    // lock-delay passed: its last KeepAlive went about a quarter lease
    // before the kill, so the session ended at least 3/4 of a lease after
    // it (half a lease allowed here), and the lock-delay ran from there.
    let slack_ns = session_lease_ms * 1_000_000 / 2;
    assert!(
        *started_two >= killed_ns + (session_lease_ms + lock_delay_ms) * 1_000_000 - slack_ns,
        "{other} started {} ms after the kill, before the old session could expire and its lock-delay pass",
        (started_two.saturating_sub(killed_ns)) / 1_000_000
    );

    // The new leader's process paused (SIGSTOP) past its session lease and
    // grace: when it resumes it finds the session expired, stops CMD and
    // exits 8.
    let (_, survivor) = *candidates.iter().find(|(name, _)| *name == other).expect("a candidate");
    let pid = i32::try_from(children.0[survivor].id()).expect("a pid");
    let signal = |signal| {
        // `kill(2)` through libc, on a process the test started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, signal);
        }
    };
    signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(4000));
    signal(libc::SIGCONT);
    assert_eq!(children.wait(survivor, Duration::from_secs(15)), Some(8), "gaios elect exits 8 once leadership is lost");
    assert_eq!(leader_now(), None, "nobody leads");

    eprintln!(
        "{first} led (generation {generation_one}); SIGKILLed; {other} started after {} ms (generation {generation_two}), \
         `gaios leader` showed it after {took:?}",
        (started_two - killed_ns) / 1_000_000
    );
}

/// Waits until `path` exists (at most 30 s).
fn wait_for_file(path: &Path, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < until, "{what} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lock_and_elect_stop_their_command_at_jeopardy_unless_told_to_keep_it() {
    let _serial = serial();
    let cell = start_cell(&["--session-lease-ms", "2000"]);
    let dir = cell.dir.path();
    // CMD notes its start, a SIGTERM, and its own end 12 s later.
    let script = "touch \"$0\"; trap 'touch \"$0.term\"; exit 143' TERM; sleep 12 & wait; touch \"$0.done\"";
    let mut children = Children::default();
    let mut holder = |name: &str, args: &[&str]| {
        let marker = dir.join(name);
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("a log");
        // A grace period far longer than the pause: only jeopardy stops CMD.
        let mut command = gaios(&cell, &[&["--grace-ms", "30000"], args, &["--", "sh", "-c", script]].concat());
        command.arg(&marker).stdout(Stdio::null()).stderr(log);
        let index = children.spawn(command);
        wait_for_file(&marker, &format!("{name}'s CMD started"));
        (index, marker)
    };
    let (stopped_lock, stopped_lock_marker) = holder("lock", &["lock", "/j"]);
    let (stopped_elect, stopped_elect_marker) = holder("elect", &["elect", "/e", "me"]);
    let (kept, kept_marker) = holder("kept", &["lock", "--keep-through-jeopardy", "/k"]);

    // No master for at least 5 s (more than the 2 s session lease, far less
    // than the grace period): every session enters jeopardy, none expires.
    let all: Vec<usize> = (0..REPLICAS as usize).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let (master, _) = runtime.block_on(wait_for_master(&cell, &all, FIRST_MASTER_DEADLINE)).expect("a master");
    let mut paused = vec![cell.index_of(master)];
    paused.extend(all.iter().copied().filter(|&i| cell.members[i].id != master).take(2));
    let sibling = |marker: &Path, suffix: &str| std::path::PathBuf::from(format!("{}.{suffix}", marker.display()));
    let paused_at = Instant::now();
    for &index in &paused {
        cell.signal(index, libc::SIGSTOP);
    }
    let stopped_both = || sibling(&stopped_lock_marker, "term").exists() && sibling(&stopped_elect_marker, "term").exists();
    let until = paused_at + Duration::from_secs(10);
    while !stopped_both() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_while_paused = stopped_both();
    std::thread::sleep(Duration::from_secs(5).saturating_sub(paused_at.elapsed()));
    let kept_while_paused = !sibling(&kept_marker, "term").exists();
    for &index in &paused {
        cell.signal(index, libc::SIGCONT);
    }
    assert!(stopped_while_paused, "jeopardy did not stop the CMDs of gaios lock and gaios elect while no master answered\n{}", cell.logs());
    assert!(kept_while_paused, "--keep-through-jeopardy stopped CMD in jeopardy");
    assert_eq!(children.wait(stopped_lock, Duration::from_secs(20)), Some(9), "gaios lock exits 9 after jeopardy stopped CMD");
    assert!(!sibling(&stopped_lock_marker, "done").exists());
    assert_eq!(children.wait(stopped_elect, Duration::from_secs(20)), Some(9), "gaios elect exits 9 after jeopardy stopped CMD");
    assert!(!sibling(&stopped_elect_marker, "done").exists());
    // --keep-through-jeopardy: CMD ran through the pause and ended by itself.
    assert_eq!(children.wait(kept, Duration::from_secs(30)), Some(0), "gaios lock --keep-through-jeopardy exits with CMD's status");
    assert!(sibling(&kept_marker, "done").exists() && !sibling(&kept_marker, "term").exists(), "the kept CMD ran to its end");
}
