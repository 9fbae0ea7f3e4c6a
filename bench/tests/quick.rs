//! The benchmark's quick profile still runs: against Gaios alone, and
//! against etcd (3.4 and 3.5) and ZooKeeper too where they are installed
//! (`bench/scripts/peers install`).
//! It checks that every table is produced and filled, not how fast anything
//! is.

use std::process::Command;

/// The cells of the first table row whose first cell is `label`.
fn row<'a>(report: &'a str, label: &str) -> Vec<&'a str> {
    let line = report.lines().find(|line| line.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("no row {label:?}:\n{report}"));
    line.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect()
}

/// The first row whose first cell is `label` in the table under `title`,
/// as (column header, cell) pairs.
fn row_under<'a>(report: &'a str, title: &str, label: &str) -> Vec<(&'a str, &'a str)> {
    let section = report.split("### ").find(|section| section.starts_with(title)).unwrap_or_else(|| panic!("no table {title:?}:\n{report}"));
    let cells = |line: &'a str| line.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect::<Vec<_>>();
    let header = section.lines().find(|line| line.starts_with("| case |")).map(cells).unwrap_or_else(|| panic!("no header in {title:?}"));
    let line = section.lines().find(|line| line.starts_with(&format!("| {label} |"))).unwrap_or_else(|| panic!("no row {label:?} in {title:?}"));
    header.into_iter().zip(cells(line)).collect()
}

/// The cell of `row` under the column `header`, if there is that column.
fn cell<'a>(row: &[(&str, &'a str)], header: &str) -> Option<&'a str> {
    row.iter().find(|(h, _)| *h == header).map(|(_, cell)| *cell)
}

fn number(cell: &str) -> Option<f64> {
    cell.split([' ', '/']).next().and_then(|v| v.parse::<f64>().ok())
}

#[test]
fn the_quick_profile_produces_every_table() {
    let etcd_installed = Command::new("etcd").arg("--version").output().is_ok();
    // Without etcd the bench runs Gaios alone (`--gaios-only`).
    let zookeeper_installed = etcd_installed && std::path::Path::new("/usr/share/java/zookeeper.jar").exists();
    // etcd 3.5 where the peers script finds its binary.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("peers");
    let etcd35_installed = etcd_installed && Command::new(script).args(["bin", "etcd35"]).output().is_ok_and(|o| o.status.success());
    let out = tempfile::tempdir().expect("a temporary directory");
    let report_path = out.path().join("report.md");
    let mut command = Command::new(env!("CARGO_BIN_EXE_gaios-bench"));
    // Two rounds, so the medians, ranges and per-round ratios are made.
    command.args(["--quick", "--rounds", "2", "--workloads", "write,throughput,tls,read,lock,failover,sessions", "--out"]).arg(&report_path);
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
    // The failover table keeps one column per system.
    let peers = [(2, etcd_installed), (3, etcd35_installed), (4, zookeeper_installed)];

    assert!(written.contains("The machine's floor"), "no floor:\n{written}");
    assert!(written.contains("Five replicas on one disk"), "no sync floor of five writers:\n{written}");
    assert!(written.contains("2 rounds, the systems in turns"), "not two rounds:\n{written}");
    // Latency rows: Gaios's p50, each installed peer's (etcd 3.4 in both of
    // its configurations), and a ratio to each.
    let systems = [
        ("Gaios", true),
        ("etcd", etcd_installed),
        ("etcd (all endpoints)", etcd_installed),
        ("etcd 3.5", etcd35_installed),
        ("ZooKeeper", zookeeper_installed),
    ];
    for (title, label) in [("Write latency", "write"), ("Lock acquire + release", "1 client")] {
        let cells = row_under(&written, title, label);
        for (system, installed) in systems {
            let p50 = cell(&cells, &format!("{system} p50 / p99 ms")).and_then(number);
            assert_eq!(p50.is_some(), installed, "{label}: {system} in {cells:?}");
            if system != "Gaios" {
                let ratio = cell(&cells, &format!("Gaios/{system} (p50)"));
                assert_eq!(ratio.and_then(number).is_some(), installed, "{label}: Gaios/{system} in {cells:?}");
                // Two rounds: the median and the range of the two ratios.
                assert_eq!(ratio.is_some_and(|r| r.contains('[') && r.contains('–')), installed, "{label}: Gaios/{system} range in {cells:?}");
            }
        }
    }
    // Throughput at 100 clients on every system present.
    let throughput = row_under(&written, "Write throughput", "100 clients");
    for (system, installed) in systems {
        assert_eq!(cell(&throughput, &format!("{system} ops/s")).and_then(number).is_some_and(|r| r > 0.0), installed, "{system} throughput in {throughput:?}");
    }
    // The targets that need a peer are judged where the peers run.
    for target in ["throughput, 100 clients, ≥ 2× etcd", "CPU per write, 100 clients, ≤ ½ the cheaper peer's"] {
        let line = written.lines().find(|line| line.starts_with(&format!("| {target} |"))).unwrap_or_else(|| panic!("no target {target:?}"));
        assert_eq!(!line.ends_with("| not measured |"), etcd_installed, "{line}");
    }
    // CPU and context switches per write, the clients' CPU and elections,
    // for every system present (a write wakes threads in several processes).
    let cost = row_under(&written, "Write, 1 client: CPU and context switches per operation, the clients' CPU, elections", "write");
    for (system, installed) in systems {
        let cpu = cell(&cost, &format!("{system} CPU ms/op")).and_then(number);
        assert_eq!(cpu.is_some_and(|ms| ms > 0.0), installed, "{system} CPU per write in {cost:?}");
        let switches = cell(&cost, &format!("{system} switches/op")).and_then(number);
        assert_eq!(switches.is_some_and(|n| n > 0.0), installed, "{system} context switches per write in {cost:?}");
        let client = cell(&cost, &format!("{system} client CPU ms/op")).and_then(number);
        assert_eq!(client.is_some_and(|ms| ms > 0.0), installed, "{system} client CPU per write in {cost:?}");
        let elections = cell(&cost, &format!("{system} elections")).and_then(number);
        assert_eq!(elections.is_some(), installed, "{system} elections in {cost:?}");
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
