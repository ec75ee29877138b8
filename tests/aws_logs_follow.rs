//! `plan logs -f` on AWS prints a step's output while it runs (the host's log tail in S3), then the rest from the
//! full log when it ends, each line once; against the test endpoint.

use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PLAN: &str = "plan: follow
target: { provider: aws, region: us-east-1 }
state: s3://follow-state/runs
defaults: { timeout: 5m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  train:
    kind: run
    on: host
    detach: true
    heartbeat: { interval: 1s }
    run: |
      echo 'hello live'
      while [ ! -e \"$SORTIE_HOST_ROOT/release\" ]; do sleep 0.2; done
      echo bye
  teardown: { kind: teardown, needs: [train] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_logs_follow_shows_output_while_the_step_runs() {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("follow-state").await;
    let t = Test::new()
        .file("p.yaml", PLAN)
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let out = t
        .command()
        .args(["apply", "p.yaml", "--no-wait"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let instance = status["steps"]["host"]["outputs"]["instance_id"]
        .as_str()
        .expect("id")
        .to_string();

    let mut follower = t
        .command()
        .args(["logs", "p.yaml", "train", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("logs -f");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The step cannot end before `release` exists: a line seen now was read from the running step.
    let first = rx.recv_timeout(Duration::from_secs(30));
    let release = endpoint.sandbox_root().join(&instance).join("release");
    assert_eq!(
        first.as_deref(),
        Ok("hello live"),
        "nothing printed while the step ran"
    );
    assert!(!release.exists());
    std::fs::write(&release, "").expect("release the step");
    let out = t
        .command()
        .args(["apply", "p.yaml"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        rest.push(line);
    }
    let code = follower.wait().expect("wait");
    assert!(code.success(), "{code:?}");
    assert_eq!(rest, ["bye"], "every line once, in order");
}
