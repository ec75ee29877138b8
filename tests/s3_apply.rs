//! `plan apply` with its state in S3 (the test endpoint) on the local target: the run, its listing, re-entry
//! and the lock all go through conditional writes.

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;

const PLAN: &str = "plan: s3state
state: s3://sortie-state/runs
steps:
  host: { kind: instance }
  a: { kind: run, run: 'echo a; echo v=1 >> \"$SORTIE_OUTPUT\"' }
  b: { kind: run, run: 'sleep 2; echo b={{ steps.a.outputs.v }}' }
  down: { kind: teardown }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_apply_with_s3_state() {
    let endpoint = Endpoint::start();
    endpoint.create_bucket("sortie-state").await;
    let t = Test::new().file("p.yaml", PLAN).envs(endpoint.env());

    // Two applies at once: one runs, the other finds the lock object and exits 3.
    let mut first = t.command();
    first.args(["apply", "p.yaml", "--output", "json"]);
    let first = first.spawn().expect("spawn");
    let client = endpoint.s3_client().await;
    let mut run_id = None;
    for _ in 0..100 {
        let listed = client
            .list_objects_v2()
            .bucket("sortie-state")
            .prefix("runs/s3state/")
            .send()
            .await
            .expect("list");
        if let Some(key) = listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .find(|k| k.ends_with("/state.json"))
        {
            run_id = key.split('/').nth(2).map(str::to_string);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let run_id = run_id.expect("the first apply wrote its state to S3");
    let second = t
        .command()
        .args(["apply", "p.yaml", "--run", &run_id])
        .output()
        .expect("second apply");
    assert_eq!(
        second.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("is locked by another apply: pid"));
    let first = first.wait_with_output().expect("first apply");
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // The lock is gone, the state is in S3, and status and runs read it from there.
    let lock = client
        .head_object()
        .bucket("sortie-state")
        .key(format!("runs/s3state/{run_id}/lock.json"))
        .send()
        .await;
    assert!(lock.is_err(), "the lock object was released");
    let status = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output()
        .expect("status");
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).expect("state JSON");
    assert_eq!(state["run_id"], run_id.as_str());
    assert_eq!(state["status"], "succeeded");
    assert_eq!(state["steps"]["a"]["outputs"]["v"], "1");
    let runs = t.command().args(["runs", "p.yaml"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&runs.stdout).contains(&run_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_s3_state_write_whose_answer_was_lost_is_not_a_conflict() {
    // S3 stores a checkpoint, then its answer is lost (a 500 after the write): the SDK retries, and the retry
    // fails its own condition (If-None-Match on the first write, If-Match on later ones). The document there is
    // the one we wrote, so the apply goes on.
    let endpoint = Endpoint::start();
    endpoint.create_bucket("sortie-state").await;
    endpoint.add_fault(
        r#"{"action": "s3:PutObject", "match": {"Key": "runs/s3state/*/state.json"}, "after": true,
            "times": 3, "error": {"code": "InternalError", "message": "lost", "status": 500}}"#,
    );
    let t = Test::new().file("p.yaml", PLAN).envs(endpoint.env());
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output()
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = endpoint.http("GET", "/_sortie/faults", None);
    assert_eq!(status, 200);
    assert!(body.trim() == "[]", "every lost answer was used: {body}");
    let state = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output()
        .expect("status");
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("state");
    assert_eq!(state["status"], "succeeded", "{state:#}");
}
