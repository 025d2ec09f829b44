//! Quorum with Corosync votequorum's semantics, computed from the agreed view.
//!
//! Lifecycle: `Waiting` (wait_for_all not yet satisfied: never quorate) → `Running` once a view held
//! every configured node at the same time (or at once if wait_for_all is off). In `Running`, every
//! installed view recomputes: votes present, expected votes (raised when more votes are present;
//! lowered by last_man_standing after the view has stayed quorate for the window), quorum threshold and
//! the quorate flag; auto_tie_breaker makes an exact 50/50 split quorate on the side holding the
//! tie-breaker node. Wait-for-all re-arms only when this node restarts, as in votequorum.

use crate::wire::NodeId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which node breaks an exact 50/50 tie when auto_tie_breaker is on.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub enum TieBreaker {
    /// The lowest configured node id (votequorum's default).
    #[default]
    Lowest,
    /// The highest configured node id.
    Highest,
    /// The first of these nodes that was a member of the last view before the split (both halves of
    /// a split share that view, so they agree on the winner).
    Nodes(Vec<NodeId>),
}

/// votequorum options.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuorumSettings {
    /// Expected votes; `None` means the sum of all configured votes.
    pub expected_votes: Option<u32>,
    /// Two-node mode: quorum is 1 vote of 2; implies wait_for_all.
    pub two_node: bool,
    /// Not quorate until all configured nodes have been seen in one view.
    pub wait_for_all: bool,
    /// Lower expected votes after nodes are lost and the rest stayed quorate for `lms_window`.
    pub last_man_standing: bool,
    /// How long the reduced view must stay quorate before expected votes are lowered.
    pub lms_window: Duration,
    /// Break an exact 50/50 split in favour of the side holding the tie-breaker node.
    pub auto_tie_breaker: bool,
    /// The tie-breaker node.
    pub tie_breaker: TieBreaker,
}

impl Default for QuorumSettings {
    fn default() -> Self {
        QuorumSettings {
            expected_votes: None,
            two_node: false,
            wait_for_all: false,
            last_man_standing: false,
            lms_window: Duration::from_secs(10),
            auto_tie_breaker: false,
            tie_breaker: TieBreaker::Lowest,
        }
    }
}

/// What `hastack quorum` prints (corosync-quorumtool -s).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuorumStatus {
    /// Votes of the members of the current view.
    pub total_votes: u32,
    /// Expected votes now in force.
    pub expected_votes: u32,
    /// Votes needed to be quorate.
    pub quorum: u32,
    /// Whether this partition is quorate.
    pub quorate: bool,
    /// Flags as corosync-quorumtool names them: Quorate, WaitForAll, 2Node, LastManStanding, AutoTieBreaker.
    pub flags: Vec<&'static str>,
}

/// The votequorum calculator; pure, fed with views and time.
#[derive(Debug, Clone)]
pub struct Quorum {
    settings: QuorumSettings,
    votes: BTreeMap<NodeId, u32>,
    configured_expected: u32,
    expected: u32,
    wfa_satisfied: bool,
    members: Vec<NodeId>,
    /// Members of the view before the current one.
    prev_members: Vec<NodeId>,
    not_tie_breakers: Vec<NodeId>,
    quorate: bool,
    lms_deadline: Option<Instant>,
}

impl Quorum {
    /// A calculator for the configured nodes and their votes.
    pub fn new(settings: QuorumSettings, nodes: impl IntoIterator<Item = (NodeId, u32)>) -> Self {
        let votes: BTreeMap<NodeId, u32> = nodes.into_iter().collect();
        let sum: u32 = votes.values().sum();
        let configured_expected = settings.expected_votes.unwrap_or(sum).max(1);
        let wfa = settings.wait_for_all || settings.two_node;
        Quorum {
            settings,
            votes,
            configured_expected,
            expected: configured_expected,
            wfa_satisfied: !wfa,
            members: Vec::new(),
            prev_members: Vec::new(),
            not_tie_breakers: Vec::new(),
            quorate: false,
            lms_deadline: None,
        }
    }

    fn two_node_active(&self) -> bool {
        // votequorum ignores two_node unless exactly two votes are expected.
        self.settings.two_node && self.configured_expected == 2
    }

    fn view_votes(&self) -> u32 {
        self.members.iter().map(|n| self.votes.get(n).copied().unwrap_or(0)).sum()
    }

    /// Votes needed to be quorate under the current expected votes.
    pub fn threshold(&self) -> u32 {
        if self.two_node_active() { 1 } else { self.expected / 2 + 1 }
    }

    /// Keep these nodes (vote-only witnesses) out of the lowest/highest tie-breaker choice.
    pub fn exclude_from_tie_break(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        self.not_tie_breakers.extend(ids);
    }

