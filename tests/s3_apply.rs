//! `plan apply` with its state in S3 (the test endpoint) on the local target: the run, its listing, re-entry
//! and the lock all go through conditional writes.

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

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
        .output_within(DEADLINE)
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
    let state = t.state("p.yaml");
    assert_eq!(state["run_id"], run_id.as_str());
    assert_eq!(state["status"], "succeeded");
    assert_eq!(state["steps"]["a"]["outputs"]["v"], "1");
    let runs = t
        .command()
        .args(["runs", "p.yaml"])
        .output_within(DEADLINE)
        .expect("runs");
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
        .output_within(DEADLINE)
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
    let state = t.state("p.yaml");
    assert_eq!(state["status"], "succeeded", "{state:#}");
}

/// A lock object as another machine's apply leaves it, with its lease ending `expires_in` from now (negative:
/// in the past).
fn foreign_lock(expires_in: i64) -> String {
    let now = std::time::SystemTime::now();
    let expires = if expires_in >= 0 {
        now + std::time::Duration::from_secs(expires_in.unsigned_abs())
    } else {
        now - std::time::Duration::from_secs(expires_in.unsigned_abs())
    };
    serde_json::json!({
        "owner": "0123456789abcdef0123456789abcdef",
        "pid": 4242,
        "host": "ci-runner-that-died",
        "since": humantime::format_rfc3339_seconds(now - std::time::Duration::from_secs(7200)).to_string(),
        "expires": humantime::format_rfc3339_seconds(expires).to_string(),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_s3_expired_lock_of_a_dead_machine_is_taken_over() {
    let endpoint = Endpoint::start();
    endpoint.create_bucket("sortie-state").await;
    let s3 = endpoint.s3_client().await;
    let put = |body: String| {
        s3.put_object()
            .bucket("sortie-state")
            .key("runs/s3state/plan-lock.json")
            .body(body.into_bytes().into())
            .send()
    };
    let t = Test::new().file("p.yaml", PLAN).envs(endpoint.env());
    // Still within its lease (or within the margin for clock skew): held.
    put(foreign_lock(-60)).await.expect("put lock");
    let held = t
        .command()
        .args(["apply", "p.yaml"])
        .output_within(DEADLINE)
        .expect("apply");
    let err = String::from_utf8_lossy(&held.stderr);
    assert_eq!(held.status.code(), Some(3), "{err}");
    assert!(err.contains("ci-runner-that-died"), "{err}");
    // Expired an hour ago and never renewed: its holder is gone; the lock is taken over.
    put(foreign_lock(-3600)).await.expect("put lock");
    let out = t
        .command()
        .args(["apply", "p.yaml"])
        .output_within(DEADLINE)
        .expect("apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("breaking the lock") && err.contains("lease expired"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_s3_lock_is_renewed_while_its_apply_runs() {
    // A 3 s lease: without renewal, a second apply 5 s into an 8 s step would take the run over.
    let endpoint = Endpoint::start();
    endpoint.create_bucket("sortie-state").await;
    let plan = PLAN.replace("sleep 2;", "sleep 8;");
    let t = Test::new()
        .file("p.yaml", plan)
        .env("SORTIE_S3_LOCK_TTL", "3s")
        .envs(endpoint.env());
    let mut first = t.command();
    first.args(["apply", "p.yaml", "--output", "json"]);
    let mut live = crate::apply::Live::start(first);
    live.expect_event(
        std::time::Duration::from_secs(30),
        |e| e["event"] == "step_started" && e["step"] == "b",
        || true,
    );
    let run = crate::apply::run_id(&live.seen);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let second = t
        .command()
        .args(["apply", "p.yaml", "--run", &run])
        .output_within(DEADLINE)
        .expect("second apply");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(err.contains("is locked by another apply"), "{err}");
    let code = live.proc.child.wait().expect("first apply").code();
    assert_eq!(code, Some(0));
}
