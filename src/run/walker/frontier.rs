//! Which steps the walker looks at: those whose dependencies have all ended. It is kept up to date as steps end
//! (a count of unfinished dependencies per step), so a scheduling pass costs what it starts, not the size of the
//! plan: scanning every step on every event made a 2,000-step walk quadratic.

use std::collections::BTreeSet;

use crate::plan::Plan;
use crate::state::{RunState, StepStatus};

pub(super) struct Frontier {
    /// Step → its position in the topological order (sets below hold positions, so they iterate in that order).
    pos: Vec<usize>,
    /// Step → how many of its dependencies have not ended.
    blocked: Vec<usize>,
    /// Step → whether its end was counted in its dependents' `blocked`.
    ended: Vec<bool>,
    /// Steps that may start (pending, every dependency ended) or be re-attached.
    ready: BTreeSet<usize>,
    /// Ready pending steps whose `when:` has not been decided yet (skip or run).
    unsettled: BTreeSet<usize>,
}

impl Frontier {
    pub(super) fn new(plan: &Plan, state: &RunState, reattach: &[bool]) -> Frontier {
        let n = plan.steps.len();
        let mut pos = vec![0; n];
        for (p, &i) in plan.dag.order().iter().enumerate() {
            pos[i] = p;
        }
        let mut f = Frontier {
            pos,
            blocked: vec![0; n],
            ended: vec![false; n],
            ready: BTreeSet::new(),
            unsettled: BTreeSet::new(),
        };
        f.rescan(plan, state, reattach);
        f
    }

    /// Recounts everything from the state: at the start, and after a rare event that sends ended steps back to
    /// pending (a host re-provisioned).
    pub(super) fn rescan(&mut self, plan: &Plan, state: &RunState, reattach: &[bool]) {
        let status = |i: usize| state.step(&plan.steps[i].id).status;
        self.ready.clear();
        self.unsettled.clear();
        for i in 0..plan.steps.len() {
            self.ended[i] = status(i).is_final();
            self.blocked[i] = plan
                .dag
                .dependencies(i)
                .into_iter()
                .filter(|&d| !status(d).is_final())
                .count();
        }
        for (i, &again) in reattach.iter().enumerate() {
            let s = status(i);
            if again && s == StepStatus::Running {
                self.ready.insert(self.pos[i]);
            } else if s == StepStatus::Pending && self.blocked[i] == 0 {
                self.ready.insert(self.pos[i]);
                self.unsettled.insert(self.pos[i]);
            }
        }
    }

    /// Step `i` has ended (its status is final): it leaves the frontier, and each dependent whose last
    /// unfinished dependency it was joins it.
    pub(super) fn ended(&mut self, plan: &Plan, state: &RunState, i: usize) {
        self.ready.remove(&self.pos[i]);
        self.unsettled.remove(&self.pos[i]);
        if std::mem::replace(&mut self.ended[i], true) {
            return;
        }
        for j in plan.dag.dependents(i) {
            self.blocked[j] = self.blocked[j].saturating_sub(1);
            if self.blocked[j] == 0 && state.step(&plan.steps[j].id).status == StepStatus::Pending {
                self.ready.insert(self.pos[j]);
                self.unsettled.insert(self.pos[j]);
            }
        }
    }

    /// Step `i` started: it is no longer a candidate until it ends or waits for a retry.
    pub(super) fn started(&mut self, i: usize) {
        self.ready.remove(&self.pos[i]);
        self.unsettled.remove(&self.pos[i]);
    }

    /// Step `i` ended an attempt and waits for its next one: a candidate again (its `when:` is decided already).
    pub(super) fn retrying(&mut self, i: usize) {
        self.ready.insert(self.pos[i]);
    }

    /// The next ready step whose `when:` is to be decided, in topological order.
    pub(super) fn next_unsettled(&mut self, order: &[usize]) -> Option<usize> {
        self.unsettled.pop_first().map(|p| order[p])
    }

    /// The first ready step at or after topological position `from`, with its position.
    pub(super) fn next_ready(&self, order: &[usize], from: usize) -> Option<(usize, usize)> {
        self.ready.range(from..).next().map(|&p| (p, order[p]))
    }
}
