//! `notify:` — a run that failed or succeeded, and a step failed as stalled, are posted to a webhook as
//! Slack-compatible JSON (`{"text": ...}`) and/or published to an SNS topic. Best effort: a destination that does
//! not answer is a warning on the run's output, never a failed run, and it never holds the run up for long.

use std::time::Duration;

use crate::plan::Plan;
use crate::plan_file::NotifyOn;

/// Per request; two attempts at most.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What happened, for the message.
pub enum Happening<'a> {
    /// `step` is None when no step failed the run (its budget was reached).
    Failed {
        step: Option<&'a str>,
        error: &'a str,
    },
    Stalled {
        step: &'a str,
        error: &'a str,
    },
    Succeeded {
        duration_secs: f64,
    },
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
        Happening::Failed {
            step: Some(step),
            error,
        } => format!(
            "{head} failed\nroot cause: step `{step}` failed: {error}\nlog: plan logs {file} {step} --run {run}"
        ),
        Happening::Failed { step: None, error } => format!(
            "{head} failed\nroot cause: {error}\nstatus: plan status {file} --run {run}"
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

/// A message ready to leave: owned, so the walker can send it from a task of its own and keep walking (a slow
/// webhook or SNS must not hold up the run).
pub struct Outgoing {
    text: String,
    webhook: Option<String>,
    sns: Option<String>,
    target: crate::plan::Target,
}

/// The message for `what`, if the plan asks for this kind.
pub fn outgoing(plan: &Plan, run: &str, what: Happening<'_>) -> Option<Outgoing> {
    let notify = plan.operation.notify.as_ref()?;
    if !notify.on.contains(&what.kind()) {
        return None;
    }
    Some(Outgoing {
        text: text(plan, run, &what),
        webhook: notify.webhook.clone(),
        sns: notify.sns.clone(),
        target: plan.target.clone(),
    })
}

impl Outgoing {
    /// Sends it to every destination; returns the warnings of those that could not take it.
    pub async fn deliver(self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(url) = self.webhook.as_deref() {
            warnings.extend(post(url, &self.text).await);
        }
        if let Some(arn) = self.sns.as_deref() {
            warnings.extend(publish(&self.target, arn, &self.text).await);
        }
        warnings
    }
}

/// Sends the message to every destination of the plan, if it asks for this kind. Returns the warnings of those
/// that could not take it.
pub async fn send(plan: &Plan, run: &str, what: Happening<'_>) -> Vec<String> {
    match outgoing(plan, run, what) {
        Some(message) => message.deliver().await,
        None => Vec::new(),
    }
}

async fn post(url: &str, text: &str) -> Option<String> {
    let body = serde_json::json!({ "text": text });
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

/// The region of an SNS topic ARN (`arn:PARTITION:sns:REGION:ACCOUNT:NAME`), or None if it is not one.
pub fn topic_region(arn: &str) -> Option<&str> {
    let parts: Vec<&str> = arn.split(':').collect();
    let [arn_, partition, "sns", region, account, name] = parts.as_slice() else {
        return None;
    };
    let ok = *arn_ == "arn"
        && partition.starts_with("aws")
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty();
    ok.then_some(*region)
}

/// Publishes to the topic with the credentials `plan apply` runs with (the plan's profile and endpoint on the aws
/// target), in the topic's region. The SDK's standard retries apply.
async fn publish(target: &crate::plan::Target, arn: &str, text: &str) -> Option<String> {
    let region = topic_region(arn)?.to_string();
    let target = match target {
        crate::plan::Target::Aws {
            endpoint_url,
            profile,
            ..
        } => crate::plan::Target::Aws {
            region: Some(region),
            endpoint_url: endpoint_url.clone(),
            profile: profile.clone(),
        },
        crate::plan::Target::Local { .. } => crate::plan::Target::Aws {
            region: Some(region),
            endpoint_url: None,
            profile: None,
        },
    };
    let config = crate::target::aws::config::sdk_config(&target).await;
    let subject: String = text
        .lines()
        .next()
        .unwrap_or("sortie")
        .chars()
        .take(100)
        .collect();
    let sent = aws_sdk_sns::Client::new(&config)
        .publish()
        .topic_arn(arn)
        .subject(subject)
        .message(text)
        .send();
    match tokio::time::timeout(TIMEOUT * 3, sent).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!(
            "notify: SNS did not take the message for {arn} ({}); the run is not affected",
            aws_sdk_sns::error::DisplayErrorContext(&e)
        )),
        Err(_) => Some(format!(
            "notify: SNS did not answer for {arn}; the run is not affected"
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::{text, topic_region, Happening};

    #[test]
    fn a_run_failed_by_its_budget_names_no_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "plan: p\nsteps:\n  host: { kind: instance }\n").expect("write");
        let plan = crate::compiler::compile(&file, &crate::variables::Overrides::default())
            .expect("valid")
            .plan;
        let what = Happening::Failed {
            step: None,
            error: "budget of $5.00 reached after $5.01",
        };
        let body = text(&plan, "r1", &what);
        assert!(
            body.contains("root cause: budget of $5.00 reached after $5.01\n"),
            "{body}"
        );
        assert!(!body.contains("step `"), "{body}");
    }

    #[test]
    fn topic_arns_name_their_region() {
        assert_eq!(
            topic_region("arn:aws:sns:us-east-1:123456789012:training"),
            Some("us-east-1")
        );
        assert_eq!(
            topic_region("arn:aws-cn:sns:cn-north-1:123456789012:t"),
            Some("cn-north-1")
        );
        for bad in [
            "",
            "arn:aws:sqs:us-east-1:123456789012:q",
            "arn:aws:sns:us-east-1:1234:t",
            "arn:aws:sns:us-east-1:123456789012:",
            "https://x",
        ] {
            assert_eq!(topic_region(bad), None, "{bad}");
        }
    }
}
