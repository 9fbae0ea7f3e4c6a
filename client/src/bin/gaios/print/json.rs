//! The `--json` format: one JSON value per invocation on one line (one
//! line per event for `watch`), written for programs. Every command prints
//! a value, writes included, and a missing leader is `"leader": null`.

use std::io::Write;

use anyhow::Context as _;
use gaios_client::membership::Configuration;
use gaios_client::{Acl, Event, EventKind, Stat, WhoAmIResponse};
use gaios_proto::cell::v1 as api;
use serde_json::{Value, json};

use super::{Printer, Replica, emit, event_kind_name, incarnation_text, kind_name, role_name};

/// Prints JSON to `out`.
pub struct Json<W> {
    out: W,
}

impl<W: Write> Json<W> {
    /// A JSON printer writing to `out`.
    pub fn new(out: W) -> Self {
        Json { out }
    }

    /// Writes `value` on one line.
    fn value(&mut self, value: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(value).context("cannot encode JSON")?;
        line.push(b'\n');
        emit(&mut self.out, &line)
    }
}

/// A node's metadata as a JSON object.
fn stat_json(stat: &Stat) -> Value {
    json!({
        "instance": stat.instance,
        "kind": kind_name(stat),
        "ephemeral_owner": stat.ephemeral_owner,
        "content_generation": stat.content_generation,
        "lock_generation": stat.lock_generation,
        "acl_generation": stat.acl_generation,
        "checksum": stat.checksum,
        "created_ms": stat.created_ms,
        "modified_ms": stat.modified_ms,
        "contents_bytes": stat.contents_bytes,
        "children": stat.children,
    })
}

/// A ballot as `{round, replica}`, `null` if none.
fn ballot_json(ballot: Option<&api::Ballot>) -> Value {
    ballot.map_or(Value::Null, |b| json!({ "round": b.round, "replica": b.replica }))
}

impl<W: Write> Printer for Json<W> {
    fn acl(&mut self, path: &str, acl: &Acl, acl_generation: u64) -> anyhow::Result<()> {
        self.value(&json!({
            "path": path,
            "acl_generation": acl_generation,
            "read": acl.read,
            "write": acl.write,
            "change_acl": acl.change_acl,
        }))
    }

    fn whoami(&mut self, who: &WhoAmIResponse) -> anyhow::Result<()> {
        self.value(&json!({ "identity": who.identity, "groups": who.groups, "tls": who.tls }))
    }

    fn ls(&mut self, path: &str, names: &[String]) -> anyhow::Result<()> {
        self.value(&json!({ "path": path, "children": names }))
    }

    fn stat(&mut self, path: &str, stat: &Stat) -> anyhow::Result<()> {
        self.value(&json!({ "path": path, "stat": stat_json(stat) }))
    }

    fn cat(&mut self, path: &str, contents: &[u8], stat: &Stat) -> anyhow::Result<()> {
        let text = String::from_utf8_lossy(contents);
        self.value(&json!({ "path": path, "contents": text, "stat": stat_json(stat) }))
    }

    fn put(&mut self, path: &str, stat: &Stat) -> anyhow::Result<()> {
        self.value(&json!({ "path": path, "stat": stat_json(stat) }))
    }

    fn rm(&mut self, path: &str) -> anyhow::Result<()> {
        self.value(&json!({ "path": path, "deleted": true }))
    }

    fn mkdir(&mut self, path: &str, created: bool) -> anyhow::Result<()> {
        self.value(&json!({ "path": path, "created": created }))
    }

    fn leader(&mut self, path: &str, value: Option<&[u8]>) -> anyhow::Result<()> {
        let leader = value.map(|value| String::from_utf8_lossy(value).into_owned());
        self.value(&json!({ "path": path, "leader": leader }))
    }

    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        let mut value = json!({ "number": event.number, "kind": event_kind_name(&event.kind), "path": event.path });
        if let EventKind::Missed { count } = event.kind {
            value["count"] = json!(count);
        }
        self.value(&value)
    }

    fn status(&mut self, replicas: &[Replica]) -> anyhow::Result<()> {
        let rows: Vec<Value> = replicas
            .iter()
            .map(|(address, status)| match status {
                None => json!({ "address": address, "answered": false }),
                Some(s) => json!({
                    "address": address,
                    "answered": true,
                    "id": s.id,
                    "role": role_name(s),
                    "master_id": s.master_id,
                    "master_address": s.master_client_address,
                    "promised": ballot_json(s.promised.as_ref()),
                    "own_ballot": ballot_json(s.own_ballot.as_ref()),
                    "chosen_through": s.chosen_through,
                    "applied": s.applied,
                    "log_start": s.log_start,
                    "snapshot_slot": s.snapshot_slot,
                    "lease_remaining_ms": s.lease_remaining_ms,
                    "sessions": s.sessions,
                    "nodes": s.nodes,
                    "locks_held": s.locks_held,
                    "inbox_dropped": s.inbox_dropped,
                    "peer_wrong_cell_dropped": s.peer_wrong_cell_dropped,
                    "peer_wrong_incarnation_dropped": s.peer_wrong_incarnation_dropped,
                    "incarnation": incarnation_text(s),
                    "cell_id": s.cell_id,
                }),
            })
            .collect();
        self.value(&Value::Array(rows))
    }

    fn members(&mut self, config: &Configuration) -> anyhow::Result<()> {
        let members: Vec<Value> = config
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "voter": m.voter,
                    "peer_address": m.peer_address,
                    "client_address": m.client_address,
                    "incarnation": format!("{:016x}", m.incarnation),
                    "learned_through": m.learned_through,
                })
            })
            .collect();
        self.value(&json!({
            "members": members,
            "membership_slot": config.slot,
            "master_id": config.master_id,
            "master_chosen_through": config.master_chosen_through,
            "highest_member_id": config.highest_member_id,
        }))
    }
}
