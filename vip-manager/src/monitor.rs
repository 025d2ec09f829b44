//! Monitor scheduling, sans-IO: which (resource, node) monitor is due, and what its results mean.
//!
//! Lifecycle of one monitor entry (keyed by resource and node):
//! - `Idle { next_due }` — [`MonitorScheduler::poll_due`] at or after `next_due` moves it to
//!   `InFlight { deadline }` and hands out a [`MonitorRequest`].
//! - `InFlight` — [`MonitorScheduler::on_result`] records the outcome and returns to `Idle` with
//!   `next_due = now + interval`; if `deadline` passes first, [`MonitorScheduler::handle_timeout`]
//!   counts a timeout as a failure (a late result for it is then ignored).
//! - [`MonitorScheduler::stop`] removes the entry (resource stopped or moved away).
//!
//! Every failure is reported once as a [`MonitorEvent::Failed`] and counted per (node, resource);
//! the engine turns it into a fail-count record and a recovery according to on-fail.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::model::{NodeId, ResourceId};

/// The outcome of one monitor run, with OCF's meaning of exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorOutcome {
    /// OCF_SUCCESS (0): running.
    Running,
    /// OCF_NOT_RUNNING (7): cleanly stopped (a failure for a resource that should run).
    NotRunning,
    /// Any other exit code.
    Failed(i32),
    /// No answer before the operation timeout.
    TimedOut,
}

impl MonitorOutcome {
    /// Maps an OCF exit code.
    pub fn from_exit_code(code: i32) -> Self {
        match code {
            0 => MonitorOutcome::Running,
            7 => MonitorOutcome::NotRunning,
            c => MonitorOutcome::Failed(c),
        }
    }

    /// True when the resource is healthy.
    pub fn is_ok(self) -> bool {
        self == MonitorOutcome::Running
    }
}

/// A monitor the driver should run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorRequest {
    /// Resource to check.
    pub rsc: ResourceId,
    /// Node it runs on.
    pub node: NodeId,
    /// The driver should give up (and may report `TimedOut`) at this time.
    pub deadline: Instant,
}

/// What the engine learns from monitors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// The resource failed on the node.
    Failed { rsc: ResourceId, node: NodeId, outcome: MonitorOutcome },
}

/// Counters per (node, resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonitorStats {
    /// Monitor runs completed (including timeouts).
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Last failing outcome.
    pub last_failure: Option<MonitorOutcome>,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle { next_due: Instant },
    InFlight { deadline: Instant },
}

#[derive(Debug, Clone)]
struct Entry {
    interval: Duration,
    timeout: Duration,
    phase: Phase,
    stats: MonitorStats,
}

/// Schedules recurring monitors of the resources active on this node (or in a simulation, all).
#[derive(Debug, Default)]
pub struct MonitorScheduler {
    entries: BTreeMap<(ResourceId, NodeId), Entry>,
}

impl MonitorScheduler {
    /// No monitors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts monitoring `rsc` on `node`: first run one interval after `now` (the start operation
    /// just proved it running). Restarting an existing entry keeps its counters.
    pub fn start(&mut self, rsc: &ResourceId, node: NodeId, interval: Duration, timeout: Duration, now: Instant) {
        let interval = interval.max(Duration::from_millis(1));
        let stats = self.entries.get(&(rsc.clone(), node)).map(|e| e.stats).unwrap_or_default();
        self.entries.insert(
            (rsc.clone(), node),
            Entry { interval, timeout, phase: Phase::Idle { next_due: now + interval }, stats },
        );
    }

    /// Stops monitoring `rsc` on `node`.
    pub fn stop(&mut self, rsc: &ResourceId, node: NodeId) {
        self.entries.remove(&(rsc.clone(), node));
    }

    /// Monitors due at `now`; each is marked in flight.
    pub fn poll_due(&mut self, now: Instant) -> Vec<MonitorRequest> {
        let mut out = Vec::new();
        for ((rsc, node), e) in self.entries.iter_mut() {
            if let Phase::Idle { next_due } = e.phase
                && next_due <= now
            {
                let deadline = now + e.timeout;
                e.phase = Phase::InFlight { deadline };
                out.push(MonitorRequest { rsc: rsc.clone(), node: *node, deadline });
            }
        }
        out
    }

