//! A spot host's interruption notice (issue 10 §4), end to end on the test endpoint, whose instances serve an
//! instance metadata service (IMDSv2) at `$SORTIE_IMDS_URL`: the host wrapper records the notice, the wait on the
//! step ends at once, and the step fails naming the reclaimed host, instead of running on until EC2 stops it.

use std::time::{Duration, Instant};

use crate::apply::Live;
use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;

const PLAN: &str = "plan: spotplan
target: { provider: aws, region: us-east-1 }
state: s3://spot-state/runs
defaults: { timeout: 10m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    market: spot
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  work:
    kind: run
    on: host
    run: |
      touch \"$SORTIE_HOST_ROOT/work-started\"
      sleep 120
  teardown: { kind: teardown, needs: [work] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_spot_interruption_notice_ends_the_step_with_the_reason() {
    let endpoint = Endpoint::start_with(&[
        "--seed-profile",
        "sortie-ssm",
        "--require-instance-profile",
        "--env",
        "SORTIE_SPOT_POLL=1",
    ]);
    endpoint.create_bucket("spot-state").await;
    let t = Test::new()
        .file("p.yaml", PLAN)
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let mut cmd = t.command();
    cmd.args(["apply", "p.yaml", "--output", "json"]);
    let mut live = Live::start(cmd);
    let root = endpoint.sandbox_root();
    live.expect_event(
        Duration::from_secs(60),
        |e| e["event"] == "step_started" && e["step"] == "work",
        || {
            std::fs::read_dir(&root)
                .map(|d| d.flatten().any(|e| e.path().join("work-started").exists()))
                .unwrap_or(false)
        },
    );
    let output = |key: &str| {
        crate::apply::events(&live.seen.join("\n"))
            .into_iter()
            .find(|e| e["event"] == "step_output" && e["key"] == key)
            .and_then(|e| e["value"].as_str().map(str::to_string))
    };
    let instance = output("instance_id").expect("the instance id");
    assert_eq!(output("market").as_deref(), Some("spot"));

    let (status, body) = endpoint.http("POST", &format!("/_sortie/spot-notice/{instance}"), None);
    assert_eq!(status, 201, "{body}");
    let noticed = Instant::now();
    let mut error = String::new();
    live.expect_event(
        Duration::from_secs(30),
        |e| {
            let hit = e["event"] == "step_finished" && e["step"] == "work";
            if hit {
                error = e["error"].as_str().unwrap_or_default().to_string();
                assert_eq!(e["status"], "failed", "{e}");
            }
            hit
        },
        || true,
    );
    let took = noticed.elapsed();
    assert!(
        error.contains(&format!("host {instance} is being reclaimed by EC2"))
            && error.contains("spot interruption notice")
            && error.contains("\"action\": \"terminate\""),
        "{error}"
    );
    // The wrapper looks every second here (5 s on AWS): the step ends within seconds, not at its timeout.
    assert!(
        took < Duration::from_secs(15),
        "the step ended {took:?} after the notice"
    );
    live.expect_event(
        Duration::from_secs(60),
        |e| e["event"] == "run_finished",
        || true,
    );
    let finished = crate::apply::events(&live.seen.join("\n"))
        .into_iter()
        .find(|e| e["event"] == "run_finished")
        .expect("run_finished");
    assert_eq!(finished["status"], "failed", "{finished}");
    assert!(
        live.seen
            .iter()
            .any(|l| l.contains("\"step\":\"teardown\"") && l.contains("succeeded")),
        "the teardown still ran"
    );
}