    fn tie_breaker_node(&self) -> Option<NodeId> {
        let mut candidates = self.votes.keys().filter(|n| !self.not_tie_breakers.contains(n));
        match &self.settings.tie_breaker {
            TieBreaker::Lowest => candidates.next().copied(),
            TieBreaker::Highest => candidates.next_back().copied(),
            TieBreaker::Nodes(list) => list
                .iter()
                .find(|n| self.prev_members.contains(n) || self.members.contains(n))
                .copied(),
        }
    }

    fn compute(&self) -> bool {
        if !self.wfa_satisfied {
            return false;
        }
        let v = self.view_votes();
        if v >= self.threshold() {
            return true;
        }
        self.settings.auto_tie_breaker
            && v.saturating_mul(2) == self.expected
            && self.tie_breaker_node().is_some_and(|t| self.members.contains(&t))
    }

    /// Whether the view is quorate *and* the members this node can hear right now (`present`, itself
    /// included) still carry quorum: a node cut off from its peers stops being quorate as soon as it
    /// suspects them, before the rest of the cluster commits a view without it.
    pub fn quorate_with(&self, present: &[NodeId]) -> bool {
        if !self.quorate {
            return false;
        }
        let v: u32 = present
            .iter()
            .filter(|n| self.members.contains(n))
            .map(|n| self.votes.get(n).copied().unwrap_or(0))
            .sum();
        if v >= self.threshold() {
            return true;
        }
        self.settings.auto_tie_breaker
            && v.saturating_mul(2) == self.expected
            && self.tie_breaker_node().is_some_and(|t| present.contains(&t))
    }

    /// Feed a newly installed view; returns the new quorate flag if it changed.
    pub fn on_view(&mut self, now: Instant, members: &[NodeId]) -> Option<bool> {
        self.prev_members = std::mem::replace(&mut self.members, members.to_vec());
        let v = self.view_votes();
        let all: u32 = self.votes.values().sum();
        if !self.wfa_satisfied && v >= all {
            self.wfa_satisfied = true;
        }
        if v > self.expected {
            // More votes present than expected: votequorum raises expected votes to match.
            self.expected = v;
        }
        let was = self.quorate;
        self.quorate = self.compute();
        self.lms_deadline = None;
        if self.settings.last_man_standing && self.quorate && v < self.expected {
            self.lms_deadline = Some(now + self.settings.lms_window);
        }
        (was != self.quorate).then_some(self.quorate)
    }

    /// Fire the last_man_standing timer; returns the new quorate flag if it changed.
    pub fn on_timeout(&mut self, now: Instant) -> Option<bool> {
        match self.lms_deadline {
            Some(d) if now >= d => {
                self.lms_deadline = None;
                if self.quorate {
                    // votequorum never lowers below two votes; auto_tie_breaker covers the last tie.
                    self.expected = self.view_votes().max(2).min(self.expected);
                }
                let was = self.quorate;
                self.quorate = self.compute();
                (was != self.quorate).then_some(self.quorate)
            }
            _ => None,
        }
    }

