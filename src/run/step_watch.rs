//! What is watched while a run step executes on an AWS host, beside the command that waits for it:
//! - its uploaded heartbeat, which paces that wait: while it is fresh SSM is asked rarely, and when it says the
//!   step ended, the host got a spot interruption notice, or the progress ETA is near, SSM is asked now (issue 10
//!   §11, §12);
//! - its output, for a stall (it stopped growing for `heartbeat.stale_after`);
//! - its host (stopped, terminated, reclaimed by spot, impaired).
//!
//! A stall or a lost host ends the step at once with the reason, instead of after SSM's execution timeout.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{InstanceStateName, SummaryStatus};
use tokio::sync::watch;

use crate::host::ssm::{Pace, SsmHost};
use crate::run::stall::{Beat, StallWatch};

/// Why a watched step must end now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The step's output stopped: cancel it on its host.
    Stalled(String),
    /// The host is gone or impaired: nothing on it can be reached any more.
    HostGone(String),
}

/// Where the host uploads the step's heartbeat (S3 state only), how often it is read, and the stall rule.
pub struct HeartbeatProbe {
    pub stall: Option<StallWatch>,
    pub every: Duration,
    pub bucket: String,
    pub key: String,
}

/// How long before a progress ETA the wait is woken: the ETA is a rate, not a promise.
const ETA_LEAD: Duration = Duration::from_secs(15);

struct Heartbeat {
    probe: HeartbeatProbe,
    seen_ts: Option<u64>,
    next: Instant,
    /// When the progress ETA says the step ends (less `ETA_LEAD`).
    eta_at: Option<Instant>,
}

pub struct StepWatch {
    heartbeat: Option<Heartbeat>,
    ec2: aws_sdk_ec2::Client,
    host_every: Duration,
    host_next: Instant,
    pace: watch::Sender<Pace>,
}

impl StepWatch {
    pub fn new(
        heartbeat: Option<HeartbeatProbe>,
        ec2: aws_sdk_ec2::Client,
        host_every: Duration,
        pace: watch::Sender<Pace>,
    ) -> Self {
        let now = Instant::now();
        StepWatch {
            heartbeat: heartbeat.map(|probe| Heartbeat {
                next: now + probe.every,
                probe,
                seen_ts: None,
                eta_at: None,
            }),
            ec2,
            host_every,
            host_next: now + host_every,
            pace,
        }
    }

    /// How long until the next check is due.
    pub fn next_in(&self) -> Duration {
        let mut next = self.host_next;
        if let Some(hb) = &self.heartbeat {
            next = next.min(hb.next);
            if let Some(eta) = hb.eta_at {
                next = next.min(eta);
            }
        }
        next.saturating_duration_since(Instant::now())
    }

    /// How long until the look the progress ETA scheduled, if it scheduled one.
    pub fn eta_wake_in(&self) -> Option<Duration> {
        let at = self.heartbeat.as_ref()?.eta_at?;
        Some(at.saturating_duration_since(Instant::now()))
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
        let hb = self.heartbeat.as_mut()?;
        if hb.eta_at.is_some_and(|at| now >= at) {
            hb.eta_at = None;
            wake(&self.pace);
        }
        if now < hb.next {
            return None;
        }
        hb.next = now + hb.probe.every;
        let uploaded = fetch_beat(&host.s3, &hb.probe.bucket, &hb.probe.key).await;
        let fresh = uploaded
            .as_ref()
            .filter(|u| u.beat.ts.is_some() && u.beat.ts != hb.seen_ts);
        self.pace.send_if_modified(|p| {
            let changed = p.relaxed != fresh.is_some();
            p.relaxed = fresh.is_some();
            changed
        });
        if let Some(u) = fresh {
            hb.seen_ts = u.beat.ts;
            if u.ended || u.reclaimed {
                wake(&self.pace);
            }
            hb.eta_at = u.eta_secs.filter(|_| !u.ended).map(|eta| {
                (now + Duration::from_secs(eta))
                    .checked_sub(ETA_LEAD)
                    .unwrap_or(now)
            });
        }
        let stall = hb.probe.stall.as_mut()?;
        let beat = match fresh {
            Some(u) => Some(u.beat),
            // The upload did not move: ask the host itself (a broken heartbeat channel is never a stall).
            None => status_beat(host, step).await?,
        };
        let stalled = stall.observe(beat, Instant::now())?;
        // Output also stops when the step is over and the wait command has not said so yet: ask the host.
        match host.status(step).await {
            Ok(status) if status.is_finished() => None,
            _ => Some(Verdict::Stalled(stalled)),
        }
    }
}

/// Asks the wait to poll SSM now, and fast again.
fn wake(pace: &watch::Sender<Pace>) {
    pace.send_modify(|p| p.wake += 1);
}

/// Why the instance can no longer run the step, if it cannot: not running (stopping, stopped, shutting down,
/// terminated, or unknown to EC2, with EC2's state reason), or a failed instance or system status check. One
/// DescribeInstanceStatus (IncludeAllInstances: without it a stopped instance is simply absent) answers all of
/// it; DescribeInstances is asked only for the reason of a host that is gone. An error from EC2 itself is not a
/// verdict: it is logged and the next check tries again.
pub async fn host_gone(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Option<String> {
    let out = match ec2
        .describe_instance_status()
        .instance_ids(instance_id)
        .include_all_instances(true)
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
                crate::target::aws::error::AwsError::from_sdk("", &e).cause()
            );
            return None;
        }
    };
    let Some(status) = out.instance_statuses().first() else {
        return Some(format!("host {instance_id} no longer exists"));
    };
    let state = status.instance_state().and_then(|s| s.name());
    if !matches!(
        state,
        Some(InstanceStateName::Running) | Some(InstanceStateName::Pending)
    ) {
        let name = state.map_or("unknown", |s| s.as_str());
        let why = state_reason(ec2, instance_id).await;
        return Some(format!("host {instance_id} is {name}{why}"));
    }
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

/// EC2's reason for an instance's state, as ` (message)`, or nothing.
async fn state_reason(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> String {
    let Ok(out) = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
    else {
        return String::new();
    };
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .and_then(|i| {
            i.state_reason()
                .and_then(|r| r.message())
                .or(i.state_transition_reason())
        })
        .filter(|m| !m.is_empty())
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

/// What the host itself says of the step's output, through SSM. `None` when it does not answer (the check is
/// skipped; the host check decides whether the host is gone). `Some(None)` is a step with no heartbeat yet.
async fn status_beat(host: &SsmHost, step: &str) -> Option<Option<Beat>> {
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

/// The uploaded heartbeat: the stall's view of it, whether it is the attempt's last, and the progress ETA.
struct Uploaded {
    beat: Beat,
    ended: bool,
    /// The host got a spot interruption notice: the wait's command has ended, or will at once.
    reclaimed: bool,
    eta_secs: Option<u64>,
}

/// The heartbeat the host uploaded, if it is there yet.
async fn fetch_beat(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Uploaded> {
    let got = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    let bytes = got.body.collect().await.ok()?.into_bytes();
    let h = crate::heartbeat::Heartbeat::parse(&bytes)?;
    Some(Uploaded {
        beat: Beat::of(&h)?,
        ended: h.ended,
        reclaimed: !h.spot_notice.is_empty(),
        eta_secs: crate::progress::from_heartbeat(&h).eta_secs,
    })
}
