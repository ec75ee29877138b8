//! Dev environments: `plan connect` (a shell, or Jupyter's port, on a run's host through SSM Session Manager)
//! and `plan extend` (move a host's `ttl` deadline).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::plan::{InstanceSpec, Plan, Step, StepKind, Target};
use crate::run::run_select::{self, RunSelector};
use crate::run::session;
use crate::state::{RunState, StepStatus};

/// The instance step a command is about: `--step`, or the plan's only one.
fn instance_step<'p>(plan: &'p Plan, step: Option<&str>) -> Result<(&'p Step, &'p InstanceSpec)> {
    let instances: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Instance(_)))
        .collect();
    let chosen = match step {
        Some(id) => instances
            .iter()
            .find(|s| s.id == id)
            .copied()
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: plan `{}` has no instance step `{id}`",
                    plan.file.display(),
                    plan.name
                ))
            })?,
        None => match instances.as_slice() {
            [only] => only,
            [] => {
                return Err(Error::Usage(format!(
                    "{}: plan `{}` has no instance step",
                    plan.file.display(),
                    plan.name
                )))
            }
            many => {
                let names: Vec<&str> = many.iter().map(|s| s.id.as_str()).collect();
                return Err(Error::Usage(format!(
                    "{}: plan `{}` has several instance steps ({}); name one",
                    plan.file.display(),
                    plan.name,
                    names.join(", ")
                ))
                .with_help(format!("pass --step {}", names[0])));
            }
        },
    };
    match &chosen.kind {
        StepKind::Instance(spec) => Ok((chosen, spec)),
        _ => unreachable!("filtered to instance steps"),
    }
}

/// The live host of `step` in `run`: its instance id (or local home), or why there is none.
fn live_host(plan: &Plan, run: &RunState, step: &Step) -> Result<String> {
    let st = run.step(&step.id);
    let key = match plan.target {
        Target::Aws { .. } => "instance_id",
        Target::Local { .. } => "home",
    };
    let up = st.status == StepStatus::Succeeded && st.resources.iter().all(|r| !r.destroyed);
    match st.outputs.get(key) {
        Some(id) if up => Ok(id.clone()),
        _ => Err(Error::Usage(format!(
            "host `{}` of run {} is not up (step {}{})",
            step.id,
            run.run_id,
            st.status.as_str(),
            if st.resources.iter().any(|r| r.destroyed) {
                ", torn down"
            } else {
                ""
            },
        ))
        .with_help(format!("`plan apply {}` creates it", plan.file.display()))),
    }
}

/// The AWS CLI arguments that reach the plan's account and region.
async fn aws_cli_scope(plan: &Plan) -> Vec<String> {
    let Target::Aws {
        endpoint_url,
        profile,
        ..
    } = &plan.target
    else {
        return Vec::new();
    };
    let config = crate::target::aws::config::sdk_config(&plan.target).await;
    let mut out = Vec::new();
    if let Some(region) = config.region() {
        out.extend(["--region".to_string(), region.to_string()]);
    }
    if let Some(p) = profile {
        out.extend(["--profile".to_string(), p.clone()]);
    }
    if let Some(url) = endpoint_url {
        out.extend(["--endpoint-url".to_string(), url.clone()]);
    }
    out
}

