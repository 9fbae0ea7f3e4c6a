//! Access control lists: Chubby's three ACL names per node (read, write,
//! change-ACL), each a sorted list of entries, and who a session is when
//! they are checked.
//!
//! An entry is an identity (a TLS client certificate's CN), `group:NAME`,
//! or `*` (anyone, including the sessions of an `--insecure` cell, which
//! have no identity). A session is judged by the identity and groups it was
//! created with (both replicated in its `CreateSession`), so every replica
//! judges a call alike; members of [`ADMIN_GROUP`] may do everything.

use gaios_proto::cell::v1 as api;
use gaios_proto::state::v1 as wire;

use crate::code::Code;
use crate::limits::{ACL_BYTES_MAX, ACL_ENTRIES_MAX, GROUPS_PER_SESSION_MAX, IDENTITY_BYTES_MAX};

/// The cell-admin group: its members pass every ACL.
pub const ADMIN_GROUP: &str = "admin";
/// The entry that names anyone.
pub const ANYONE: &str = "*";
/// The prefix of an entry that names a group.
pub const GROUP_PREFIX: &str = "group:";

/// Bytes each entry costs besides its text in the footprint (an upper
/// bound of its tag and length in a snapshot).
const ENTRY_OVERHEAD_BYTES: usize = 4;
/// Bytes an ACL costs besides its entries (the record's tags and lengths).
const ACL_OVERHEAD_BYTES: usize = 16;

/// What a call needs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read its contents, stat or children.
    Read,
    /// Write it, take its lock, create or delete nodes in it.
    Write,
    /// Change its ACL.
    ChangeAcl,
}

impl Permission {
    /// The ACL name, as messages and docs say it.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::ChangeAcl => "change-ACL",
        }
    }
}

/// A node's ACL; each list sorted and without repeats, so equal ACLs are
/// equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    read: Vec<String>,
    write: Vec<String>,
    change_acl: Vec<String>,
}

/// Who a session is, for ACL checks: the identity that created it (empty
/// without TLS) and the groups it was created with.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    /// The identity; empty for an anonymous session.
    pub identity: &'a str,
    /// Its groups.
    pub groups: &'a [String],
}

impl Principal<'_> {
    /// Whether the principal is a cell administrator.
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|group| group == ADMIN_GROUP)
    }

    /// Who it is, for messages.
    pub fn describe(&self) -> String {
        if self.identity.is_empty() { "an anonymous session".to_string() } else { format!("{:?}", self.identity) }
    }
}

fn invalid(message: impl Into<String>) -> wire::Failure {
    crate::validate::failure(Code::InvalidArgument, api::ErrorReason::Unspecified, message)
}

/// Whether `text` is a usable name: 1 to [`IDENTITY_BYTES_MAX`] bytes, no
/// control characters.
fn is_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= IDENTITY_BYTES_MAX && !text.chars().any(char::is_control)
}

/// One list, checked and put in canonical order.
fn entries(name: &str, list: &[String]) -> Result<Vec<String>, wire::Failure> {
    if list.len() > ACL_ENTRIES_MAX {
        return Err(invalid(format!("the {name} list has {} entries, over {ACL_ENTRIES_MAX}", list.len())));
    }
    for entry in list {
        let named = entry.strip_prefix(GROUP_PREFIX).unwrap_or(entry);
        if !is_name(named) || !is_name(entry) {
            return Err(invalid(format!(
                "an ACL entry must be an identity, group:NAME or *, of 1 to {IDENTITY_BYTES_MAX} bytes without control characters; the {name} list has {:?}",
                crate::namespace::excerpt(entry)
            )));
        }
    }
    let mut sorted = list.to_vec();
    sorted.sort();
    sorted.dedup();
    Ok(sorted)
}

/// The longest group name: `group:NAME` must fit in an entry.
pub const GROUP_NAME_BYTES_MAX: usize = IDENTITY_BYTES_MAX - GROUP_PREFIX.len();

/// The groups a `CreateSession` carries, checked: each a name of 1 to
/// [`GROUP_NAME_BYTES_MAX`] bytes without control characters.
pub fn groups(groups: &[String]) -> Result<(), wire::Failure> {
    if groups.len() > GROUPS_PER_SESSION_MAX {
        return Err(invalid(format!("{} groups, over {GROUPS_PER_SESSION_MAX}", groups.len())));
    }
    if let Some(bad) = groups.iter().find(|group| !is_name(group) || group.len() > GROUP_NAME_BYTES_MAX) {
        return Err(invalid(format!("a group name must be 1 to {GROUP_NAME_BYTES_MAX} bytes without control characters, not {:?}", crate::namespace::excerpt(bad))));
    }
    Ok(())
}

impl Acl {
    /// Anyone may do anything: a new cell's root, and every node of a
    /// snapshot written before ACLs existed.
    pub fn open() -> Acl {
        let anyone = vec![ANYONE.to_string()];
        Acl { read: anyone.clone(), write: anyone.clone(), change_acl: anyone }
    }

