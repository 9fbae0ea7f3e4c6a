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
    assert_eq!(stdout.lines().filter(|line| line.starts_with("ok: ")).count(), 11, "every check ran:\n{stdout}");
}
