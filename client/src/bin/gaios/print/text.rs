//! The text format: what a person reads, and what `cut` and `awk` can
//! split. Writes say nothing on success (as `cp` and `rm` do); `cat`
//! writes the raw bytes; `status` is a table with a header row.

use std::io::Write;

use gaios_client::membership::Configuration;
use gaios_client::{Acl, Event, EventKind, Stat, WhoAmIResponse};
use gaios_proto::cell::v1 as api;

use super::{Printer, Replica, emit, event_kind_name, incarnation_text, kind_name, role_name};

/// Prints text to `out`.
pub struct Text<W> {
    out: W,
}

impl<W: Write> Text<W> {
    /// A text printer writing to `out`.
    pub fn new(out: W) -> Self {
        Text { out }
    }

    /// Writes `line` and a newline.
    fn line(&mut self, line: &str) -> anyhow::Result<()> {
        emit(&mut self.out, format!("{line}\n").as_bytes())
    }
}

/// A ballot as `round.replica`, `-` if none.
fn ballot_text(ballot: Option<&api::Ballot>) -> String {
    ballot.map_or_else(|| "-".to_string(), |b| format!("{}.{}", b.round, b.replica))
}

/// An ACL list as space-separated entries, `(nobody)` if empty.
fn entries_text(list: &[String]) -> String {
    if list.is_empty() { "(nobody)".to_string() } else { list.join(" ") }
}

impl<W: Write> Printer for Text<W> {
    fn acl(&mut self, path: &str, acl: &Acl, acl_generation: u64) -> anyhow::Result<()> {
        let lines = [
            format!("path:           {path}"),
            format!("acl generation: {acl_generation}"),
            format!("read:           {}", entries_text(&acl.read)),
            format!("write:          {}", entries_text(&acl.write)),
            format!("change-acl:     {}", entries_text(&acl.change_acl)),
        ];
        self.line(&lines.join("\n"))
    }

    fn whoami(&mut self, who: &WhoAmIResponse) -> anyhow::Result<()> {
        let identity = if who.identity.is_empty() { "(none: the cell is --insecure)" } else { &who.identity };
        let groups = if who.groups.is_empty() { "(none)".to_string() } else { who.groups.join(" ") };
        self.line(&format!("identity: {identity}\ngroups:   {groups}"))
    }

    fn ls(&mut self, _path: &str, names: &[String]) -> anyhow::Result<()> {
        let text: String = names.iter().map(|name| format!("{name}\n")).collect();
        emit(&mut self.out, text.as_bytes())
    }

    fn stat(&mut self, path: &str, stat: &Stat) -> anyhow::Result<()> {
        let owner = if stat.ephemeral_owner == 0 { "none (permanent)".to_string() } else { format!("session {}", stat.ephemeral_owner) };
        let lines = [
            format!("path:               {path}"),
            format!("kind:               {}", kind_name(stat)),
            format!("instance:           {}", stat.instance),
            format!("content generation: {}", stat.content_generation),
            format!("lock generation:    {}", stat.lock_generation),
            format!("acl generation:     {}", stat.acl_generation),
            format!("contents bytes:     {}", stat.contents_bytes),
            format!("children:           {}", stat.children),
            format!("checksum:           {:016x}", stat.checksum),
            format!("created ms:         {}", stat.created_ms),
            format!("modified ms:        {}", stat.modified_ms),
            format!("ephemeral owner:    {owner}"),
        ];
        self.line(&lines.join("\n"))
    }

    fn cat(&mut self, _path: &str, contents: &[u8], _stat: &Stat) -> anyhow::Result<()> {
        emit(&mut self.out, contents)
    }

    fn put(&mut self, _path: &str, _stat: &Stat) -> anyhow::Result<()> {
        Ok(())
    }

    fn rm(&mut self, _path: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn mkdir(&mut self, _path: &str, _created: bool) -> anyhow::Result<()> {
        Ok(())
    }

    fn leader(&mut self, _path: &str, value: Option<&[u8]>) -> anyhow::Result<()> {
        // Nobody leading is said by the exit code and stderr.
        match value {
            Some(value) => self.line(&String::from_utf8_lossy(value)),
            None => Ok(()),
        }
    }

    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        let kind = event_kind_name(&event.kind);
        let shown = if event.path.is_empty() { "-" } else { &event.path };
        match event.kind {
            EventKind::Missed { count } => self.line(&format!("{} {kind} {shown} count={count}", event.number)),
            _ => self.line(&format!("{} {kind} {shown}", event.number)),
        }
    }

    fn status(&mut self, replicas: &[Replica]) -> anyhow::Result<()> {
        let header =
            ["ID", "ADDRESS", "ROLE", "MASTER", "BALLOT", "CHOSEN", "APPLIED", "LEASE_MS", "SESSIONS", "NODES", "LOCKS", "INCARNATION"];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_string()).collect()];
        for (address, status) in replicas {
            rows.push(match status {
                None => vec!["?".into(), address.clone(), "no answer".into()],
                Some(s) => vec![
                    s.id.to_string(),
                    address.clone(),
                    role_name(s).into(),
                    if s.master_id == 0 { "-".into() } else { s.master_id.to_string() },
                    ballot_text(s.promised.as_ref()),
                    s.chosen_through.to_string(),
                    s.applied.to_string(),
                    s.lease_remaining_ms.to_string(),
                    s.sessions.to_string(),
                    s.nodes.to_string(),
                    s.locks_held.to_string(),
                    incarnation_text(s),
                ],
            });
        }
        emit(&mut self.out, table(&rows).as_bytes())
    }

    fn members(&mut self, config: &Configuration) -> anyhow::Result<()> {
        let header = ["ID", "ROLE", "PEER", "CLIENT", "INCARNATION", "LEARNED"];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_string()).collect()];
        for member in &config.members {
            rows.push(vec![
                member.id.to_string(),
                if member.voter { "voter" } else { "learner" }.into(),
                member.peer_address.clone(),
                member.client_address.clone(),
                if member.incarnation == 0 { "-".into() } else { format!("{:016x}", member.incarnation) },
                member.learned_through.map_or_else(|| "-".into(), |slot| slot.to_string()),
            ]);
        }
        let mut text = table(&rows);
        text.push_str(&format!(
            "configuration of slot {}; master {}; next free id {}\n",
            config.slot,
            if config.master_id == 0 { "-".to_string() } else { config.master_id.to_string() },
            config.highest_member_id.saturating_add(1)
        ));
        emit(&mut self.out, text.as_bytes())
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|i| rows.iter().filter_map(|row| row.get(i)).map(String::len).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<width$}", width = widths[i])).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}
