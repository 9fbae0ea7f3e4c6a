//! `gaios`: the command-line tool of a Gaios cell. It reads and writes
//! nodes, runs a command under a lock or while elected leader, watches a
//! node's events and shows every replica's status.
//!
//! Each invocation (except `status`) opens one session, does its work and
//! closes the session. Errors go to stderr with an exit code that says what
//! kind of failure it was (see [`exit::Exit`]), so scripts can branch on it.
//!
//! This file holds the global flags and the dispatch; each command lives in
//! `commands/<name>.rs`, the output formats in `print/`, the exit codes in
//! `exit.rs` and CMD's supervision (`lock`, `elect`) in `supervise.rs`.

mod commands;
mod exit;
mod print;
mod supervise;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gaios_client::{Client, Options};

use crate::exit::{Exit, failure};

/// How long closing the session at the end may take; a session not closed
/// by then ends by itself when its lease expires (its locks then wait out
/// their lock-delay).
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The command-line flags of `gaios`.
#[derive(Debug, Parser)]
#[command(
    name = "gaios",
    version,
    about = "Read and write a Gaios cell's nodes, run commands under its locks and elections, watch events.",
    after_help = exit::help()
)]
struct Args {
    /// The cell's client addresses (`host:port`, comma-separated; any
    /// replicas, the master is found).
    #[arg(long, env = "GAIOS_CELL", default_value = gaios_client::LOCAL_CELL, global = true)]
    cell: String,
    /// Print one JSON value (one per line for `watch`) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// How long the session survives without a master once its lease ran
    /// out, in milliseconds (after that it is expired).
    #[arg(long, default_value_t = 45_000, global = true)]
    grace_ms: u64,
    /// How long a call keeps retrying through elections before giving up
    /// with exit code 5, in milliseconds.
    #[arg(long, default_value_t = 45_000, global = true)]
    deadline_ms: u64,
    /// The cell's CA certificate (PEM), to check the replicas' certificates.
    #[arg(long, env = "GAIOS_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM); its subject CN is who you are to
    /// the cell.
    #[arg(long, env = "GAIOS_CERT", global = true)]
    cert: Option<std::path::PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, env = "GAIOS_KEY", global = true)]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The commands; each one's help is its `Args` struct's doc comment.
#[derive(Debug, Subcommand)]
enum Command {
    Ls(commands::ls::Args),
    Stat(commands::stat::Args),
    Cat(commands::cat::Args),
    Put(commands::put::Args),
    Rm(commands::rm::Args),
    Mkdir(commands::mkdir::Args),
    Lock(commands::lock::Args),
    Elect(commands::elect::Args),
    Leader(commands::leader::Args),
    Watch(commands::watch::Args),
    Status(commands::status::Args),
    Member(commands::member::Args),
    Acl(commands::acl::Args),
    Whoami(commands::whoami::Args),
}

impl Command {
    /// The command's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Ls(_) => "ls",
            Command::Stat(_) => "stat",
            Command::Cat(_) => "cat",
            Command::Put(_) => "put",
            Command::Rm(_) => "rm",
            Command::Mkdir(_) => "mkdir",
            Command::Lock(_) => "lock",
            Command::Elect(_) => "elect",
            Command::Leader(_) => "leader",
            Command::Watch(_) => "watch",
            Command::Status(_) => "status",
            Command::Member(_) => "member",
            Command::Acl(_) => "acl",
            Command::Whoami(_) => "whoami",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("gaios: {error:#}");
            ExitCode::from(Exit::of(&error).code())
        }
    }
}

/// Runs the command; returns the exit code on success (not always 0:
/// `lock` and `elect` return CMD's status).
async fn run(mut args: Args) -> anyhow::Result<u8> {
    let cell: Vec<String> =
        args.cell.split(',').map(str::trim).filter(|address| !address.is_empty()).map(String::from).collect();
    if cell.is_empty() {
        return Err(failure(Exit::InvalidArgument, "--cell names no address"));
    }
    let tls = match (&args.cacert, &args.cert, &args.key) {
        (None, None, None) => None,
        (Some(ca), Some(cert), Some(key)) => Some(
            gaios_client::Tls::from_files(ca, cert, key).map_err(|error| failure(Exit::InvalidArgument, format!("cannot read the TLS files: {error}")))?,
        ),
        _ => return Err(failure(Exit::InvalidArgument, "TLS needs all of --cacert, --cert and --key")),
    };
    let mut printer = print::stdout(args.json);
    let printer = printer.as_mut();
    let ok = |()| Exit::Ok.code();
    let command = match args.command {
        Command::Status(status) => return commands::status::run(&cell, tls.as_ref(), status, printer).await.map(ok),
        Command::Member(member) => return commands::member::run(&cell, tls.as_ref(), member, printer).await.map(ok),
        Command::Whoami(whoami) => return commands::whoami::run(&cell, tls.as_ref(), whoami, printer).await.map(ok),
        command => command,
    };
    args.command = command;
    if let Command::Put(put) = &mut args.command {
        put.read_stdin()?;
    }
    let options = Options {
        grace_period: Duration::from_millis(args.grace_ms),
        call_deadline: Duration::from_millis(args.deadline_ms),
        client_name: format!("gaios {}", args.command.name()),
        tls,
        ..Options::default()
    };
    let client = Client::connect(&cell, options).await.with_context(|| format!("cannot start a session with the cell at {}", cell.join(",")))?;
    let result = match args.command {
        Command::Ls(ls) => commands::ls::run(&client, ls, printer).await.map(ok),
        Command::Stat(stat) => commands::stat::run(&client, stat, printer).await.map(ok),
        Command::Cat(cat) => commands::cat::run(&client, cat, printer).await.map(ok),
        Command::Put(put) => commands::put::run(&client, put, printer).await.map(ok),
        Command::Rm(rm) => commands::rm::run(&client, rm, printer).await.map(ok),
        Command::Mkdir(mkdir) => commands::mkdir::run(&client, mkdir, printer).await.map(ok),
        Command::Lock(lock) => commands::lock::run(&client, lock).await,
        Command::Elect(elect) => commands::elect::run(&client, elect).await,
        Command::Leader(leader) => commands::leader::run(&client, leader, printer).await.map(ok),
        Command::Watch(watch) => commands::watch::run(&client, watch, printer).await.map(ok),
        Command::Acl(acl) => commands::acl::run(&client, acl, printer).await.map(ok),
        Command::Status(_) | Command::Member(_) | Command::Whoami(_) => unreachable!("answered without a session"),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, client.close()).await;
    result
}
