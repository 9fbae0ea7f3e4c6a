//! Configurations over the log: which one governs each slot, and the rules a
//! change must meet before a master proposes it. See `docs/MEMBERSHIP.md`
//! for why these rules keep every two quorums that matter intersecting.

use std::collections::BTreeMap;

use crate::types::{Member, Membership, ReplicaId, Slot};

/// One change of the configuration, proposed with
/// [`crate::Replica::propose_change`]. Each changes at most one voter, so
/// any majority of the old configuration meets any majority of the new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// A new member joins as a learner (never counted in a quorum).
    AddLearner(Member),
    /// A learner becomes a voter.
    Promote(ReplicaId),
    /// A voter or learner leaves.
    Remove(ReplicaId),
}

/// Why a change was refused. Nothing was proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// Only the master proposes changes.
    #[error("this replica is not the master (master hint: {master_hint:?})")]
    NotMaster {
        /// The replica believed to be master.
        master_hint: Option<ReplicaId>,
    },
    /// The master has not yet seen everything chosen before its reign
    /// chosen (its read barrier), so it cannot know the configuration in
    /// force; retry shortly.
    #[error("the master is still recovering the log; retry shortly")]
    Recovering,
    /// Another change is proposed or in flight; one change at a time.
    #[error("another configuration change is in flight")]
    InFlight,
    /// The member named is not in the configuration.
    #[error("replica {0} is not a member")]
    NotAMember(ReplicaId),
    /// The id is taken already.
    #[error("replica {0} is already a member")]
    AlreadyAMember(ReplicaId),
    /// A new member's id must be higher than any id the cell ever used.
    #[error("replica id {id} was used before; a new member needs an id above {highest}")]
    IdUsedBefore {
        /// The id asked for.
        id: ReplicaId,
        /// The highest id the cell ever used.
        highest: ReplicaId,
    },
    /// Promote names a voter.
    #[error("replica {0} is already a voter")]
    AlreadyAVoter(ReplicaId),
    /// The change would leave fewer voters than the floor (three) and was
    /// not forced.
    #[error("the change would leave {voters} voters, fewer than 3 (force it to go on)")]
    TooFewVoters {
        /// Voters after the change.
        voters: usize,
    },
    /// The voters of the new configuration that the master hears from would
    /// not make a majority of it, so the cell would stop; not forced.
    #[error("only {reachable} of the new configuration's voters are reachable, {needed} are needed (force it to go on)")]
    WouldLoseQuorum {
        /// Reachable voters after the change.
        reachable: usize,
        /// The new configuration's majority.
        needed: usize,
    },
    /// The learner has not caught up yet; not forced.
    #[error("learner {id} has learned through slot {learned}, the master through {chosen}; it must be within {bound}")]
    NotCaughtUp {
        /// The learner.
        id: ReplicaId,
        /// Its chosen prefix, as it last told the master.
        learned: Slot,
        /// The master's chosen prefix.
        chosen: Slot,
        /// `Config::learner_lag_slots_max`.
        bound: u64,
    },
    /// The new configuration breaks a bound (too many members, an id of 0,
    /// an address too long).
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
}

/// The configuration the change makes of `current`, or why it cannot be made
/// (the structural rules only; reachability and catch-up are the master's).
pub fn changed(current: &Membership, change: &MembershipChange) -> Result<Membership, ChangeError> {
    let mut next = current.clone();
    match change {
        MembershipChange::AddLearner(member) => {
            if current.contains(member.id) {
                return Err(ChangeError::AlreadyAMember(member.id));
            }
            if member.id <= current.highest_id {
                return Err(ChangeError::IdUsedBefore { id: member.id, highest: current.highest_id });
            }
            next.highest_id = member.id;
            let mut member = member.clone();
            member.voter = false;
            let at = next.members.partition_point(|m| m.id < member.id);
            next.members.insert(at, member);
        }
        MembershipChange::Promote(id) => {
            let Some(member) = next.members.iter_mut().find(|m| m.id == *id) else {
                return Err(ChangeError::NotAMember(*id));
            };
            if member.voter {
                return Err(ChangeError::AlreadyAVoter(*id));
            }
            member.voter = true;
        }
        MembershipChange::Remove(id) => {
            if !current.contains(*id) {
                return Err(ChangeError::NotAMember(*id));
            }
            next.members.retain(|m| m.id != *id);
        }
    }
    next.validate().map_err(ChangeError::Invalid)?;
    Ok(next)
}

/// The configurations a replica knows, by the slot of the change that put
/// each in force: the entry at key `s` governs every slot after `s` up to
/// the next key. The first key is the snapshot's slot (or 0, the cell's
/// founding configuration); later ones are chosen `Reconfigure` slots.
#[derive(Clone, Debug)]
pub(crate) struct ConfigHistory {
    by_slot: BTreeMap<Slot, Membership>,
}

impl ConfigHistory {
    /// A history that starts with `membership` in force after `slot`.
    pub(crate) fn new(slot: Slot, membership: Membership) -> Self {
        ConfigHistory { by_slot: BTreeMap::from([(slot, membership)]) }
    }

