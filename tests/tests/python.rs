//! The wire contract as a non-Rust client sees it: `tests/python/
//! wire_contract.py`, with the standard Python gRPC packages (grpcio,
//! grpcio-status; installed by `scripts/install-build-deps` in a virtual
//! environment), against a real five-process cell. It decodes a follower's
//! redirect with `grpc_status.rpc_status.from_call` and follows it, and
//! checks the codes and reasons of a long bad path, an oversized request
//! and a reused request number.

use std::path::PathBuf;
use std::process::Command;

use gaios_tests::*;

/// The Python of the virtual environment `scripts/install-build-deps` makes.
fn python() -> PathBuf {
    let venv = std::env::var_os("GAIOS_PYTHON_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/gaios/python-venv")
    });
    let python = venv.join("bin/python");
    assert!(python.exists(), "no Python virtual environment at {}: run scripts/install-build-deps first", venv.display());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_decodes_the_redirect_and_the_error_reasons_with_the_standard_decoder() {
    let _serial = serial();
    let cell = Cell::start();
    let master = master_of(&cell).await;
    let address = |id: u64| cell.members.iter().find(|m| m.id == id).expect("a member").client.to_string();
    let follower = cell.members.iter().find(|m| m.id != master).expect("a follower").id;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(python())
        .arg(root.join("tests/python/wire_contract.py"))
        .arg(root.join("proto"))
        .arg(address(follower))
        .arg(master.to_string())
        .arg(address(master))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "the Python client failed:\n{stdout}\n{stderr}\n{}", cell.logs());
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 13, "every check ran:\n{stdout}");
}

/// A directory of 100,000 children (ten pages of the largest size, 10,000
/// names; names of 13 to 62 bytes) is listed completely, once and in order,
/// page after page, by both clients: the Rust library's `read_dir` and the
/// Python client's `Handle.list()` (the `gaios` package installed by
/// `scripts/install-build-deps` in its virtual environment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_100000_children_is_listed_completely_through_pages_by_both_clients() {
    use gaios_client::{Client, OpenOptions, Options};
    const CHILDREN: usize = 100_000;
    // Each session keeps its children's handles open (one write per child
    // instead of two): 25 sessions of 4,000 handles stay under the 4,096
    // handles one session may have.
    const SESSIONS: usize = 25;
    const TASKS_PER_SESSION: usize = 4;
    let _serial = serial();
    let cell = Cell::start();
    master_of(&cell).await;
    let addresses: Vec<String> = cell.members.iter().map(|m| m.client.to_string()).collect();
    let options = || Options { call_deadline: std::time::Duration::from_secs(60), ..Options::default() };
    let first = Client::connect(&addresses, options()).await.expect("connect");
    first.open("/huge", OpenOptions::new().create().directory().event_mask(0)).await.expect("mkdir");
    let name = |i: usize| format!("child-{i:06}-{}", "x".repeat(i % 50));
    let started = std::time::Instant::now();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(std::sync::Arc::new(Client::connect(&addresses, options()).await.expect("connect")));
    }
    let mut creating = tokio::task::JoinSet::new();
    let workers = SESSIONS * TASKS_PER_SESSION;
    for worker in 0..workers {
        let client = std::sync::Arc::clone(&sessions[worker % SESSIONS]);
        creating.spawn(async move {
            for i in (worker..CHILDREN).step_by(workers) {
                client.open(&format!("/huge/{}", name(i)), OpenOptions::new().create().event_mask(0)).await.map_err(|e| format!("{i}: {e:?}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = creating.join_next().await {
        if let Err(error) = done.expect("a creating task") {
            for member in &cell.members {
                let _ = std::fs::copy(cell.log_path(member.id), format!("/tmp/huge-{}.log", member.id));
            }
            panic!("create failed after {:.1} s: {error}", started.elapsed().as_secs_f64());
        }
    }
    println!("created {CHILDREN} children in {:.1} s", started.elapsed().as_secs_f64());
    for session in sessions {
        if let Ok(client) = std::sync::Arc::try_unwrap(session) {
            client.close().await.expect("close a creating session");
        }
    }
    let mut expected: Vec<String> = (0..CHILDREN).map(name).collect();
    expected.sort();

    let dir = first.open("/huge", OpenOptions::new().event_mask(0)).await.expect("open");
    let listed = dir.read_dir().await.expect("the Rust client lists");
    assert!(listed == expected, "the Rust client listed {} names, not the {CHILDREN} expected in order", listed.len());
    let (page, token) = dir.read_dir_page(0, "").await.expect("a page");
    assert_eq!(page.len(), 10_000, "a page of the default size");
    assert!(!token.is_empty(), "more pages follow");

    let out = tempfile::NamedTempFile::new().expect("a temporary file");
    let script = "import sys, gaios\n\
        cell = gaios.Cell.connect(sys.argv[1], call_deadline=60)\n\
        handle = cell.open('/huge', event_mask=0)\n\
        names = handle.list()\n\
        pages = 0\n\
        token = ''\n\
        while True:\n\
        \x20   page, token = handle.list_page(7000, token)\n\
        \x20   pages += 1\n\
        \x20   if not token: break\n\
        open(sys.argv[2], 'w').write('\\n'.join(names))\n\
        print(f'python listed {len(names)} names; {pages} pages of 7000')\n\
        cell.close()\n";
    let output = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(addresses.join(","))
        .arg(out.path())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "the Python client failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let from_python = std::fs::read_to_string(out.path()).expect("the Python client's listing");
    let from_python: Vec<&str> = from_python.split('\n').collect();
    assert!(from_python == expected, "the Python client listed {} names, not the {CHILDREN} expected in order", from_python.len());
    assert!(stdout.contains("15 pages of 7000"), "the Python client paged: {stdout}");
}
