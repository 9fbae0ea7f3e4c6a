//! `gaios acl get|set`: a node's ACL (Chubby's read, write and change-ACL
//! names).

use anyhow::Context as _;
use gaios_client::{Acl, Client};

use crate::print::Printer;

/// Show or change a node's ACL. Entries are identities (client certificate
/// CNs), `group:NAME`, or `*` for anyone; cell administrators pass every
/// ACL.
#[derive(Debug, clap::Args)]
#[command(after_help = crate::exit::help())]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// What to do with the ACL.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Print the node's ACL and its ACL generation (needs read or
    /// change-ACL permission).
    Get {
        /// The node.
        path: String,
    },
    /// Replace lists of the node's ACL (needs change-ACL permission); a
    /// list not given stays as it is. Lists are comma-separated; give ''
    /// for an empty list (nobody but administrators).
    Set {
        /// The node.
        path: String,
        /// Who may read: contents, stat, children, events.
        #[arg(long)]
        read: Option<String>,
        /// Who may write, take the lock, create and delete children.
        #[arg(long)]
        write: Option<String>,
        /// Who may change the ACL.
        #[arg(long = "change-acl")]
        change_acl: Option<String>,
        /// Change only if the ACL generation is this one (exit 4
        /// otherwise). Without it, the change is conditional on the
        /// generation this command read, so a concurrent change is never
        /// overwritten unseen.
        #[arg(long = "if-generation")]
        if_generation: Option<u64>,
    },
}

/// A comma-separated list of entries; empty text is an empty list.
fn entries(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(String::from).collect()
}

/// Runs `acl get` or `acl set`.
pub async fn run(client: &Client, args: Args, printer: &mut dyn Printer) -> anyhow::Result<()> {
    match args.action {
        Action::Get { path } => {
            let handle = super::open_existing(client, &path).await?;
            let (acl, stat) = handle.acl().await.with_context(|| format!("cannot read the ACL of {path}"))?;
            printer.acl(&path, &acl, stat.acl_generation)
        }
        Action::Set { path, read, write, change_acl, if_generation } => {
            let handle = super::open_existing(client, &path).await?;
            let (current, stat) = handle.acl().await.with_context(|| format!("cannot read the ACL of {path}"))?;
            let acl = Acl {
                read: read.as_deref().map_or(current.read, entries),
                write: write.as_deref().map_or(current.write, entries),
                change_acl: change_acl.as_deref().map_or(current.change_acl, entries),
            };
            let condition = if_generation.unwrap_or(stat.acl_generation);
            let stat = handle.set_acl(acl.clone(), Some(condition)).await.with_context(|| format!("cannot change the ACL of {path}"))?;
            let (acl, _) = handle.acl().await.unwrap_or((acl, stat));
            printer.acl(&path, &acl, stat.acl_generation)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::entries;

    #[test]
    fn lists_are_comma_separated_and_empty_text_is_an_empty_list() {
        assert_eq!(entries("alice, group:ops ,*"), vec!["alice", "group:ops", "*"]);
        assert!(entries("").is_empty());
        assert!(entries(" , ").is_empty());
    }
}
