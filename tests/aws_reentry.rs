//! Crash re-entry on the aws target: `kill -9` the apply between RunInstances and the state write, and at four
//! more points; applying again finishes the run with exactly one instance and one volume, every step run once,
//! and nothing left afterwards. The token tag is what finds an instance a dead apply created.

use std::time::Duration;

use aws_sdk_ec2::types::Filter;

use crate::apply::Live;
use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PROFILE: &str = "sortie-ssm";

fn plan(markers: &str) -> String {
    format!(
        "plan: awscrash
target: {{ provider: aws, region: us-east-1 }}
state: s3://sortie-state/runs
vars: {{ markers: {markers:?} }}
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {PROFILE}
    root_size: 20GiB
  volume: {{ kind: volume, attach_to: instance, size: 1GiB, mount: /mnt/training }}
  prep:
    kind: run
    run: |
      echo x >> {{{{ vars.markers }}}}/prep
      sleep 1
      echo data={{{{ steps.volume.outputs.mount_path }}}} >> \"$SORTIE_OUTPUT\"
  train:
    kind: run
    needs: [prep]
    detach: true
    run: |
      echo x >> {{{{ vars.markers }}}}/train
      for s in 1 2 3 4 5 6; do echo \"step $s/6\"; sleep 0.5; done
  teardown: {{ kind: teardown }}
"
    )
}

/// Where to kill the first apply.
enum Point {
    /// After the endpoint has counted this API call (the SDK call returned or is returning; state not yet written).
    AfterCall(&'static str),
    StepStarted(&'static str),
}

async fn crash_and_recover(point: Point) {
    let endpoint = Endpoint::start_with(&["--seed-profile", PROFILE, "--require-instance-profile"]);
    endpoint.create_bucket("sortie-state").await;
    let t = Test::new();
    let markers = t.dir.path().join("markers");
    std::fs::create_dir_all(&markers).expect("markers dir");
    let t = t
        .file("p.yaml", plan(&markers.display().to_string()))
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let mut cmd = t.command();
    cmd.args(["apply", "p.yaml", "--output", "json"]);
    let mut live = Live::start(cmd);
    match point {
        Point::AfterCall(call) => {
            live.expect_event(
                Duration::from_secs(60),
                |_| true,
                || endpoint.calls()[call].as_u64().unwrap_or(0) >= 1,
            );
        }
        Point::StepStarted(step) => {
            live.expect_event(
                Duration::from_secs(60),
                |e| e["event"] == "step_started" && e["step"] == step,
                || true,
            );
        }
    }
    let first = live.kill9();
    let run = crate::apply::run_id(&first);
    let mut last = None;
    let mut log = first.join("\n");
    for _ in 0..3 {
        let out = t
            .command()
            .args(["apply", "p.yaml", "--output", "json"])
            .output_within(DEADLINE)
            .expect("apply");
        log.push_str("\n--- re-apply\n");
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        last = out.status.code();
        if last == Some(0) {
            break;
        }
    }
    assert_eq!(
        last,
        Some(0),
        "the re-applies did not finish the run:\n{log}"
    );

    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let tag = Filter::builder()
        .name("tag:sortie:run")
        .values(&run)
        .build();
    let mut instances = Vec::new();
    for r in ec2
        .describe_instances()
        .filters(tag.clone())
        .send()
        .await
        .expect("describe")
        .reservations()
    {
        for i in r.instances() {
            instances.push((
                i.instance_id().unwrap_or_default().to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
            ));
        }
    }
    assert_eq!(
        instances.len(),
        1,
        "exactly one instance for the run: {instances:?}"
    );
    assert_eq!(instances[0].1, "terminated");
    let volumes = ec2
        .describe_volumes()
        .filters(tag)
        .send()
        .await
        .expect("volumes");
    assert!(
        volumes.volumes().is_empty(),
        "volumes left: {:?}",
        volumes.volumes()
    );
    assert_eq!(
        endpoint.calls()["ec2:CreateVolume"].as_u64(),
        Some(1),
        "one volume created:\n{log}"
    );
    for step in ["prep", "train"] {
        let lines = std::fs::read_to_string(markers.join(step))
            .unwrap_or_default()
            .lines()
            .count();
        assert_eq!(lines, 1, "step {step} ran {lines} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_crash_between_run_instances_and_state_write() {
    crash_and_recover(Point::AfterCall("ec2:RunInstances")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_crash_while_waiting_for_ssm() {
    crash_and_recover(Point::AfterCall("ssm:DescribeInstanceInformation")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_crash_between_create_volume_and_state_write() {
    crash_and_recover(Point::AfterCall("ec2:CreateVolume")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_crash_during_an_attached_step() {
    crash_and_recover(Point::StepStarted("prep")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_crash_during_a_detached_step() {
    crash_and_recover(Point::StepStarted("train")).await;
}
