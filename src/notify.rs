//! `notify:` — a run that failed or succeeded, and a step failed as stalled, are posted to a webhook as
//! Slack-compatible JSON (`{"text": ...}`). Best effort: a webhook that does not answer is a warning on the
//! run's output, never a failed run, and it never holds the run up for more than a few seconds.

use std::time::Duration;

use crate::plan::Plan;
use crate::plan_file::NotifyOn;

/// Per request; two attempts at most.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What happened, for the message.
pub enum Happening<'a> {
    Failed { step: &'a str, error: &'a str },
    Stalled { step: &'a str, error: &'a str },
    Succeeded { duration_secs: f64 },
}

impl Happening<'_> {
    fn kind(&self) -> NotifyOn {
        match self {
            Happening::Failed { .. } => NotifyOn::Failure,
            Happening::Stalled { .. } => NotifyOn::Stall,
            Happening::Succeeded { .. } => NotifyOn::Success,
        }
    }
}

/// The message: the run, the step, the root cause, and the command that shows the step's log.
pub fn text(plan: &Plan, run: &str, what: &Happening<'_>) -> String {
    let file = plan.file.display();
    let head = format!("sortie: plan {} run {run}", plan.name);
    let body = match what {
        Happening::Failed { step, error } => format!(
            "{head} failed\nroot cause: step `{step}` failed: {error}\nlog: plan logs {file} {step} --run {run}"
        ),
        Happening::Stalled { step, error } => format!(
            "{head}: step `{step}` {error}\nlog: plan logs {file} {step} --run {run}\nstatus: plan status {file} --run {run}"
        ),
        Happening::Succeeded { duration_secs } => format!(
            "{head} succeeded in {}\nstatus: plan status {file} --run {run}",
            humantime::format_duration(Duration::from_secs(duration_secs.max(0.0).round() as u64))
        ),
    };
    // The message leaves the machine: every known secret value is scrubbed from it.
    crate::scrub::text(&body)
}

/// Posts the message if the plan asks for this kind. Returns a warning when it could not be delivered.
pub async fn send(plan: &Plan, run: &str, what: Happening<'_>) -> Option<String> {
    let notify = plan.operation.notify.as_ref()?;
    if !notify.on.contains(&what.kind()) {
        return None;
    }
    let url = notify.webhook.as_deref()?;
    let body = serde_json::json!({ "text": text(plan, run, &what) });
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return Some(format!("notify: cannot start an HTTP client: {e}")),
    };
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return None,
            // A 4xx will not get better by asking again (a revoked webhook, a bad payload).
            Ok(r) if r.status().is_client_error() => {
                last = format!("HTTP {}", r.status());
                break;
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            // reqwest's error names the URL, whose path is the webhook's secret: keep only the kind.
            Err(e) => last = error_kind(&e),
        }
    }
    Some(format!(
        "notify: the webhook did not take the message ({last}); the run is not affected"
    ))
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed".into()
    }
}
