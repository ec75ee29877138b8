//! What is watched while a run step executes on an AWS host, beside the command that waits for it: the step's
//! output (a stall: it stopped growing for `heartbeat.stale_after`) and its host (stopped, terminated, reclaimed
//! by spot, impaired). Either ends the step at once with the reason, instead of after SSM's execution timeout.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{InstanceStateName, SummaryStatus};

use crate::ssm_host::SsmHost;
use crate::stall::{Beat, StallWatch};

/// Why a watched step must end now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The step's output stopped: cancel it on its host.
    Stalled(String),
    /// The host is gone or impaired: nothing on it can be reached any more.
    HostGone(String),
}

/// The stall half: where the heartbeat is uploaded, and what was seen of it.
pub struct StallProbe {
    pub watch: StallWatch,
    pub every: Duration,
    pub bucket: String,
    pub key: String,
}

pub struct StepWatch {
    stall: Option<(StallProbe, Option<u64>, Instant)>,
    ec2: aws_sdk_ec2::Client,
    host_every: Duration,
    host_next: Instant,
}

impl StepWatch {
    pub fn new(stall: Option<StallProbe>, ec2: aws_sdk_ec2::Client, host_every: Duration) -> Self {
        let now = Instant::now();
        StepWatch {
            stall: stall.map(|p| {
                let next = now + p.every;
                (p, None, next)
            }),
            ec2,
            host_every,
            host_next: now + host_every,
        }
    }

    /// How long until the next check is due.
    pub fn next_in(&self) -> Duration {
        let next = self
            .stall
            .as_ref()
            .map_or(self.host_next, |(_, _, at)| (*at).min(self.host_next));
        next.saturating_duration_since(Instant::now())
    }

    /// The host check, now, whether or not it is due.
    pub async fn host_gone(&self, instance_id: &str) -> Option<String> {
        host_gone(&self.ec2, instance_id).await
    }

    /// Runs the checks that are due; why the step must end, if it must.
    pub async fn check(&mut self, host: &SsmHost, step: &str) -> Option<Verdict> {
        let now = Instant::now();
        if now >= self.host_next {
            self.host_next = now + self.host_every;
            if let Some(reason) = host_gone(&self.ec2, &host.instance_id).await {
                return Some(Verdict::HostGone(reason));
            }
        }
        let (probe, seen_ts, next) = self.stall.as_mut()?;
        if now < *next {
            return None;
        }
        *next = now + probe.every;
        let beat = current_beat(host, step, &probe.bucket, &probe.key, seen_ts).await?;
        let stalled = probe.watch.observe(beat, Instant::now())?;
        // Output also stops when the step is over and the wait command has not said so yet: ask the host.
        match host.status(step).await {
            Ok(status) if status.is_finished() => None,
            _ => Some(Verdict::Stalled(stalled)),
        }
    }
}

/// Why the instance can no longer run the step, if it cannot: not running (stopping, stopped, shutting down,
/// terminated, or unknown to EC2, with EC2's state reason), or a failed instance or system status check. An
/// error from EC2 itself is not a verdict: it is logged and the next check tries again.
pub async fn host_gone(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Option<String> {
    let out = match ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e)
            if e.as_service_error().and_then(|s| s.meta().code())
                == Some("InvalidInstanceID.NotFound") =>
        {
            return Some(format!("host {instance_id} no longer exists"))
        }
        Err(e) => {
            tracing::warn!(
                "checking host {instance_id}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            );
            return None;
        }
    };
    let Some(instance) = out.reservations().iter().flat_map(|r| r.instances()).next() else {
        return Some(format!("host {instance_id} no longer exists"));
    };
    let state = instance.state().and_then(|s| s.name());
    if !matches!(
        state,
        Some(InstanceStateName::Running) | Some(InstanceStateName::Pending)
    ) {
        let name = state.map_or("unknown", |s| s.as_str());
        let why = instance
            .state_reason()
            .and_then(|r| r.message())
            .or(instance.state_transition_reason())
            .filter(|m| !m.is_empty())
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        return Some(format!("host {instance_id} is {name}{why}"));
    }
    impaired(ec2, instance_id).await
}

/// A failed status check: EC2 reports `impaired` for the instance or the system it runs on.
async fn impaired(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Option<String> {
    let out = ec2
        .describe_instance_status()
        .instance_ids(instance_id)
        .send()
        .await
        .ok()?;
    let status = out.instance_statuses().first()?;
    let failed = |s: Option<&aws_sdk_ec2::types::InstanceStatusSummary>| {
        s.and_then(|s| s.status()) == Some(&SummaryStatus::Impaired)
    };
    if failed(status.system_status()) {
        return Some(format!(
            "host {instance_id} is impaired (system status check failed)"
        ));
    }
    if failed(status.instance_status()) {
        return Some(format!(
            "host {instance_id} is impaired (instance status check failed)"
        ));
    }
    None
}

/// What the stall check should see now. The heartbeat the host uploads to S3 while its timestamp moves; when it
/// does not (a presigned URL that died with the session that signed it, a host with no route to S3), the host
/// itself, through SSM: a broken heartbeat channel is never a stalled step. `None` when neither answers (the
/// check is skipped; the host check decides whether the host is gone). `Some(None)` is a step with no
/// heartbeat yet.
async fn current_beat(
    host: &SsmHost,
    step: &str,
    bucket: &str,
    key: &str,
    seen_ts: &mut Option<u64>,
) -> Option<Option<Beat>> {
    let uploaded = fetch_beat(&host.s3, bucket, key).await;
    if let Some(beat) = uploaded.filter(|b| b.ts.is_some() && b.ts != *seen_ts) {
        *seen_ts = beat.ts;
        return Some(Some(beat));
    }
    match host.status(step).await {
        Ok(status) => Some(status.log_bytes.map(|log_bytes| Beat {
            log_bytes,
            ts: status.heartbeat_at,
        })),
        Err(e) => {
            tracing::warn!(
                "stall check of `{step}`: the heartbeat is not moving and the host did not answer: {e}"
            );
            None
        }
    }
}

/// The heartbeat the host uploaded, if it is there yet.
async fn fetch_beat(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Beat> {
    let got = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    let bytes = got.body.collect().await.ok()?.into_bytes();
    Beat::parse(&String::from_utf8_lossy(&bytes))
}
