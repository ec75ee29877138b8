//! Cost: `plan preview` shows the estimate, `budget:` refuses a new run whose estimate is above it (nothing
//! created), and stops and tears down a run whose spend reaches it.

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PROFILE: &str = "sortie-ssm";

/// One g5.2xlarge for a 5-hour step: $1.212 × 5 = $6.06.
fn five_hours(budget: &str, state: &str) -> String {
    format!(
        "plan: costly
target: {{ provider: aws, region: us-east-1 }}
{state}budget: {budget}
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {PROFILE}
  train: {{ kind: run, timeout: 5h, run: 'echo trained' }}
  teardown: {{ kind: teardown }}
"
    )
}

#[test]
fn test_e2e_preview_shows_the_estimate_and_the_budget() {
    let out = Test::new()
        .file("p.yaml", five_hours("25", ""))
        .args(["preview", "p.yaml"])
        .run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let table = crate::test_builder::repo().join("prices/aws.yaml");
    let as_of = std::fs::read_to_string(table)
        .expect("price table")
        .lines()
        .find_map(|l| l.strip_prefix("as_of: ").map(str::to_string))
        .expect("as_of");
    let expected = format!(
        "estimated cost (upper bound; on-demand us-east-1 prices of {as_of}):
  instance  g5.2xlarge                           5h  $6.06
  total     $6.06
  budget    $25.00 (within it)
"
    );
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(
        stdout.contains("  note: hours are the longest chain of step timeouts"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_budget_below_the_estimate_refuses_and_creates_nothing() {
    let endpoint = Endpoint::start_with(&["--seed-profile", PROFILE, "--require-instance-profile"]);
    endpoint.create_bucket("sortie-state").await;
    let t = Test::new()
        .file(
            "p.yaml",
            five_hours("5", "state: s3://sortie-state/runs\n"),
        )
        .envs(endpoint.env())
        // `true`, not the endpoint's `1`: this branch's clap flag takes only true/false (fixed in 62ea70b).
        .env("SORTIE_YES", "true")
        .args(["apply", "p.yaml"])
        .status(2)
        .stderr(
            "error: p.yaml: the estimated cost of a new run, $6.06, is above its budget of $5.00; nothing was started
  = help: the estimate is an upper bound (on-demand prices × the longest chain of step timeouts on each instance); `plan preview p.yaml` itemises it. Lower the timeouts, pick cheaper `instance_types`, or raise `budget:`
",
        );
    t.run();
    let calls = endpoint.calls();
    assert!(
        calls.get("ec2:RunInstances").is_none(),
        "no instance was launched: {calls}"
    );
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let reservations = ec2.describe_instances().send().await.expect("describe");
    assert!(reservations.reservations().is_empty(), "{reservations:?}");
    let s3 = endpoint.s3_client().await;
    let listed = s3
        .list_objects_v2()
        .bucket("sortie-state")
        .send()
        .await
        .expect("list state bucket");
    assert_eq!(
        listed.key_count(),
        Some(0),
        "no state was written: {listed:?}"
    );
}

/// A t3.micro ($0.0104/h) whose one step may take 2 s ($0.0000058) passes a budget of $0.00002; the step then
/// keeps failing and retrying, so the instance's spend reaches the budget after about 7 s: the run stops
/// retrying, tears the instance down and ends failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_budget_reached_while_running_tears_down_and_fails() {
    let endpoint = Endpoint::start_with(&["--seed-profile", PROFILE, "--require-instance-profile"]);
    endpoint.create_bucket("sortie-state").await;
    let plan = format!(
        "plan: capped
target: {{ provider: aws, region: us-east-1 }}
state: s3://sortie-state/runs
budget: 0.00002
steps:
  instance:
    kind: instance
    instance_types: [t3.micro]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {PROFILE}
  flaky: {{ kind: run, timeout: 2s, retries: 30, backoff: 1s, run: 'exit 1' }}
  after: {{ kind: run, needs: [flaky], timeout: 1s, run: 'true' }}
  teardown: {{ kind: teardown, needs: [after] }}
"
    );
    let t = Test::new()
        .file("p.yaml", plan)
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env())
        // `true`, not the endpoint's `1`: this branch's clap flag takes only true/false (fixed in 62ea70b).
        .env("SORTIE_YES", "true");
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("root cause: budget of $0.00002 reached after $0.0000"),
        "{stdout}"
    );
    let state = t.state("p.yaml");
    assert_eq!(state["status"], "failed", "{state}");
    // The teardown ran although its `needs` did not succeed (its `when` is on_success).
    assert_eq!(state["steps"]["teardown"]["status"], "succeeded", "{state}");
    assert_eq!(state["steps"]["after"]["status"], "cancelled", "{state}");
    let flaky = &state["steps"]["flaky"];
    assert!(
        flaky["attempt"].as_u64().unwrap_or(0) < 31,
        "retries stopped at the budget: {flaky}"
    );
    let resource = &state["steps"]["instance"]["resources"][0];
    assert_eq!(resource["destroyed"], true, "{state}");
    assert!(resource["destroyed_at"].as_f64().is_some(), "{resource}");
    let spent = state["cost"]["spent_usd"].as_f64().expect("cost.spent_usd");
    assert!(
        spent >= 0.00002,
        "spend at teardown reached the budget: {spent}"
    );
    assert_eq!(state["cost"]["budget_usd"], 0.00002);
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let reservations = ec2.describe_instances().send().await.expect("describe");
    for r in reservations.reservations() {
        for i in r.instances() {
            let name = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string());
            assert_eq!(name.as_deref(), Some("terminated"), "{i:?}");
        }
    }
}
