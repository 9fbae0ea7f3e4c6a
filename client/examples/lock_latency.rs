//! Measures lock acquire + release on one handle, one at a time, against
//! the cell in `GAIOS_CELL` (with the TLS of `GAIOS_CACERT`, `GAIOS_CERT`,
//! `GAIOS_KEY` if set), and prints the median and the 99th percentile.
//! `clients/python/examples/lock_latency.py` does the same through the
//! Python client, so the two libraries can be compared on one cell:
//!
//! ```sh
//! cargo run --release -p gaios-client --example lock_latency -- 2000
//! python clients/python/examples/lock_latency.py 2000
//! ```

use std::time::{Duration, Instant};

use gaios_client::{Client, LockMode, OpenOptions, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(1000).max(1);
    let cell = gaios_client::cell_from_env();
    let client = Client::connect(&cell, Options { tls: gaios_client::tls_from_env()?, ..Options::default() }).await?;
    let handle = client.open("/lock-latency-rust", OpenOptions::new().create().event_mask(0)).await?;
    // Warm up the connection and the path.
    for _ in 0..rounds.min(50) {
        handle.acquire(LockMode::Exclusive, Duration::from_secs(10)).await?.release().await?;
    }
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let lock = handle.acquire(LockMode::Exclusive, Duration::from_secs(10)).await?;
        lock.release().await?;
        took.push(started.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    println!("rust lock acquire+release: {rounds} rounds, p50 {:.3} ms, p99 {:.3} ms", at(0.5), at(0.99));
    client.close().await?;
    Ok(())
}
