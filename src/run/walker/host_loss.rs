//! A host that went away under a running step (terminated, stopped, impaired, reclaimed by spot) is
//! re-provisioned within the apply (DESIGN.md: "a host that is gone makes its steps run again").
//!
//! The step's attempt fails, and when the step may run again (retries left, nothing stopping the run) its host's
//! instance step runs again first: the old instance is terminated (a stopped or impaired one would still cost and
//! leak), a new one is launched, in the old zone when a volume outlived the host (the volume step keeps its token
//! and re-attaches the same volume, data and all), and the steps that ran on the host run again after it, because
//! what they left on its disk went with it. Steps that were running on it fail as their watches notice, and retry
//! on the new host within their own budgets.

use super::Walker;
use crate::error::Result;
use crate::event::Event;
use crate::plan::StepKind;
use crate::state::{self, StepStatus};

/// Re-provisions of one host in one apply, at most: a zone that keeps losing hosts will not keep the next.
const MAX_REPLACEMENTS: u32 = 2;

impl Walker<'_> {
    /// Step `i` lost its host `instance_id`. Returns the error its attempt ends with, and whether it may run again
    /// (on a new host).
    pub(super) async fn host_lost(
        &mut self,
        i: usize,
        instance_id: &str,
        error: String,
    ) -> Result<(String, bool)> {
        let step = &self.plan.steps[i];
        let StepKind::Run(run) = &step.kind else {
            return Ok((error, false));
        };
        if !self.may_retry(i) {
            return Ok((error, false));
        }
        let Some(host) = self.plan.steps.iter().position(|s| s.id == run.on) else {
            return Ok((error, false));
        };
        let host_id = run.on.clone();
        let hs = self.state.step(&host_id);
        let current = hs.status == StepStatus::Succeeded
            && hs.outputs.get("instance_id").map(String::as_str) == Some(instance_id);
        if !current {
            // Another step on it noticed first: the host is being re-provisioned already.
            return Ok((error, true));
        }
        let count = self.replaced.entry(host).or_default();
        if *count >= MAX_REPLACEMENTS {
            let error = format!(
                "{error} (host `{host_id}` was re-provisioned {MAX_REPLACEMENTS} times in this apply already)"
            );
            return Ok((error, false));
        }
        *count += 1;
        let crate::target::Target::Aws(aws) = &self.ctx.target else {
            return Ok((error, false));
        };
        if let Err(e) = aws.provider.terminate_instance(instance_id).await {
            return Ok((format!("{error}; not re-provisioned: {e}"), false));
        }
        let rerun = self.forget_host(i, host);
        self.checkpoint().await?;
        self.reporter.emit(&Event::HostReplaced {
            step: host_id,
            instance_id: instance_id.to_string(),
            reason: error.clone(),
            rerun,
        });
        Ok((error, true))
    }

    /// Marks host `host` as gone (its instance destroyed, its step to run again) and sends the succeeded steps on
    /// it (other than `lost`) back to pending. Returns those steps.
    fn forget_host(&mut self, lost: usize, host: usize) -> Vec<String> {
        let host_id = self.plan.steps[host].id.clone();
        let at = state::now();
        let hs = self.state.step_mut(&host_id);
        for r in hs.resources.iter_mut().filter(|r| !r.destroyed) {
            r.destroyed = true;
            r.destroyed_at = Some(at);
        }
        hs.status = StepStatus::Pending;
        hs.finished_at = None;
        let mut rerun = Vec::new();
        for (j, s) in self.plan.steps.iter().enumerate() {
            let on_host = match &s.kind {
                StepKind::Run(r) => r.on == host_id,
                StepKind::Volume(v) => v.attach_to == host_id,
                _ => false,
            };
            let st = self.state.step_mut(&s.id);
            if j != lost && on_host && st.status == StepStatus::Succeeded {
                st.status = StepStatus::Pending;
                st.finished_at = None;
                rerun.push(s.id.clone());
            }
        }
        rerun
    }

    /// The zone an instance step must launch in: its previous zone, when a volume attached to it outlived it.
    pub(super) fn placement(&self, i: usize) -> Option<String> {
        let host = &self.plan.steps[i];
        if !matches!(host.kind, StepKind::Instance(_)) {
            return None;
        }
        let volume_outlived = self.plan.steps.iter().any(|s| {
            matches!(&s.kind, StepKind::Volume(v) if v.attach_to == host.id)
                && self
                    .state
                    .step(&s.id)
                    .resources
                    .iter()
                    .any(|r| !r.destroyed)
        });
        volume_outlived
            .then(|| {
                self.state
                    .step(&host.id)
                    .outputs
                    .get("availability_zone")
                    .cloned()
            })
            .flatten()
    }
}
