//! A step whose output stops growing for `heartbeat.stale_after` is stalled: it is cancelled on its host and
//! fails (then the retry policy decides), on the local target and on AWS.

use std::time::{Duration, Instant};

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

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
        .output_within(DEADLINE)
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
    let state = t.state("p.yaml");
    let error = state["steps"]["hang"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("stalled: no new output for"), "{error}");
}

/// How the heartbeat's way to S3 behaves in `aws_stall_apply`.
#[derive(Clone, Copy, PartialEq)]
enum Channel {
    Working,
    /// Every heartbeat upload fails (a fault), as when the host has no route to S3.
    Broken,
    /// apply runs with temporary credentials whose session the endpoint ends 5 s after it starts: the presigned
    /// URLs the host uploads with die with it (the endpoint enforces that, as S3 does).
    SessionExpires,
}

/// Applies a plan with one detached step `RUN` on the test endpoint (stale_after 3 s) and returns the exit code,
/// the final state and the endpoint.
async fn aws_stall_apply(run: &str, broken_channel: bool) -> (Option<i32>, serde_json::Value) {
    let channel = if broken_channel {
        Channel::Broken
    } else {
        Channel::Working
    };
    let (code, state, _) = aws_stall_apply_with(run, channel).await;
    (code, state)
}

async fn aws_stall_apply_with(
    run: &str,
    channel: Channel,
) -> (Option<i32>, serde_json::Value, Endpoint) {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("sortie-state").await;
    if channel == Channel::Broken {
        endpoint.add_fault(
            r#"{"action": "s3:PutObject", "match": {"Key": "*/heartbeat.json"}, "times": -1,
                "error": {"code": "AccessDenied", "message": "Request has expired", "status": 403}}"#,
        );
    }
    let plan = format!(
        "plan: awsstall
target: {{ provider: aws, region: us-east-1 }}
state: s3://sortie-state/runs
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  hang:
    kind: run
    detach: true
    heartbeat: {{ stale_after: 3s, interval: 1s }}
    run: |
{}
  teardown: {{ kind: teardown }}
",
        run.lines()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut t = Test::new()
        .file("p.yaml", plan)
        .env("SORTIE_POLL_INTERVAL", "200ms")
        .envs(endpoint.env());
    if channel == Channel::SessionExpires {
        let (status, body) = endpoint.http(
            "POST",
            "/_sortie/sessions",
            Some(r#"{"token": "stall-session", "expires_in": 5}"#),
        );
        assert_eq!(status, 201, "{body}");
        t = t.env("AWS_SESSION_TOKEN", "stall-session");
    }
    let started = Instant::now();
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let state = t.state("p.yaml");
    assert_eq!(state["steps"]["teardown"]["status"], "succeeded");
    (out.status.code(), state, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_heartbeat_urls_dying_with_their_session_are_not_a_stall() {
    // Issue 10 §2: SSO, CI roles and GitHub OIDC give 1-hour sessions, and a presigned URL dies with the session
    // that signed it. Here the session ends 5 s in, the step talks for 12 s (stale_after 3 s): it succeeds.
    let talk = "for i in $(seq 24); do echo \"line $i\"; sleep 0.5; done";
    let (code, state, endpoint) = aws_stall_apply_with(talk, Channel::SessionExpires).await;
    assert_eq!(code, Some(0), "{state:#}");
    assert_eq!(state["steps"]["hang"]["status"], "succeeded", "{state:#}");
    // And the channel really died: the first heartbeats reached S3, the last one that did is seconds older than
    // the end.
    let s3 = endpoint.s3_client().await;
    let listed = s3
        .list_objects_v2()
        .bucket("sortie-state")
        .send()
        .await
        .expect("list");
    let finished = state["steps"]["hang"]["finished_at"]
        .as_f64()
        .expect("finished_at");
    let keys: Vec<&str> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.ends_with("/heartbeat.json"))
        .collect();
    assert_eq!(
        keys.len(),
        1,
        "the step's heartbeat while the session lasted: {listed:?}"
    );
    for key in keys {
        let body = s3
            .get_object()
            .bucket("sortie-state")
            .key(key)
            .send()
            .await
            .expect("get")
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes();
        let beat: serde_json::Value = serde_json::from_slice(&body).expect("heartbeat JSON");
        let ts = beat["ts"].as_f64().expect("ts");
        assert!(
            finished - ts >= 3.0,
            "a heartbeat reached S3 {}s before the end, after the session had ended",
            finished - ts
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_stalled_step_is_cancelled_and_fails() {
    let (code, state) = aws_stall_apply("echo started\nsleep 60", false).await;
    assert_eq!(code, Some(1), "{state:#}");
    let error = state["steps"]["hang"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("stalled: no new output for"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_broken_heartbeat_channel_is_not_a_stall() {
    // Output keeps coming for 8 s, longer than stale_after, while no heartbeat reaches S3: the stall check asks
    // the host instead, and the step succeeds.
    let talk = "for i in $(seq 16); do echo \"line $i\"; sleep 0.5; done";
    let (code, state) = aws_stall_apply(talk, true).await;
    assert_eq!(code, Some(0), "{state:#}");
    assert_eq!(state["steps"]["hang"]["status"], "succeeded", "{state:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_stall_is_still_found_when_the_heartbeat_channel_is_broken() {
    let (code, state) = aws_stall_apply("echo started\nsleep 60", true).await;
    assert_eq!(code, Some(1), "{state:#}");
    let error = state["steps"]["hang"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("stalled: no new output for"), "{error}");
}