fn shell_line(args: &[String]) -> String {
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

/// `plan connect`: the commands that open a shell (and forward Jupyter's port) on the host; with `exec`, runs the
/// shell's command in place of `plan`.
pub async fn connect(
    plan: &Plan,
    sel: &RunSelector,
    step: Option<&str>,
    port: u16,
    exec: bool,
) -> Result<String> {
    let (step, _) = instance_step(plan, step)?;
    let run = run_select::require_run(plan, sel).await?;
    let host = live_host(plan, &run, step)?;
    let expires = run
        .step(&step.id)
        .outputs
        .get("expires_at")
        .map(|t| format!(", expires at {t}"))
        .unwrap_or_default();
    let (shell, forward) = match plan.target {
        Target::Aws { .. } => {
            let scope = aws_cli_scope(plan).await;
            let mut shell: Vec<String> = ["aws", "ssm", "start-session", "--target", &host]
                .map(String::from)
                .to_vec();
            shell.extend(scope);
            let mut forward = shell.clone();
            forward.extend([
                "--document-name".into(),
                "AWS-StartPortForwardingSession".into(),
                "--parameters".into(),
                format!(r#"{{"portNumber":["{port}"],"localPortNumber":["{port}"]}}"#),
            ]);
            (shell, Some(forward))
        }
        Target::Local { .. } => {
            let sh = std::env::var("SHELL").unwrap_or_else(|_| "sh".into());
            (
                vec![
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "cd {} && exec {sh}",
                        shlex::try_quote(&host).unwrap_or_default()
                    ),
                ],
                None,
            )
        }
    };
    if exec {
        let err = std::os::unix::process::CommandExt::exec(
            std::process::Command::new(&shell[0]).args(&shell[1..]),
        );
        return Err(
            Error::Usage(format!("cannot run `{}`: {err}", shell[0])).with_help(
                "install the AWS CLI and its Session Manager plugin (session-manager-plugin)",
            ),
        );
    }
    let mut out = format!(
        "# a shell on `{}` (run {}{expires})\n{}\n",
        step.id,
        run.run_id,
        shell_line(&shell)
    );
    match forward {
        Some(f) => out.push_str(&format!(
            "# Jupyter (or anything on port {port}) at http://localhost:{port}\n{}\n",
            shell_line(&f)
        )),
        None => out.push_str(&format!(
            "# the local target runs on this machine: Jupyter on the host is already at http://localhost:{port}\n"
        )),
    }
    Ok(out)
}

/// `plan extend`: the host now expires `ttl` from now. The host's own deadline moves first (it is what shuts the
/// host down); the run's state records it after.
pub async fn extend(
    plan: &Plan,
    sel: &RunSelector,
    step: Option<&str>,
    ttl: Duration,
) -> Result<String> {
    let (step, spec) = instance_step(plan, step)?;
    if spec.ttl.is_none() {
        return Err(Error::Usage(format!(
            "{}: instance step `{}` has no `ttl`, so nothing on it expires",
            plan.file.display(),
            step.id
        ))
        .with_help("add e.g. `ttl: 8h` to the step (it applies to hosts created after that)"));
    }
    let run = run_select::require_run(plan, sel).await?;
    let host = live_host(plan, &run, step)?;
    let deadline = crate::ttl::now_epoch() + ttl.as_secs();
    match &plan.target {
        Target::Local { .. } => {
            let home = std::path::Path::new(&host);
            if !crate::ttl::local_file(home).exists() {
                return Err(Error::Usage(format!(
                    "host `{}` has no ttl deadline ({} is missing): it was created before the step had `ttl`",
                    step.id,
                    crate::ttl::local_file(home).display()
                )));
            }
            crate::ttl::write_local(home, deadline)?;
        }
        Target::Aws { .. } => {
            let ssm = crate::target::AwsTarget::new(plan)
                .await
                .host(&run.run_id, &host);
            let done = ssm
                .run(
                    &crate::ttl::extend_script(deadline),
                    Duration::from_secs(60),
                )
                .await?;
            if !done.succeeded() {
                return Err(Error::runtime(format!(
                    "could not move the deadline on {host}: {}",
                    done.describe()
                )));
            }
        }
    }
    let at = crate::ttl::rfc3339(deadline);
    session::record_output(plan, &run.run_id, &step.id, "expires_at", &at).await?;
    Ok(format!(
        "host `{}` ({host}) of run {} now expires at {at} (in {})\n",
        step.id,
        run.run_id,
        humantime::format_duration(ttl)
    ))
}
