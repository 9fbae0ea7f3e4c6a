//! What `gaios` prints on stdout, one printer per output format: [`Text`]
//! for people and scripts that cut columns, [`Json`] (`--json`) for
//! programs. A command says what it has to show; the printer decides how,
//! so a format's rules live in one file.

mod json;
mod text;

use std::io::Write;

use anyhow::Context as _;
use gaios_client::membership::Configuration;
use gaios_client::{Acl, Event, EventKind, Stat, StatusResponse, WhoAmIResponse};
use gaios_proto::cell::v1 as api;

pub use json::Json;
pub use text::Text;

/// One replica's row of `gaios status`: the address asked and its answer
/// (`None` if it did not answer in time).
pub type Replica = (String, Option<StatusResponse>);

/// Prints each command's result. Every method writes whole lines and
/// flushes, so a consumer reading line by line (`watch`) sees each at once.
pub trait Printer {
    /// A directory's children, sorted.
    fn ls(&mut self, path: &str, names: &[String]) -> anyhow::Result<()>;
    /// A node's metadata.
    fn stat(&mut self, path: &str, stat: &Stat) -> anyhow::Result<()>;
    /// A file's contents and metadata.
    fn cat(&mut self, path: &str, contents: &[u8], stat: &Stat) -> anyhow::Result<()>;
    /// A file was written and now has `stat`.
    fn put(&mut self, path: &str, stat: &Stat) -> anyhow::Result<()>;
    /// A node was deleted.
    fn rm(&mut self, path: &str) -> anyhow::Result<()>;
    /// A directory exists now; `created` if this invocation created it.
    fn mkdir(&mut self, path: &str, created: bool) -> anyhow::Result<()>;
    /// The leader's value of an election, `None` if nobody leads.
    fn leader(&mut self, path: &str, value: Option<&[u8]>) -> anyhow::Result<()>;
    /// One event of a watched node.
    fn event(&mut self, event: &Event) -> anyhow::Result<()>;
    /// Every replica's status, in the order they were named.
    fn status(&mut self, replicas: &[Replica]) -> anyhow::Result<()>;
    /// The configuration in force.
    fn members(&mut self, config: &Configuration) -> anyhow::Result<()>;
    /// A node's ACL and its ACL generation.
    fn acl(&mut self, path: &str, acl: &Acl, acl_generation: u64) -> anyhow::Result<()>;
    /// Who the cell takes this client for.
    fn whoami(&mut self, who: &WhoAmIResponse) -> anyhow::Result<()>;
}

/// The printer of the chosen format, writing to stdout.
pub fn stdout(json: bool) -> Box<dyn Printer> {
    if json { Box::new(Json::new(std::io::stdout())) } else { Box::new(Text::new(std::io::stdout())) }
}

/// Writes `bytes` and flushes.
fn emit(out: &mut dyn Write, bytes: &[u8]) -> anyhow::Result<()> {
    out.write_all(bytes).and_then(|()| out.flush()).context("cannot write to stdout")
}

/// A node kind's name in either format.
fn kind_name(stat: &Stat) -> &'static str {
    match stat.kind() {
        api::NodeKind::File => "file",
        api::NodeKind::Directory => "directory",
        api::NodeKind::Unspecified => "unknown",
    }
}

/// An event kind's name in either format.
fn event_kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::ContentsModified => "contents_modified",
        EventKind::ChildAdded => "child_added",
        EventKind::ChildRemoved => "child_removed",
        EventKind::ChildModified => "child_modified",
        EventKind::LockAcquired => "lock_acquired",
        EventKind::ConflictingLockRequest => "conflicting_lock_request",
        EventKind::HandleInvalid => "handle_invalid",
        EventKind::MasterFailover => "master_failover",
        EventKind::Missed { .. } => "missed",
    }
}

/// A replica role's name in either format.
fn role_name(status: &StatusResponse) -> &'static str {
    match status.role() {
        api::Role::Master => "master",
        api::Role::Candidate => "candidate",
        api::Role::Follower => "follower",
        api::Role::Unspecified => "unknown",
    }
}

