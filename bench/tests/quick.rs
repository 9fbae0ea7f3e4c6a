//! The benchmark's quick profile still runs: against Gaios alone, and
//! against etcd and ZooKeeper too where they are installed
//! (`bench/scripts/peers install`).
//! It checks that every table is produced and filled, not how fast anything
//! is.

use std::process::Command;

/// The cells of the first table row whose first cell is `label`.
fn row<'a>(report: &'a str, label: &str) -> Vec<&'a str> {
    let line = report.lines().find(|line| line.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("no row {label:?}:\n{report}"));
    line.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect()
}

fn number(cell: &str) -> Option<f64> {
    cell.split([' ', '/']).next().and_then(|v| v.parse::<f64>().ok())
}

#[test]
fn the_quick_profile_produces_every_table() {
    let etcd_installed = Command::new("etcd").arg("--version").output().is_ok();
    let zookeeper_installed = std::path::Path::new("/usr/share/java/zookeeper.jar").exists();
    let out = tempfile::tempdir().expect("a temporary directory");
    let report_path = out.path().join("report.md");
    let mut command = Command::new(env!("CARGO_BIN_EXE_gaios-bench"));
    command.args(["--quick", "--workloads", "write,tls,read,lock,failover,sessions", "--out"]).arg(&report_path);
    if !etcd_installed {
        command.arg("--gaios-only");
    }
    let output = command.output().expect("run gaios-bench");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "gaios-bench failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    let written = std::fs::read_to_string(&report_path).expect("the report file");
    for table in ["Write latency", "The cost of TLS", "Read latency", "Lock acquire + release", "Failover", "Sessions kept alive", "Targets"] {
        assert!(written.contains(table), "no {table} table:\n{written}");
    }
    let peers = [(2, etcd_installed), (3, zookeeper_installed)];

    // Latency rows: Gaios's p50, and each installed peer's.
    for label in ["write", "1 client"] {
        let cells = row(&written, label);
        assert!(number(cells[1]).is_some(), "no Gaios p50 in {cells:?}");
        for (column, installed) in peers {
            assert_eq!(number(cells[column]).is_some(), installed, "{label}: column {column} in {cells:?}");
        }
    }
    // The cost of TLS: both cells measured, and a ratio.
    for label in ["write p50 ms, 1 client", "write throughput ops/s, 10 clients"] {
        let cells = row(&written, label);
        assert!(cells[1..].iter().all(|cell| number(cell).is_some()), "{label}: {cells:?}");
    }
    // Failover: a time for each fault and system present.
    for fault in ["SIGKILL", "SIGSTOP"] {
        let cells = row(&written, fault);
        let gaios_ms = number(cells[1]).unwrap_or_else(|| panic!("no Gaios failover time in {cells:?}"));
        assert!(gaios_ms > 0.0, "{cells:?}");
        for (column, installed) in peers {
            assert_eq!(number(cells[column]).is_some(), installed, "{fault}: column {column} in {cells:?}");
        }
    }
    // Sessions: Gaios kept its 200 sessions without a spurious expiry (no
    // fault was injected and the lease is 12 s), and answered keep-alives.
    let cells = row(&written, "200");
    assert_eq!(cells[1], "Gaios", "{cells:?}");
    assert_eq!(cells[3], "0", "spurious expiries: {cells:?}");
    assert!(number(cells[4]).is_some_and(|answered| answered >= 200.0), "keep-alives answered: {cells:?}");
    // The plots were drawn where the font is installed.
    if std::path::Path::new(gaios_bench::plots::FONT_PATH).exists() {
        for plot in ["write-latency.png", "read-latency.png", "lock-latency.png"] {
            let path = out.path().join("report").join(plot);
            let bytes = std::fs::read(&path).unwrap_or_else(|_| panic!("no plot {}", path.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{plot} is not a PNG");
        }
    }
}
