//! The members of one set, kept per contributing pod so that one pod's
//! change updates the set without looking at any other pod, and counted so
//! that two pods sharing an address (a stale pod and the new owner of its
//! address) do not remove it from each other.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::PodKey;

/// Members of a set contributed by pods.
#[derive(Debug, Clone)]
pub(crate) struct Members<T> {
    /// What each pod contributes (never empty).
    by_pod: HashMap<PodKey, Vec<T>>,
    /// How many pods contribute each member.
    counts: BTreeMap<T, u32>,
    /// The members (the keys of `counts`), kept apart to lend it out.
    set: BTreeSet<T>,
}

impl<T: Ord + Clone> Members<T> {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Members {
            by_pod: HashMap::new(),
            counts: BTreeMap::new(),
            set: BTreeSet::new(),
        }
    }

    /// The members.
    pub(crate) fn set(&self) -> &BTreeSet<T> {
        &self.set
    }

    /// Replaces what `pod` contributes by `want` (deduplicated by the
    /// caller); returns whether the set of members changed.
    pub(crate) fn update(&mut self, pod: &PodKey, want: Vec<T>) -> bool {
        match self.by_pod.get(pod) {
            Some(old) if *old == want => return false,
            None if want.is_empty() => return false,
            _ => {}
        }
        let old = self.by_pod.remove(pod).unwrap_or_default();
        let mut changed = false;
        // Add before removing, so that a member in both stays put.
        for t in &want {
            let count = self.counts.entry(t.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.set.insert(t.clone());
                changed = true;
            }
        }
        for t in old {
            if let Some(count) = self.counts.get_mut(&t) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&t);
                    self.set.remove(&t);
                    changed = true;
                }
            }
        }
        if !want.is_empty() {
            self.by_pod.insert(pod.clone(), want);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_member_survives_one_owner_leaving() {
        let (a, b) = (PodKey::new("x", "a"), PodKey::new("x", "b"));
        let mut m = Members::new();
        assert!(m.update(&a, vec![1, 2]));
        assert!(!m.update(&b, vec![2]), "2 is already a member");
        assert!(!m.update(&a, vec![1, 2]), "same contribution is no change");
        assert!(m.update(&a, vec![]));
        assert_eq!(m.set(), &BTreeSet::from([2]));
        assert!(!m.update(&b, vec![2]));
        assert!(m.update(&b, vec![3]), "2 leaves, 3 arrives");
        assert_eq!(m.set(), &BTreeSet::from([3]));
        assert!(!m.update(&a, vec![]), "absent pod leaving is no change");
    }
}
