//! The benchmark's quick profile still runs: against Gaios alone, and
//! against etcd and ZooKeeper too where they are installed
//! (`bench/scripts/peers install`).
//! It checks that every table is produced, not how fast anything is.

use std::process::Command;

#[test]
fn the_quick_profile_produces_every_table() {
    let etcd_installed = Command::new("etcd").arg("--version").output().is_ok();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gaios-bench"));
    command.args(["--quick", "--workloads", "write,read,lock"]);
    if !etcd_installed {
        command.arg("--gaios-only");
    }
    let output = command.output().expect("run gaios-bench");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "gaios-bench failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    for table in ["Write latency", "Read latency", "Lock acquire + release"] {
        assert!(report.contains(table), "no {table} table:\n{report}");
    }
    // The write row has Gaios's p50 (and etcd's where installed).
    let write_row = report.lines().find(|line| line.starts_with("| write |")).expect("a write row");
    let cells: Vec<&str> = write_row.split('|').map(str::trim).collect();
    let p50 = |cell: &str| cell.split(" / ").next().and_then(|v| v.parse::<f64>().ok());
    assert!(p50(cells[2]).is_some(), "no Gaios p50 in {write_row}");
    if etcd_installed {
        assert!(p50(cells[3]).is_some(), "no etcd p50 in {write_row}");
    }
}
