//! `plan doctor`: the account checks before spending money. Each check is named, passes, warns or fails, and
//! says how to fix itself; a failed required check makes the command exit 1. `plan apply` on AWS runs the cheap
//! part (identity, state bucket, instance profiles) first and stops before anything is created.
//!
//! The checks talk to AWS through the same SDK configuration as apply (`aws::sdk_config`), so a plan's
//! `endpoint_url`, `AWS_ENDPOINT_URL` and profile apply here too.

mod account;
mod launch;
mod quotas;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use serde::Serialize;

use crate::error::{exit, Error, Result};
use crate::plan::{Plan, Target};
use crate::reporter::OutputFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One named check and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// A required check that fails makes `plan doctor` exit 1 (and stops `plan apply`).
    pub required: bool,
    pub detail: String,
    /// What to do about a warning or a failure; `None` when it passed.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Pass,
            required: true,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            fix: Some(fix.into()),
            status: Status::Fail,
            ..Check::pass(name, detail)
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Warn,
            ..Check::fail(name, detail, fix)
        }
    }

    fn blocks(&self) -> bool {
        self.required && self.status == Status::Fail
    }
}

/// Everything `plan doctor` found for one plan.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plan: String,
    pub target: &'static str,
    pub region: Option<String>,
    /// False when a required check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(plan: &Plan, region: Option<String>, checks: Vec<Check>) -> Report {
        Report {
            plan: plan.name.clone(),
            target: plan.target.provider(),
            region,
            ok: !checks.iter().any(Check::blocks),
            checks,
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.ok {
            exit::OK
        } else {
            exit::FAILED
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// One line per check (status, name, detail), its fix indented beneath, and a closing verdict.
    pub fn human(&self, file: &std::path::Path) -> String {
        let mut out = format!("plan {}: target {}", self.plan, self.target);
        if let Some(region) = &self.region {
            out.push_str(&format!(", region {region}"));
        }
        out.push('\n');
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let optional = if c.required { "" } else { " (optional)" };
            out.push_str(&format!(
                "{}  {:width$}  {}{optional}\n",
                c.status.label(),
                c.name,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:width$}  fix: {fix}\n", ""));
            }
        }
        let failed = self.checks.iter().filter(|c| c.blocks()).count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.status != Status::Pass && !c.blocks())
            .count();
        out.push_str(&match failed {
            0 => format!(
                "all required checks passed ({warned} warning{}): `plan apply {}` can start\n",
                if warned == 1 { "" } else { "s" },
                file.display()
            ),
            n => format!(
                "{n} required check{} failed: fix {} and run `plan doctor {}` again\n",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" },
                file.display()
            ),
        });
        out
    }
}

/// `plan doctor FILE`: every check, as text or JSON, and the exit code.
pub async fn doctor(plan: &Plan, output: OutputFormat) -> Result<(String, i32)> {
    let report = run(plan, Depth::Full).await;
    let text = match output {
        OutputFormat::Json => report.json(),
        OutputFormat::Human => report.human(&plan.file),
    };
    Ok((crate::scrub::text(&text), report.exit_code()))
}

/// The cheap, required part, before `plan apply` on AWS asks or creates anything: the first failed required
/// check stops it with exit 2 and that check's fix.
pub async fn precheck(plan: &Plan) -> Result<()> {
    if !matches!(plan.target, Target::Aws { .. }) {
        return Ok(());
    }
    let report = run(plan, Depth::Cheap).await;
    let failed: Vec<&Check> = report.checks.iter().filter(|c| c.blocks()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut text = String::from("the AWS account is not ready for this plan; nothing was created");
    for c in failed {
        text.push_str(&format!("\n  {}: {}", c.name, c.detail));
        if let Some(fix) = &c.fix {
            text.push_str(&format!("\n  = help: {fix}"));
        }
    }
    text.push_str(&format!(
        "\n  = note: `plan doctor {}` runs every check",
        plan.file.display()
    ));
    Err(Error::NotReady(text))
}

/// How much to check: apply's pre-check makes only read calls that cost nothing and take a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    Cheap,
    Full,
}

async fn run(plan: &Plan, depth: Depth) -> Report {
    if let Target::Local { root } = &plan.target {
        let check = Check::pass(
            "target",
            format!(
                "local target (hosts under {}): nothing to check on AWS",
                root.display()
            ),
        );
        return Report::new(plan, None, vec![check]);
    }
    let config = crate::target::aws::config::sdk_config(&plan.target).await;
    let region = config.region().map(|r| r.to_string());
    let mut checks = account::identity(&config).await;
    // Without working credentials every other call fails the same way: one failure says it.
    if checks.iter().any(Check::blocks) {
        return Report::new(plan, region, checks);
    }
    checks.extend(account::state_bucket(&config, plan, depth == Depth::Full).await);
    checks.extend(account::instance_profiles(&config, plan).await);
    if depth == Depth::Full {
        checks.extend(launch::checks(&config, plan).await);
    }
    Report::new(plan, region, checks)
}

/// `CODE: message` of an SDK error, or its chain of causes when no service answered (network, credentials).
pub(crate) fn sdk_error<E>(err: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut e = crate::target::aws::error::AwsError::from_sdk("", err);
    e.request_id = None; // a check's detail names what failed, not the request
    e.cause()
}

/// The error code of an SDK error, if a service answered with one.
pub(crate) fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E>) -> &str {
    err.code().unwrap_or_default()
}
