//! How an attempt that ended is recorded: a stall announced at once, a lost host turned into a failure, the
//! step's new status (outputs kept, secret ones in memory only; what a teardown destroyed marked so) or a retry,
//! and the events that tell of it, emitted once the checkpoint is written.

use indexmap::IndexMap;

use super::Walker;
use crate::error::Result;
use crate::event::Event;
use crate::run::step::Outcome;
use crate::state::{self, Resource, StepStatus};

/// The attempt that ended, as its `step_finished` event tells it.
struct Ended {
    step: String,
    attempt: u32,
    duration: f64,
}

impl Ended {
    fn finished(&self, status: &str, error: Option<String>, help: Option<String>) -> Event {
        Event::StepFinished {
            step: self.step.clone(),
            status: status.into(),
            attempt: self.attempt,
            duration_secs: self.duration,
            error,
            help,
        }
    }
}

impl Walker<'_> {
    pub(super) async fn done(&mut self, i: usize, outcome: Outcome) -> Result<()> {
        if let Outcome::Failed { error, .. } = &outcome {
            self.announce_stall(i, error);
        }
        self.running.remove(&i);
        self.tasks.remove(&i);
        // A step whose host went away fails this attempt; it runs again on a new host when it may.
        let host_lost = matches!(outcome, Outcome::HostLost { .. });
        let (outcome, final_failure) = match outcome {
            Outcome::HostLost { instance_id, error } => {
                let (error, again) = self.host_lost(i, &instance_id, error).await?;
                (Outcome::Failed { error, help: None }, !again)
            }
            other => (other, false),
        };
        let events = self.record(i, outcome, final_failure);
        if host_lost {
            // Steps on the lost host went back to pending: recount (rare, and bounded per apply).
            self.frontier.rescan(self.plan, &self.state, &self.reattach);
        } else if self.status(i).is_final() {
            self.frontier.ended(self.plan, &self.state, i);
        } else if self.status(i) == StepStatus::Pending {
            self.frontier.retrying(i);
        }
        self.checkpoint().await?;
        for e in events {
            self.reporter.emit(&e);
        }
        Ok(())
    }

    /// Announced at once, even when a retry follows: a stalled 15-hour step is what an operator must hear of.
    fn announce_stall(&mut self, i: usize, error: &str) {
        if !crate::run::stall::is_stall(error) {
            return;
        }
        let what = crate::notify::Happening::Stalled {
            step: self.id(i),
            error,
        };
        // Sent beside the walk: a webhook or SNS that is slow to answer must not hold up the run.
        if let Some(message) = crate::notify::outgoing(self.plan, &self.state.run_id, what) {
            self.notifications.push(tokio::spawn(message.deliver()));
        }
    }

    /// Writes how step `i`'s attempt ended into its state; returns the events that tell of it. `final_failure`:
    /// a failure that may not be retried whatever the step's retries (its lost host was not replaced).
    fn record(&mut self, i: usize, outcome: Outcome, final_failure: bool) -> Vec<Event> {
        let may_retry = self.may_retry(i);
        let id = self.id(i).to_string();
        // Marks the step changed whatever the outcome: the checkpoint that follows writes it.
        let st = self.state.step_mut(&id);
        let ended = Ended {
            duration: st.started_at.map_or(0.0, |t| state::now() - t),
            attempt: st.attempt,
            step: id,
        };
        match outcome {
            Outcome::Succeeded { outputs, resources } => self.succeeded(&ended, outputs, resources),
            Outcome::Destroyed { steps } => self.destroyed(&ended, steps),
            Outcome::Failed { error, help } if !final_failure && may_retry => {
                vec![self.schedule_retry(i, ended.attempt, error, help)]
            }
            Outcome::Failed { error, help } => vec![self.failed(&ended, error, help)],
            // (A lost host is a Failed by now; the match must still name it.)
            Outcome::HostLost { error, .. } => {
                let st = self.state.step_mut(&ended.step);
                st.status = StepStatus::Failed;
                st.finished_at = Some(state::now());
                st.error = Some(error.clone());
                vec![ended.finished("failed", Some(error), None)]
            }
            Outcome::Cancelled => vec![self.cancelled(&ended)],
            Outcome::LeftRunning => {
                self.left_running = true;
                vec![Event::Notice {
                    message: format!("  detached {} keeps running on its host", ended.step),
                }]
            }
        }
    }

    fn succeeded(
        &mut self,
        ended: &Ended,
        outputs: IndexMap<String, String>,
        resources: Vec<Resource>,
    ) -> Vec<Event> {
        let st = self.state.step_mut(&ended.step);
        st.status = StepStatus::Succeeded;
        st.finished_at = Some(state::now());
        st.error = None;
        st.help = None;
        let mut events: Vec<Event> = outputs
            .iter()
            .map(|(k, v)| Event::StepOutput {
                step: ended.step.clone(),
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        // State is shared (S3, CI artifacts): secret-looking outputs are never stored. Pass secrets through the
        // host's environment or SSM parameters instead.
        st.outputs = outputs
            .into_iter()
            .map(|(k, v)| {
                let v = if state::is_secret_name(&k) {
                    crate::scrub::add_secret(&v);
                    self.secret_outputs
                        .entry(ended.step.clone())
                        .or_default()
                        .insert(k.clone(), v);
                    crate::scrub::REDACTED.to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        if !resources.is_empty() {
            st.resources = resources;
        }
        events.push(ended.finished("succeeded", None, None));
        events
    }

    /// A teardown that succeeded: the resources of `steps` are gone.
    fn destroyed(&mut self, ended: &Ended, steps: Vec<String>) -> Vec<Event> {
        let st = self.state.step_mut(&ended.step);
        st.status = StepStatus::Succeeded;
        st.finished_at = Some(state::now());
        let at = state::now();
        for s in steps {
            for r in &mut self.state.step_mut(&s).resources {
                if !r.destroyed {
                    r.destroyed = true;
                    r.destroyed_at = Some(at);
                }
            }
        }
        vec![ended.finished("succeeded", None, None)]
    }

    fn failed(&mut self, ended: &Ended, error: String, help: Option<String>) -> Event {
        let st = self.state.step_mut(&ended.step);
        st.status = StepStatus::Failed;
        st.finished_at = Some(state::now());
        st.error = Some(error.clone());
        st.help = help.clone();
        ended.finished("failed", Some(error), help)
    }

    fn cancelled(&mut self, ended: &Ended) -> Event {
        let st = self.state.step_mut(&ended.step);
        st.status = StepStatus::Cancelled;
        st.finished_at = Some(state::now());
        st.error = Some(match &self.over_budget {
            Some(why) => format!("cancelled: {why}"),
            None => "cancelled".into(),
        });
        ended.finished("cancelled", None, None)
    }
}
