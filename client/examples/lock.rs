//! Takes an exclusive lock on `/examples/lock` in the local cell, works
//! while holding it (passing the sequencer to a fenced resource), and
//! releases it. Start the cell with `scripts/cell`, then run this twice at
//! once to see the second wait for the first:
//!
//! ```sh
//! cargo run -p gaios-client --example lock
//! ```

use std::time::Duration;

use gaios_client::{Client, Fence, LockMode, OpenOptions, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cell = gaios_client::cell_from_env();
    let client = Client::connect(&cell, Options { tls: gaios_client::tls_from_env()?, ..Options::default() }).await?;
    let handle = client.open("/examples-lock", OpenOptions::new().create().lock_delay(Duration::from_secs(5))).await?;
    println!("session {}: waiting for the lock", client.session_id());
    let lock = handle.acquire(LockMode::Exclusive, Duration::from_secs(60)).await?;
    println!("holding it: {:?}", lock.sequencer());

    // A downstream resource checks every request's sequencer.
    let fence = Fence::new();
    for step in 1..=3 {
        fence.check_with_cell(&client, lock.sequencer()).await?;
        println!("step {step}: the resource accepted our sequencer");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            // Jeopardy: the lock may be lost; stop acting on it at once.
            () = lock.at_risk() => anyhow::bail!("the lock is at risk (the session is in jeopardy); stopping"),
        }
    }
    lock.release().await?;
    println!("released");
    client.close().await?;
    Ok(())
}