    /// The configuration in force after `slot` (so governing `slot + 1`).
    /// Slots below the history's start get its first configuration, which a
    /// caller never needs (they are compacted).
    pub(crate) fn after(&self, slot: Slot) -> &Membership {
        self.by_slot
            .range(..=slot)
            .next_back()
            .or_else(|| self.by_slot.iter().next())
            .map(|(_, m)| m)
            .expect("a configuration history is never empty")
    }

    /// The slot of the change that put the newest configuration in force.
    pub(crate) fn latest_slot(&self) -> Slot {
        self.by_slot.keys().next_back().copied().unwrap_or(0)
    }

    /// Records that a change chosen at `slot` puts `membership` in force.
    pub(crate) fn record(&mut self, slot: Slot, membership: Membership) {
        self.by_slot.insert(slot, membership);
    }

    /// Starts over from a snapshot: `membership` in force after `slot`.
    pub(crate) fn reset(&mut self, slot: Slot, membership: Membership) {
        self.by_slot = BTreeMap::from([(slot, membership)]);
    }

    /// Forgets configurations that governed only slots at or below `slot`
    /// (compacted), keeping the one in force after it.
    pub(crate) fn compact(&mut self, slot: Slot) {
        let keep = self.by_slot.range(..=slot).next_back().map(|(&s, _)| s);
        if let Some(keep) = keep {
            self.by_slot = self.by_slot.split_off(&keep);
        }
    }

    /// True when `id` is a member of any configuration in the history.
    pub(crate) fn knows(&self, id: ReplicaId) -> bool {
        self.by_slot.values().any(|m| m.contains(id))
    }

    /// Every configuration in the history, oldest first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Membership> {
        self.by_slot.values()
    }

    /// The configuration before the newest one, if the history holds it.
    pub(crate) fn previous(&self) -> Option<&Membership> {
        self.by_slot.values().rev().nth(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learner(id: ReplicaId) -> Member {
        Member { id, voter: true, incarnation: 7, peer_address: format!("p{id}"), client_address: format!("c{id}") }
    }

    #[test]
    fn a_change_moves_one_member_and_keeps_ids_sorted() {
        let five = Membership::genesis(&[1, 2, 3, 4, 5]);
        let added = changed(&five, &MembershipChange::AddLearner(learner(0x10))).unwrap();
        assert!(added.contains(16) && !added.is_voter(16), "a new member is a learner whatever it claims");
        assert_eq!(added.quorum(), 3, "a learner does not move the majority");
        let promoted = changed(&added, &MembershipChange::Promote(16)).unwrap();
        assert_eq!(promoted.quorum(), 4);
        let removed = changed(&promoted, &MembershipChange::Remove(1)).unwrap();
        assert_eq!(removed.voters().collect::<Vec<_>>(), vec![2, 3, 4, 5, 16]);
        let gone = changed(&removed, &MembershipChange::Remove(16)).unwrap();
        assert_eq!(
            changed(&gone, &MembershipChange::AddLearner(learner(16))),
            Err(ChangeError::IdUsedBefore { id: 16, highest: 16 }),
            "an id is never used twice, even once its member is gone"
        );
        assert_eq!(changed(&five, &MembershipChange::Promote(3)), Err(ChangeError::AlreadyAVoter(3)));
        assert_eq!(changed(&five, &MembershipChange::Remove(9)), Err(ChangeError::NotAMember(9)));
        assert_eq!(changed(&five, &MembershipChange::AddLearner(learner(2))), Err(ChangeError::AlreadyAMember(2)));
        assert!(matches!(changed(&five, &MembershipChange::AddLearner(learner(0))), Err(ChangeError::IdUsedBefore { id: 0, .. })));
    }

    #[test]
    fn learners_and_strangers_make_no_majority() {
        let mut cell = Membership::genesis(&[1, 2, 3]);
        cell = changed(&cell, &MembershipChange::AddLearner(learner(4))).unwrap();
        cell = changed(&cell, &MembershipChange::AddLearner(learner(5))).unwrap();
        assert!(!cell.is_quorum(&[1, 4, 5, 9]), "one voter, two learners and a stranger");
        assert!(cell.is_quorum(&[1, 2]));
    }

    #[test]
    fn the_history_answers_which_configuration_governs_a_slot() {
        let mut history = ConfigHistory::new(0, Membership::genesis(&[1, 2, 3]));
        history.record(10, Membership::genesis(&[1, 2, 3, 4]));
        history.record(20, Membership::genesis(&[2, 3, 4]));
        assert_eq!(history.after(9).quorum(), 2);
        assert_eq!(history.after(10).voters().count(), 4, "slot 11 is governed by the change at 10");
        assert_eq!(history.after(25).voters().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(history.knows(1));
        history.compact(22);
        assert!(!history.knows(1), "a member removed before the snapshot is forgotten");
        assert_eq!(history.latest_slot(), 20);
    }
}
