//! What a leadership remembers of the request ids it decided, so that a
//! retried op is answered with its first result instead of applied twice.

use std::collections::{HashMap, VecDeque};

use crate::record::{Applied, Fingerprint, OpError};

/// Results of recent request ids in this epoch, so a retried op (a forward
/// that timed out and was sent again) is applied once. Per epoch: a result
/// from an earlier leadership may name an entry a later leader truncated,
/// so a new epoch starts over from what its own log holds.
pub(super) struct RecentRequests {
    pub(super) epoch: Option<u64>,
    results: HashMap<String, (Fingerprint, Result<Applied, OpError>)>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentRequests {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            epoch: None,
            results: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Starts over for `epoch`, knowing what its log already holds.
    pub(super) fn begin_epoch(
        &mut self,
        epoch: u64,
        in_flight: Vec<(String, Applied, Fingerprint)>,
    ) {
        *self = Self::new(self.capacity);
        self.epoch = Some(epoch);
        for (id, applied, fingerprint) in in_flight {
            self.remember(id, fingerprint, Ok(applied));
        }
    }

    pub(super) fn get(&self, id: &str) -> Option<&(Fingerprint, Result<Applied, OpError>)> {
        self.results.get(id)
    }

    pub(super) fn remember(
        &mut self,
        id: String,
        fingerprint: Fingerprint,
        result: Result<Applied, OpError>,
    ) {
        if self
            .results
            .insert(id.clone(), (fingerprint, result))
            .is_none()
        {
            self.order.push_back(id);
        }
    }

    /// Forgets the oldest ids beyond the capacity, but only those the
    /// store's record answers from now on (applied through `applied`) and
    /// refusals. An id whose entry is not applied yet is found nowhere
    /// else: forgotten, its retry would be applied a second time. So the
    /// map may exceed its capacity while applies lag (a slow checkpoint
    /// holds them back; a new leader starts with its whole unapplied log).
    pub(super) fn forget_applied(&mut self, applied: u64) {
        while self.order.len() > self.capacity {
            let Some(oldest) = self.order.front() else {
                return;
            };
            let answered_elsewhere = match self.results.get(oldest) {
                Some((_, Ok(a))) => a.revision <= applied,
                Some((_, Err(_))) | None => true,
            };
            if !answered_elsewhere {
                return;
            }
            if let Some(old) = self.order.pop_front() {
                self.results.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past its capacity the map forgets applied ids and refusals, which
    /// the store's record (or a new decision) answers, but keeps every id
    /// whose entry is not applied yet: nothing else would know it.
    #[test]
    fn recent_ids_beyond_the_capacity_are_forgotten_only_once_applied() {
        let mut recent = RecentRequests::new(2);
        let applied = |revision| {
            Ok(Applied {
                version: 1,
                revision,
                epoch: 1,
            })
        };
        for revision in 1..=5 {
            recent.remember(format!("id-{revision}"), [0; 32], applied(revision));
        }
        recent.remember(
            "refused".into(),
            [0; 32],
            Err(OpError::NotFound("k/x".into())),
        );
        recent.forget_applied(0);
        assert!((1..=5).all(|r| recent.get(&format!("id-{r}")).is_some()));
        recent.forget_applied(3);
        assert!((1..=3).all(|r| recent.get(&format!("id-{r}")).is_none()));
        assert!(recent.get("id-4").is_some() && recent.get("id-5").is_some());
        recent.forget_applied(5);
        assert_eq!(recent.order.len(), 2);
        assert!(recent.get("id-4").is_none());
        assert!(recent.get("id-5").is_some() && recent.get("refused").is_some());
    }
}