    /// An ACL from a request or a snapshot, checked (entry sizes and
    /// counts, [`ACL_BYTES_MAX`] in all) and put in canonical order.
    pub fn from_proto(acl: &api::Acl) -> Result<Acl, wire::Failure> {
        let acl = Acl {
            read: entries("read", &acl.read)?,
            write: entries("write", &acl.write)?,
            change_acl: entries("change_acl", &acl.change_acl)?,
        };
        let bytes: usize = acl.lists().iter().flat_map(|list| list.iter()).map(String::len).sum();
        if bytes > ACL_BYTES_MAX {
            return Err(invalid(format!("the ACL's entries take {bytes} bytes, over {ACL_BYTES_MAX}")));
        }
        Ok(acl)
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> api::Acl {
        api::Acl { read: self.read.clone(), write: self.write.clone(), change_acl: self.change_acl.clone() }
    }

    fn lists(&self) -> [&Vec<String>; 3] {
        [&self.read, &self.write, &self.change_acl]
    }

    fn list(&self, permission: Permission) -> &[String] {
        match permission {
            Permission::Read => &self.read,
            Permission::Write => &self.write,
            Permission::ChangeAcl => &self.change_acl,
        }
    }

    /// Whether `principal` has `permission`: it is a cell administrator, or
    /// the list holds `*`, its identity, or one of its groups.
    pub fn allows(&self, permission: Permission, principal: Principal<'_>) -> bool {
        principal.is_admin()
            || self.list(permission).iter().any(|entry| match entry.strip_prefix(GROUP_PREFIX) {
                Some(group) => principal.groups.iter().any(|own| own == group),
                None => entry == ANYONE || (!principal.identity.is_empty() && entry == principal.identity),
            })
    }

    /// Whether `principal` has any of the three permissions.
    pub fn allows_any(&self, principal: Principal<'_>) -> bool {
        [Permission::Read, Permission::Write, Permission::ChangeAcl].into_iter().any(|permission| self.allows(permission, principal))
    }

    /// An upper bound of the ACL's encoding in a snapshot.
    pub fn footprint_bytes(&self) -> usize {
        ACL_OVERHEAD_BYTES + self.lists().iter().flat_map(|list| list.iter()).map(|entry| entry.len() + ENTRY_OVERHEAD_BYTES).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(read: &[&str], write: &[&str], change_acl: &[&str]) -> Acl {
        let list = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect();
        Acl::from_proto(&api::Acl { read: list(read), write: list(write), change_acl: list(change_acl) }).expect("a valid ACL")
    }

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn each_list_allows_its_identities_groups_and_anyone_and_admins_pass_all() {
        let acl = acl(&["alice", "group:ops"], &["*"], &[]);
        let none = groups(&[]);
        let ops = groups(&["ops"]);
        let admin = groups(&[ADMIN_GROUP]);
        let alice = Principal { identity: "alice", groups: &none };
        let bob = Principal { identity: "bob", groups: &none };
        let bob_in_ops = Principal { identity: "bob", groups: &ops };
        let anonymous = Principal { identity: "", groups: &none };
        let carol_admin = Principal { identity: "carol", groups: &admin };
        assert!(acl.allows(Permission::Read, alice));
        assert!(!acl.allows(Permission::Read, bob));
        assert!(acl.allows(Permission::Read, bob_in_ops));
        assert!(!acl.allows(Permission::Read, anonymous));
        assert!(acl.allows(Permission::Write, anonymous), "* is anyone");
        assert!(!acl.allows(Permission::ChangeAcl, alice), "an empty list allows nobody");
        assert!(acl.allows(Permission::ChangeAcl, carol_admin));
        // A group entry does not match an identity of the same name, nor
        // the other way round.
        let by_name = self::acl(&["ops"], &["group:alice"], &[]);
        assert!(!by_name.allows(Permission::Read, bob_in_ops));
        assert!(!by_name.allows(Permission::Write, alice));
        assert!(by_name.allows_any(Principal { identity: "ops", groups: &none }));
    }

    #[test]
    fn lists_are_sorted_without_repeats_and_bounded() {
        let sorted = acl(&["b", "a", "b"], &[], &[]);
        assert_eq!(sorted.to_proto().read, vec!["a".to_string(), "b".to_string()]);
        let too_many = api::Acl { read: (0..=ACL_ENTRIES_MAX).map(|i| format!("u{i}")).collect(), ..Default::default() };
        assert!(Acl::from_proto(&too_many).is_err());
        let too_big = api::Acl {
            read: (0..ACL_ENTRIES_MAX).map(|i| format!("{i:0>200}")).collect(),
            ..Default::default()
        };
        assert!(Acl::from_proto(&too_big).is_err(), "over ACL_BYTES_MAX");
        for bad in ["", "group:", "a\nb", &"x".repeat(IDENTITY_BYTES_MAX + 1)] {
            let refused = Acl::from_proto(&api::Acl { write: vec![bad.to_string()], ..Default::default() });
            assert_eq!(refused.expect_err(bad).code, Code::InvalidArgument.number(), "{bad:?}");
        }
        assert!(super::groups(&[String::new()]).is_err());
        assert!(super::groups(&["g".repeat(GROUP_NAME_BYTES_MAX)]).is_ok());
        assert!(super::groups(&["g".repeat(GROUP_NAME_BYTES_MAX + 1)]).is_err(), "group:NAME would not fit in an entry");
        assert!(super::groups(&(0..=GROUPS_PER_SESSION_MAX).map(|i| i.to_string()).collect::<Vec<_>>()).is_err());
    }

    #[test]
    fn the_footprint_bounds_the_encoding() {
        use prost::Message as _;
        let big = acl(&["alice", "group:ops", "*"], &["x".repeat(IDENTITY_BYTES_MAX).as_str()], &["bob"]);
        assert!(big.footprint_bytes() >= big.to_proto().encoded_len() + 2);
        assert!(Acl::open().footprint_bytes() >= Acl::open().to_proto().encoded_len() + 2);
    }
}