    /// When `on_timeout` next needs to run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lms_deadline
    }

    /// Whether the current view is quorate.
    pub fn quorate(&self) -> bool {
        self.quorate
    }

    /// Forget the view (this node left or lost its view): not quorate.
    pub fn clear(&mut self) -> Option<bool> {
        self.members.clear();
        self.lms_deadline = None;
        let was = self.quorate;
        self.quorate = false;
        was.then_some(false)
    }

    /// Snapshot for status output.
    pub fn status(&self) -> QuorumStatus {
        let mut flags = Vec::new();
        if self.quorate {
            flags.push("Quorate");
        }
        if self.settings.wait_for_all || self.settings.two_node {
            flags.push("WaitForAll");
        }
        if self.two_node_active() {
            flags.push("2Node");
        }
        if self.settings.last_man_standing {
            flags.push("LastManStanding");
        }
        if self.settings.auto_tie_breaker {
            flags.push("AutoTieBreaker");
        }
        QuorumStatus {
            total_votes: self.view_votes(),
            expected_votes: self.expected,
            quorum: self.threshold(),
            quorate: self.quorate,
            flags,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<NodeId> {
        v.iter().map(|&i| NodeId(i)).collect()
    }

    fn q(settings: QuorumSettings, n: u32) -> Quorum {
        Quorum::new(settings, (1..=n).map(|i| (NodeId(i), 1)))
    }

    #[test]
    fn simple_majority() {
        let t = Instant::now();
        let mut q = q(QuorumSettings::default(), 3);
        assert_eq!(q.on_view(t, &ids(&[1])), None);
        assert_eq!(q.on_view(t, &ids(&[1, 2])), Some(true));
        assert_eq!(q.status().quorum, 2);
        assert_eq!(q.on_view(t, &ids(&[3])), Some(false));
    }

    #[test]
    fn two_node_implies_wait_for_all() {
        let t = Instant::now();
        let s = QuorumSettings { two_node: true, ..Default::default() };
        let mut a = q(s.clone(), 2);
        assert!(a.on_view(t, &ids(&[1])).is_none(), "alone at start: waiting for all");
        assert_eq!(a.on_view(t, &ids(&[1, 2])), Some(true));
        assert_eq!(a.on_view(t, &ids(&[1])), None, "stays quorate with one of two");
        assert!(a.quorate());
        assert_eq!(a.status().flags, vec!["Quorate", "WaitForAll", "2Node"]);
    }

    #[test]
    fn wait_for_all_blocks_until_everyone_seen() {
        let t = Instant::now();
        let s = QuorumSettings { wait_for_all: true, ..Default::default() };
        let mut a = q(s, 3);
        assert!(a.on_view(t, &ids(&[1, 2])).is_none());
        assert_eq!(a.on_view(t, &ids(&[1, 2, 3])), Some(true));
        assert!(a.on_view(t, &ids(&[1, 2])).is_none(), "after that, plain majority");
        assert!(a.quorate());
    }

    #[test]
    fn last_man_standing_lowers_expected_after_window() {
        let t = Instant::now();
        let s = QuorumSettings { last_man_standing: true, lms_window: Duration::from_secs(10), ..Default::default() };
        let mut a = q(s, 5);
        a.on_view(t, &ids(&[1, 2, 3, 4, 5]));
        a.on_view(t, &ids(&[1, 2, 3]));
        assert!(a.quorate());
        assert_eq!(a.poll_timeout(), Some(t + Duration::from_secs(10)));
        assert_eq!(a.on_timeout(t + Duration::from_secs(9)), None);
        a.on_timeout(t + Duration::from_secs(10));
        assert_eq!(a.status().expected_votes, 3);
        a.on_view(t, &ids(&[1, 2]));
        assert!(a.quorate(), "2 of expected 3");
        a.on_timeout(t + Duration::from_secs(20));
        assert_eq!(a.status().expected_votes, 2);
        assert_eq!(a.on_view(t, &ids(&[1])), Some(false), "never below two without a tie breaker");
        a.on_view(t, &ids(&[1, 2, 3, 4]));
        assert_eq!(a.status().expected_votes, 4, "raised again when votes return");
    }

    #[test]
    fn auto_tie_breaker_favours_lowest() {
        let t = Instant::now();
        let s = QuorumSettings { auto_tie_breaker: true, ..Default::default() };
        let mut a = q(s.clone(), 4);
        assert_eq!(a.on_view(t, &ids(&[1, 2])), Some(true));
        let mut b = q(s, 4);
        assert_eq!(b.on_view(t, &ids(&[3, 4])), None);
        assert!(!b.quorate());
    }

    #[test]
    fn tie_breaker_list_uses_the_shared_previous_view() {
        let t = Instant::now();
        let s = QuorumSettings {
            auto_tie_breaker: true,
            tie_breaker: TieBreaker::Nodes(vec![NodeId(9), NodeId(3), NodeId(1)]),
            ..Default::default()
        };
        let full = ids(&[1, 2, 3, 4]);
        let mut a = Quorum::new(s.clone(), (1..=4).map(|i| (NodeId(i), 1)));
        let mut b = a.clone();
        a.on_view(t, &full);
        b.on_view(t, &full);
        // Node 9 was not in the shared view, so node 3 decides: its half wins, the other loses.
        assert_eq!(a.on_view(t, &ids(&[3, 4])), None);
        assert!(a.quorate());
        assert_eq!(b.on_view(t, &ids(&[1, 2])), Some(false));
    }

    #[test]
    fn a_witness_is_never_the_tie_breaker() {
        let t = Instant::now();
        let s = QuorumSettings { auto_tie_breaker: true, tie_breaker: TieBreaker::Highest, ..Default::default() };
        // Four voting nodes and a zero-vote witness 5: on a 2|2 split the highest *node*, 4, decides.
        let votes = [(NodeId(1), 1), (NodeId(2), 1), (NodeId(3), 1), (NodeId(4), 1), (NodeId(5), 0)];
        let mut a = Quorum::new(s, votes);
        a.exclude_from_tie_break([NodeId(5)]);
        let mut b = a.clone();
        a.on_view(t, &ids(&[1, 2, 5]));
        assert!(!a.quorate(), "the witness's side must not win the tie");
        b.on_view(t, &ids(&[3, 4]));
        assert!(b.quorate());
    }

    #[test]
    fn witness_breaks_two_node_tie() {
        // Two nodes plus a vote-only witness: 3 votes, quorum 2; whichever node keeps the witness wins.
        let t = Instant::now();
        let mut a = Quorum::new(QuorumSettings::default(), [(NodeId(1), 1), (NodeId(2), 1), (NodeId(9), 1)]);
        assert_eq!(a.on_view(t, &ids(&[1, 9])), Some(true));
        assert_eq!(a.on_view(t, &ids(&[2])), Some(false));
    }
}
