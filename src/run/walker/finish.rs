//! How a walk ends: the run's final status and exit code, the root cause, and the `notify:` of the end.

use super::Walker;
use crate::error::{exit, Result};
use crate::event::Event;
use crate::state::{self, RunStatus, StepStatus};

impl Walker<'_> {
    pub(super) async fn finish(&mut self) -> Result<i32> {
        let all_final = self
            .plan
            .steps
            .iter()
            .all(|s| self.state.step(&s.id).status.is_final())
            // Nor while a step that left the plan still runs (on AWS it is not cancelled for us).
            && self.state.steps.values().all(|s| s.status != StepStatus::Running);
        let (status, code) = if !all_final || self.left_running || self.stopping > 0 {
            (RunStatus::Interrupted, exit::RUNNING)
        } else if self.run_failed() || self.over_budget.is_some() {
            (RunStatus::Failed, exit::FAILED)
        } else {
            (RunStatus::Succeeded, exit::OK)
        };
        self.state.status = status;
        if status.is_finished() {
            self.state.finished_at = Some(state::now());
        }
        // One write: the whole document, which also closes the walk's journal.
        self.store.end_journal(&mut self.state).await?;
        if let Some(root) = self.root_cause() {
            self.reporter.emit(&Event::Notice { message: root });
        }
        self.notify_end(status).await;
        if code == exit::RUNNING {
            self.reporter.emit(&Event::Notice {
                message: format!(
                    "the run is not finished; continue it with `plan apply {}` (status: `plan status {}`)",
                    self.plan.file.display(),
                    self.plan.file.display()
                ),
            });
        }
        self.reporter.emit(&Event::RunFinished {
            run: self.state.run_id.clone(),
            status: status.as_str().into(),
            exit_code: code,
        });
        Ok(code)
    }

    /// `notify:` of a finished run: its root cause, or its success (after the stall notices still on their way).
    pub(super) async fn notify_end(&mut self, status: RunStatus) {
        for sent in std::mem::take(&mut self.notifications) {
            for warning in sent.await.unwrap_or_default() {
                self.reporter.emit(&Event::Notice { message: warning });
            }
        }
        let duration = self.state.finished_at.unwrap_or_else(state::now) - self.state.started_at;
        let what = match (status, self.failure()) {
            (RunStatus::Failed, Some((step, error))) => {
                crate::notify::Happening::Failed { step, error }
            }
            (RunStatus::Succeeded, _) => crate::notify::Happening::Succeeded {
                duration_secs: duration,
            },
            _ => return,
        };
        for warning in crate::notify::send(self.plan, &self.state.run_id, what).await {
            self.reporter.emit(&Event::Notice { message: warning });
        }
    }

    /// What failed the run: the budget (no step), or the first failed step in topological order and its error.
    pub(super) fn failure(&self) -> Option<(Option<&str>, &str)> {
        if let Some(why) = &self.over_budget {
            return Some((None, why.as_str()));
        }
        self.plan.dag.order().iter().find_map(|&i| {
            let st = self.state.step(self.id(i));
            (st.status == StepStatus::Failed)
                .then(|| (Some(self.id(i)), st.error.as_deref().unwrap_or("")))
        })
    }

    /// The root cause line, printed once at the end of a failed run.
    pub(super) fn root_cause(&self) -> Option<String> {
        self.failure().map(|(step, error)| match step {
            Some(step) => format!("root cause: step `{step}` failed: {error}"),
            None => format!("root cause: {error}"),
        })
    }
}
