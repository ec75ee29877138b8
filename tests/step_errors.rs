//! A failed step's error and its advice are kept apart (issue 9, item 3): the state stores `error` and `help`,
//! `step_finished` carries both as fields, and the human outputs print the advice on its own `= help:` line
//! (under `plan status`'s table, not inside a row).

use serde_json::Value;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::{Deadline as _, DEADLINE};

const PLAN: &str = r#"plan: errors
target: { provider: aws, region: us-east-1 }
state: s3://errors-state/runs
defaults: { timeout: 10m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  work: { kind: run, on: host, run: echo ok }
  teardown: { kind: teardown, needs: [work], when: always }
"#;

const HELP: &str =
    "add instance types (or availability zones, or subnets in other zones) to the step";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_step_error_and_its_help_are_stored_and_shown_apart() {
    let endpoint = Endpoint::ready("errors-state", &[]).await;
    endpoint.add_fault(
        r#"{"action":"RunInstances","error":{"code":"InsufficientInstanceCapacity","message":"none left","status":500},"times":-1}"#,
    );
    let t = endpoint.plan_test(PLAN);
    let out = t
        .command()
        .args(["apply", "p.yaml", "--yes", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let events = crate::apply::events(&stdout);
    let failed = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "host")
        .expect("host finished");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("no capacity for instance step host"),
        "{failed}"
    );
    assert!(
        error.contains("InsufficientInstanceCapacity: none left"),
        "{failed}"
    );
    assert!(
        !error.contains("help"),
        "the advice is inside the error: {failed}"
    );
    assert!(
        failed["help"]
            .as_str()
            .unwrap_or_default()
            .starts_with(HELP),
        "{failed}"
    );

    let status = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("status");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(
        status["steps"]["host"]["error"].as_str(),
        Some(error),
        "{status:#}"
    );
    assert!(status["steps"]["host"]["help"]
        .as_str()
        .unwrap_or_default()
        .starts_with(HELP));

    let human = t
        .command()
        .args(["status", "p.yaml"])
        .output_within(DEADLINE)
        .expect("status");
    let human = String::from_utf8_lossy(&human.stdout);
    let table_rows = human.lines().filter(|l| l.starts_with("host ")).count();
    assert_eq!(table_rows, 1, "{human}");
    assert!(
        human.contains(&format!("  = help (host): {HELP}")),
        "{human}"
    );

    let again = t
        .command()
        .args(["apply", "p.yaml", "--yes"])
        .output_within(DEADLINE)
        .expect("apply");
    let shown = String::from_utf8_lossy(&again.stdout);
    assert!(shown.contains(&format!("= help: {HELP}")), "{shown}");
}