    /// The next time something is due (a monitor or a timeout), for the driver's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|e| match e.phase {
                Phase::Idle { next_due } => next_due,
                Phase::InFlight { deadline } => deadline,
            })
            .min()
    }

    /// Records a result; returns an event when it is a failure. Results for monitors not in flight
    /// (stopped, or already timed out) are ignored.
    pub fn on_result(
        &mut self,
        rsc: &ResourceId,
        node: NodeId,
        outcome: MonitorOutcome,
        now: Instant,
    ) -> Option<MonitorEvent> {
        let e = self.entries.get_mut(&(rsc.clone(), node))?;
        if !matches!(e.phase, Phase::InFlight { .. }) {
            return None;
        }
        Self::complete(e, rsc, node, outcome, now)
    }

    /// This process did not run for a while (a stall): time it spent frozen is not the agent's,
    /// so every in-flight monitor gets its whole timeout again from `now`.
    pub fn stalled(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            if let Phase::InFlight { deadline } = &mut e.phase {
                *deadline = (*deadline).max(now + e.timeout);
            }
        }
    }

    /// Fails every in-flight monitor whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<MonitorEvent> {
        let mut out = Vec::new();
        for ((rsc, node), e) in self.entries.iter_mut() {
            if let Phase::InFlight { deadline } = e.phase
                && deadline <= now
            {
                out.extend(Self::complete(e, rsc, *node, MonitorOutcome::TimedOut, now));
            }
        }
        out
    }

    fn complete(
        e: &mut Entry,
        rsc: &ResourceId,
        node: NodeId,
        outcome: MonitorOutcome,
        now: Instant,
    ) -> Option<MonitorEvent> {
        e.phase = Phase::Idle { next_due: now + e.interval };
        e.stats.runs += 1;
        if outcome.is_ok() {
            e.stats.consecutive_failures = 0;
            None
        } else {
            e.stats.failures += 1;
            e.stats.consecutive_failures = e.stats.consecutive_failures.saturating_add(1);
            e.stats.last_failure = Some(outcome);
            Some(MonitorEvent::Failed { rsc: rsc.clone(), node, outcome })
        }
    }

    /// Counters of `rsc` on `node`.
    pub fn stats(&self, rsc: &ResourceId, node: NodeId) -> Option<MonitorStats> {
        self.entries.get(&(rsc.clone(), node)).map(|e| e.stats)
    }

    /// Number of monitored (resource, node) pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is monitored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ResourceId {
        ResourceId::new(s)
    }
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn monitors_fire_on_their_interval() {
        let t0 = Instant::now();
        let mut m = MonitorScheduler::new();
        m.start(&r("a"), NodeId(1), 10 * S, 5 * S, t0);
        m.start(&r("b"), NodeId(1), 3 * S, 5 * S, t0);
        assert!(m.poll_due(t0).is_empty());
        assert_eq!(m.poll_timeout(), Some(t0 + 3 * S));
        let due = m.poll_due(t0 + 3 * S);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].rsc, r("b"));
        assert!(m.poll_due(t0 + 4 * S).is_empty(), "in flight is not handed out twice");
        assert_eq!(m.on_result(&r("b"), NodeId(1), MonitorOutcome::Running, t0 + 4 * S), None);
        assert_eq!(m.poll_timeout(), Some(t0 + 7 * S));
        let due = m.poll_due(t0 + 10 * S);
        assert_eq!(due.len(), 2);
        assert_eq!(m.stats(&r("b"), NodeId(1)).unwrap().runs, 1);
    }

    #[test]
    fn failures_are_counted_per_node_and_resource() {
        let t0 = Instant::now();
        let mut m = MonitorScheduler::new();
        m.start(&r("a"), NodeId(1), S, S, t0);
        m.start(&r("a"), NodeId(2), S, S, t0);
        m.poll_due(t0 + S);
        let ev = m.on_result(&r("a"), NodeId(2), MonitorOutcome::from_exit_code(7), t0 + S);
        assert_eq!(
            ev,
            Some(MonitorEvent::Failed { rsc: r("a"), node: NodeId(2), outcome: MonitorOutcome::NotRunning })
        );
        assert_eq!(m.on_result(&r("a"), NodeId(2), MonitorOutcome::Running, t0 + S), None, "not in flight");
        m.on_result(&r("a"), NodeId(1), MonitorOutcome::Running, t0 + S);
        let s2 = m.stats(&r("a"), NodeId(2)).unwrap();
        assert_eq!((s2.runs, s2.failures, s2.consecutive_failures), (1, 1, 1));
        let s1 = m.stats(&r("a"), NodeId(1)).unwrap();
        assert_eq!((s1.runs, s1.failures), (1, 0));
    }

    #[test]
    fn a_stall_rearms_in_flight_timeouts() {
        let t0 = Instant::now();
        let mut m = MonitorScheduler::new();
        let r = ResourceId::new("lb");
        m.start(&r, NodeId(1), S, S, t0);
        assert_eq!(m.poll_due(t0 + S).len(), 1);
        // Frozen for 10 s with the monitor in flight: its result is still in the queue.
        m.stalled(t0 + 11 * S);
        assert!(m.handle_timeout(t0 + 11 * S).is_empty());
        assert_eq!(m.on_result(&r, NodeId(1), MonitorOutcome::Running, t0 + 11 * S), None);
        assert_eq!(m.stats(&r, NodeId(1)).map(|s| s.failures), Some(0));
    }

    #[test]
    fn timeouts_count_as_failures_and_late_results_are_ignored() {
        let t0 = Instant::now();
        let mut m = MonitorScheduler::new();
        m.start(&r("a"), NodeId(1), S, 2 * S, t0);
        m.poll_due(t0 + S);
        assert!(m.handle_timeout(t0 + 2 * S).is_empty());
        let ev = m.handle_timeout(t0 + 3 * S);
        assert_eq!(ev.len(), 1);
        assert!(matches!(ev[0], MonitorEvent::Failed { outcome: MonitorOutcome::TimedOut, .. }));
        assert_eq!(m.on_result(&r("a"), NodeId(1), MonitorOutcome::Running, t0 + 3 * S), None);
        m.stop(&r("a"), NodeId(1));
        assert!(m.is_empty());
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn exit_codes_follow_ocf() {
        assert_eq!(MonitorOutcome::from_exit_code(0), MonitorOutcome::Running);
        assert_eq!(MonitorOutcome::from_exit_code(7), MonitorOutcome::NotRunning);
        assert_eq!(MonitorOutcome::from_exit_code(1), MonitorOutcome::Failed(1));
    }
}
