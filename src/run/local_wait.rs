//! Waiting for a run step on a local host: read its status files, fast at first (short steps end in
//! milliseconds), with the supervisor's full probe (liveness, heartbeat, stall) about once a second.

use std::time::Duration;

use crate::error::Result;
use crate::event::Event;
use crate::host::local::LocalHost;
use crate::host::protocol::HostState;
use crate::host::HostStatus;
use crate::plan::RunSpec;
use crate::run::run_step::Ended;
use crate::run::stall::{Beat, StallWatch};
use crate::run::step::{last_line, Job, Msg, Outcome};
use crate::target::local::CANCEL_GRACE;

impl Job {
    pub(crate) async fn wait_local(
        &self,
        host: &LocalHost,
        spec: &RunSpec,
        mut status: HostStatus,
    ) -> Result<Ended> {
        let id = &self.step.id;
        let poll = self.ctx.poll;
        let mut cancel = self.cancel.clone();
        let mut last_progress = None;
        // Every 2 ms at first, backing off by 1.5x to `poll`. The cheap check reads the exit code directly.
        let mut delays = crate::backoff::Backoff::new(Duration::from_millis(2), 1.5, poll).delays();
        let mut last_probe = tokio::time::Instant::now();
        let mut stall = spec.heartbeat.stale_after.map(StallWatch::new);
        while !status.is_finished() && status.state != HostState::Lost {
            self.report_progress(&status, &mut last_progress);
            tokio::select! {
                _ = tokio::time::sleep(delays.next().unwrap_or(poll)) => {}
                changed = cancel.changed() => {
                    if changed.is_ok() && *cancel.borrow() {
                        host.cancel(id, CANCEL_GRACE).await?;
                        return Ok(Ended::Decided(Outcome::Cancelled));
                    }
                }
            }
            if let Some(done) = host.finished(id, self.attempt) {
                status = done;
            } else if last_probe.elapsed() >= Duration::from_secs(1) {
                last_probe = tokio::time::Instant::now();
                status = host.status(id).await?;
                if let Some(watch) = stall.as_mut() {
                    let beat = std::fs::read_to_string(host.status_dir(id).join("heartbeat.json"))
                        .ok()
                        .and_then(|t| Beat::parse(&t));
                    if let Some(reason) = watch.observe(beat, std::time::Instant::now()) {
                        host.cancel(id, CANCEL_GRACE).await?;
                        return Ok(Ended::Decided(Outcome::Failed {
                            error: reason,
                            help: None,
                        }));
                    }
                }
            }
        }
        self.keep_log(host);
        self.report_progress(&status, &mut last_progress);
        let (outputs, problems) = match status.state {
            HostState::Succeeded => host.outputs(id),
            _ => Default::default(),
        };
        for message in problems {
            let _ = self.tx.send(Msg::Event(Event::Notice {
                message: format!("  warning  {id}: {message}"),
            }));
        }
        // The log's last line explains a failure; a success needs no read of it.
        let tail = match status.state {
            HostState::Succeeded => String::new(),
            _ => last_line(&host.log_path(id)),
        };
        Ok(Ended::Reported {
            tail,
            status,
            outputs,
            unanswered: None,
        })
    }

    /// Passes on the step's progress when it changed.
    fn report_progress(&self, status: &HostStatus, last: &mut Option<String>) {
        if status.progress.is_some() && status.progress != *last {
            last.clone_from(&status.progress);
            let _ = self.tx.send(Msg::Progress {
                step: self.index,
                progress: status.progress.clone().unwrap_or_default(),
            });
        }
    }

    /// Copies the attempt's log beside the run's state: teardown deletes the host, and `plan logs` must still work.
    fn keep_log(&self, host: &LocalHost) {
        let id = &self.step.id;
        let Some(to) = crate::run::step_logs::kept_path(
            &self.ctx.state_location,
            &self.ctx.plan_name,
            &self.ctx.run_id,
            id,
            self.attempt,
        ) else {
            return;
        };
        if let Err(e) = crate::run::step_logs::keep(&host.log_path(id), &to) {
            tracing::warn!("step `{id}`: the log was not kept: {e}");
        }
    }
}
