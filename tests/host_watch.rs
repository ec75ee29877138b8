//! A host that dies under a running step (stopped, terminated, reclaimed by spot) ends the step at once with
//! that reason, not after SSM's execution timeout, and the run still tears down.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::apply::Live;
use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;

const PLAN: &str = "plan: hostwatch
target: { provider: aws, region: us-east-1 }
state: s3://sortie-state/runs
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
    root_size: 20GiB
  train:
    kind: run
    detach: true
    timeout: 20h
    run: |
      echo started
      sleep 120
  teardown: { kind: teardown }
";

/// An apply of `plan` on a new test endpoint, with `train` launched on its host.
struct Started {
    endpoint: Endpoint,
    t: Test,
    live: Live,
    instance: String,
    /// The SSM command that waits for `train`.
    command: String,
}

async fn start_train(plan: &str) -> Started {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("sortie-state").await;
    let t = Test::new()
        .file("p.yaml", plan)
        .env("SORTIE_POLL_INTERVAL", "200ms")
        .envs(endpoint.env());
    let mut cmd: Command = t.command();
    cmd.args(["apply", "p.yaml", "--output", "json"]);
    let mut live = Live::start(cmd);
    live.expect_event(
        Duration::from_secs(60),
        |e| e["event"] == "step_started" && e["step"] == "train",
        || true,
    );
    let (instance, command) = launched(&t);
    Started {
        endpoint,
        t,
        live,
        instance,
        command,
    }
}

/// Waits until `train` is launched and being waited for; its host and its wait command.
fn launched(t: &Test) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = t.state("p.yaml");
        let handle = &state["steps"]["train"]["handle"];
        if let (Some(i), Some(c)) = (handle["host"].as_str(), handle["wait_command"].as_str()) {
            return (i.to_string(), c.to_string());
        }
        assert!(Instant::now() < deadline, "train never launched: {state:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the apply, waits until `train` runs, does `what` to its instance, and returns the apply's exit code,
/// how long it took after `what`, and the final state.
async fn apply_and_then(what: &str) -> (Option<i32>, Duration, serde_json::Value) {
    let Started {
        endpoint,
        t,
        mut live,
        instance,
        ..
    } = start_train(PLAN).await;
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let acted = Instant::now();
    match what {
        "stop" => {
            ec2.stop_instances()
                .instance_ids(&instance)
                .send()
                .await
                .expect("stop");
        }
        _ => {
            ec2.terminate_instances()
                .instance_ids(&instance)
                .send()
                .await
                .expect("terminate");
        }
    }
    let code = live.proc.child.wait().expect("apply exits").code();
    let took = acted.elapsed();
    (code, took, t.state("p.yaml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_terminated_host_ends_its_step_at_once_with_the_reason() {
    let (code, took, state) = apply_and_then("terminate").await;
    assert_eq!(code, Some(1), "{state:#}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let error = state["steps"]["train"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.starts_with("host i-") && error.contains(" is terminated"),
        "{error}"
    );
    assert_eq!(
        state["steps"]["teardown"]["status"], "succeeded",
        "{state:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_stopped_host_ends_its_step_at_once_with_the_reason() {
    let (code, took, state) = apply_and_then("stop").await;
    assert_eq!(code, Some(1), "{state:#}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let error = state["steps"]["train"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains(" is stopped") || error.contains(" is stopping"),
        "{error}"
    );
    assert_eq!(
        state["steps"]["teardown"]["status"], "succeeded",
        "{state:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_wait_command_lost_under_a_running_step_waits_again() {
    // An SSM agent restart (or auto-update) ends the command that waits for the step, without the step's
    // result. The step still runs on the host: sortie asks the wrapper and waits again, and the step succeeds.
    let plan = PLAN.replace(
        "      echo started\n      sleep 120\n",
        "      echo started\n      sleep 4\n      echo done=yes >> \"$SORTIE_OUTPUT\"\n",
    );
    let Started {
        endpoint,
        t,
        mut live,
        instance,
        command,
    } = start_train(&plan).await;
    let ssm = aws_sdk_ssm::Client::new(&endpoint.sdk_config().await);
    ssm.cancel_command()
        .command_id(&command)
        .instance_ids(&instance)
        .send()
        .await
        .expect("cancel the wait command");
    let code = live.proc.child.wait().expect("apply exits").code();
    let state = t.state("p.yaml");
    assert_eq!(code, Some(0), "{state:#}");
    assert_eq!(state["steps"]["train"]["status"], "succeeded", "{state:#}");
    assert_eq!(
        state["steps"]["train"]["outputs"]["done"], "yes",
        "{state:#}"
    );
    assert_ne!(
        state["steps"]["train"]["handle"]["wait_command"], command,
        "a new wait command"
    );
}
