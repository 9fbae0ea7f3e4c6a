//! Campaigns for leadership of `/examples-election` in the local cell with
//! this process's name, leads for a few seconds, and resigns; meanwhile it
//! prints who leads. Start the cell with `scripts/cell` and run it in two
//! terminals:
//!
//! ```sh
//! cargo run -p gaios-client --example election -- alice
//! cargo run -p gaios-client --example election -- bob
//! ```

use std::time::Duration;

use gaios_client::{Client, Options, election};
use tokio_stream::StreamExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| format!("candidate-{}", std::process::id()));
    let cell = gaios_client::cell_from_env();
    let client = Client::connect(&cell, Options { tls: gaios_client::tls_from_env()?, ..Options::default() }).await?;
    let mut leaders = election::observe(&client, "/examples-election");
    let watcher = tokio::spawn(async move {
        while let Some(leader) = leaders.next().await {
            match leader {
                Ok(Some(value)) => println!("leader: {}", String::from_utf8_lossy(&value)),
                Ok(None) => println!("leader: nobody"),
                Err(error) => println!("observe failed: {error}"),
            }
        }
    });
    println!("{name}: campaigning");
    let leadership = election::campaign(&client, "/examples-election", name.clone()).await?;
    println!("{name}: leading with {:?}", leadership.sequencer());
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
        // Jeopardy: another candidate may lead soon; stop acting as leader.
        () = leadership.at_risk() => anyhow::bail!("leadership is at risk (the session is in jeopardy); stepping down"),
    }
    leadership.resign().await?;
    println!("{name}: resigned");
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.abort();
    client.close().await?;
    Ok(())
}
