//! A step whose output stops growing for `heartbeat.stale_after` is stalled: it is cancelled on its host and
//! fails (then the retry policy decides), on the local target and on AWS.

use std::time::{Duration, Instant};

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;

const LOCAL: &str = "plan: stall
steps:
  host: { kind: instance }
  hang:
    kind: run
    heartbeat: { stale_after: 2s, interval: 1s }
    run: |
      echo started
      sleep 60
";

#[test]
fn test_e2e_local_stalled_step_is_cancelled_and_fails() {
    let t = Test::new().file("p.yaml", LOCAL);
    let started = Instant::now();
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output()
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let status = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output()
        .expect("status");
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).expect("state");
    let error = state["steps"]["hang"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("stalled: no new output for"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_stalled_step_is_cancelled_and_fails() {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("sortie-state").await;
    let plan = "plan: awsstall
target: { provider: aws, region: us-east-1 }
state: s3://sortie-state/runs
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
    root_size: 20GiB
  hang:
    kind: run
    detach: true
    heartbeat: { stale_after: 3s, interval: 1s }
    run: |
      echo started
      sleep 60
  teardown: { kind: teardown }
";
    let t = Test::new()
        .file("p.yaml", plan)
        .env("SORTIE_POLL_INTERVAL", "200ms")
        .envs(endpoint.env());
    let started = Instant::now();
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output()
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    let status = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output()
        .expect("status");
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).expect("state");
    let error = state["steps"]["hang"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("stalled: no new output for"), "{error}");
    assert_eq!(state["steps"]["teardown"]["status"], "succeeded");
}