/// An incarnation as both formats show it: 16 hex digits (a JSON number
/// would lose precision above 2^53 in many readers).
fn incarnation_text(status: &StatusResponse) -> String {
    format!("{:016x}", status.incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A printer writing into a buffer.
    fn printed(json: bool, print: impl FnOnce(&mut dyn Printer) -> anyhow::Result<()>) -> String {
        let mut buffer = Vec::new();
        if json {
            print(&mut Json::new(&mut buffer)).expect("printed");
        } else {
            print(&mut Text::new(&mut buffer)).expect("printed");
        }
        String::from_utf8(buffer).expect("utf-8")
    }

    fn replica(id: u64, role: api::Role) -> StatusResponse {
        let mut status = StatusResponse {
            id,
            master_id: 2,
            master_client_address: "127.0.0.1:7202".into(),
            chosen_through: 41,
            applied: 40,
            incarnation: 0x00ab_cdef_0123_4567,
            promised: Some(api::Ballot { round: 3, replica: 2 }),
            ..StatusResponse::default()
        };
        status.set_role(role);
        status
    }

    fn replicas() -> Vec<Replica> {
        vec![
            ("127.0.0.1:7201".into(), Some(replica(1, api::Role::Follower))),
            ("127.0.0.1:7202".into(), Some(replica(2, api::Role::Master))),
            ("127.0.0.1:7203".into(), None),
        ]
    }

    #[test]
    fn text_status_is_a_table_with_every_replica_column() {
        let text = printed(false, |p| p.status(&replicas()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["ID", "ADDRESS", "ROLE", "MASTER", "BALLOT", "CHOSEN", "APPLIED", "LEASE_MS", "SESSIONS", "NODES", "LOCKS", "INCARNATION"]
        );
        let master: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(master, ["2", "127.0.0.1:7202", "master", "2", "3.2", "41", "40", "0", "0", "0", "0", "00abcdef01234567"]);
        assert!(lines[3].contains("127.0.0.1:7203") && lines[3].contains("no answer"), "{text}");
    }

    #[test]
    fn json_status_is_one_array_with_every_field() {
        let text = printed(true, |p| p.status(&replicas()));
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        let rows: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let rows = rows.as_array().expect("an array");
        assert_eq!(rows[1]["role"], "master");
        assert_eq!(rows[1]["incarnation"], "00abcdef01234567");
        assert_eq!(rows[1]["promised"]["round"], 3);
        assert_eq!(rows[1]["applied"], 40);
        assert_eq!(rows[1]["peer_wrong_incarnation_dropped"], 0);
        assert_eq!(rows[2], serde_json::json!({ "address": "127.0.0.1:7203", "answered": false }));
    }

    #[test]
    fn only_json_reports_writes_and_a_missing_leader() {
        let stat = Stat { content_generation: 2, ..Stat::default() };
        assert_eq!(printed(false, |p| p.put("/a", &stat)), "");
        assert_eq!(printed(false, |p| p.rm("/a")), "");
        assert_eq!(printed(false, |p| p.mkdir("/d", true)), "");
        assert_eq!(printed(false, |p| p.leader("/e", None)), "");
        assert_eq!(printed(false, |p| p.leader("/e", Some(b"me"))), "me\n");
        let nobody: serde_json::Value = serde_json::from_str(&printed(true, |p| p.leader("/e", None))).expect("JSON");
        assert_eq!(nobody, serde_json::json!({ "path": "/e", "leader": null }));
        let put: serde_json::Value = serde_json::from_str(&printed(true, |p| p.put("/a", &stat))).expect("JSON");
        assert_eq!(put["stat"]["content_generation"], 2);
    }

    #[test]
    fn cat_writes_raw_bytes_as_text_and_lossy_utf8_as_json() {
        let stat = Stat::default();
        assert_eq!(printed(false, |p| p.cat("/f", b"a\x01b", &stat)), "a\x01b");
        let cat: serde_json::Value = serde_json::from_str(&printed(true, |p| p.cat("/f", b"ab", &stat))).expect("JSON");
        assert_eq!(cat["contents"], "ab");
    }

    #[test]
    fn events_print_one_line_each() {
        let event = Event { number: 7, handle: 1, path: "/w".into(), kind: EventKind::ContentsModified };
        assert_eq!(printed(false, |p| p.event(&event)), "7 contents_modified /w\n");
        let missed = Event { number: 9, handle: 0, path: String::new(), kind: EventKind::Missed { count: 4 } };
        assert_eq!(printed(false, |p| p.event(&missed)), "9 missed - count=4\n");
        let json: serde_json::Value = serde_json::from_str(&printed(true, |p| p.event(&missed))).expect("JSON");
        assert_eq!(json, serde_json::json!({ "number": 9, "kind": "missed", "path": "", "count": 4 }));
    }
}
