//! How a walk stops early: an interrupt (Ctrl-C, SIGTERM), `--wait` running out, or `budget:` reached.

use tokio::sync::watch;

use super::Walker;
use crate::error::Result;
use crate::event::Event;
use crate::plan::StepKind;
use crate::state::{self, StepStatus};

impl Walker<'_> {
    /// First interrupt: start nothing new and stop watching detached steps (they keep running on their hosts and
    /// are re-attached by the next apply); attached steps are waited for. Second: cancel the attached steps too.
    pub(super) fn interrupt(&mut self, cancel: &watch::Sender<bool>) {
        self.stopping += 1;
        if self.stopping > 1 {
            let _ = cancel.send(true);
            return;
        }
        self.retry_at.clear();
        let detached: Vec<usize> = self
            .running
            .keys()
            .copied()
            .filter(|&i| matches!(&self.plan.steps[i].kind, StepKind::Run(r) if r.detach))
            .collect();
        for i in detached {
            if let Some(task) = self.tasks.remove(&i) {
                task.abort();
            }
            self.running.remove(&i);
            self.left_running = true;
            self.reporter.emit(&Event::Notice {
                message: format!("  detached {} keeps running on its host", self.id(i)),
            });
        }
        self.reporter.emit(&Event::Notice {
            message: "interrupted: starting no new steps; waiting for attached steps (Ctrl-C again to cancel them)".into(),
        });
    }

    /// `--wait` ran out: start nothing new, and stop watching every run step. A run step outlives `plan` on its
    /// host, attached or detached (the host protocol), so the next apply re-attaches it exactly as after a crash.
    /// Instance, volume and teardown steps work inside this process: they are finished first, as they are short
    /// and bounded by their own waits.
    pub(super) fn out_of_time(&mut self) {
        self.stopping = 1;
        self.retry_at.clear();
        let mut left: Vec<usize> = self
            .running
            .keys()
            .copied()
            .filter(|&i| matches!(&self.plan.steps[i].kind, StepKind::Run(_)))
            .collect();
        left.sort_unstable();
        for &i in &left {
            if let Some(task) = self.tasks.remove(&i) {
                task.abort();
            }
            self.running.remove(&i);
            self.left_running = true;
        }
        let waited = self.opts.deadline.map(|(_, d)| d).unwrap_or_default();
        let names: Vec<&str> = left.iter().map(|&i| self.id(i)).collect();
        self.reporter.emit(&Event::Notice {
            message: if names.is_empty() {
                format!(
                    "--wait {}: time is up; starting no new steps",
                    humantime::format_duration(waited)
                )
            } else {
                format!(
                    "--wait {}: time is up; starting no new steps; left running on their hosts: {}",
                    humantime::format_duration(waited),
                    names.join(", ")
                )
            },
        });
    }

    /// `budget:` reached: start nothing new but the teardowns, cancel the running run steps (the cancel signal
    /// reaches only run steps; instance and volume steps finish their short create calls, and the teardowns then
    /// remove what they made), and remember why the run will end failed.
    pub(super) async fn check_budget(&mut self, cancel: &watch::Sender<bool>) -> Result<()> {
        if self.over_budget.is_some() {
            return Ok(());
        }
        let Some(message) = crate::cost::over_budget(self.plan, &self.state, state::now()) else {
            return Ok(());
        };
        self.reporter.emit(&Event::Notice {
            message: format!("{message}: cancelling the run steps and tearing down"),
        });
        self.retry_at.clear();
        let _ = cancel.send(true);
        for &i in self.plan.dag.order() {
            let teardown = matches!(self.plan.steps[i].kind, StepKind::Teardown(_));
            if teardown || self.running.contains_key(&i) || self.status(i) != StepStatus::Pending {
                continue;
            }
            let id = self.id(i).to_string();
            let st = self.state.step_mut(&id);
            st.status = StepStatus::Cancelled;
            st.error = Some(format!("not started: {message}"));
            self.reporter.emit(&Event::StepFinished {
                step: id,
                status: "cancelled".into(),
                attempt: st.attempt,
                duration_secs: 0.0,
                error: Some(message.clone()),
                help: None,
            });
            self.frontier.ended(self.plan, &self.state, i);
        }
        self.over_budget = Some(message);
        self.checkpoint().await
    }
}
