//! AWS delays that sortie must wait out (issue 10 §3, §8), end to end on the test endpoint, which copies them when
//! asked (docs/TEST_ENDPOINT.md, "Delays, as AWS takes them"): a new instance's SSM agent registers some seconds
//! after the instance is running, and a terminated instance's root volume stays `deleting` for a while. The
//! apply waits for the first; the second is no leak, for the teardown nor for `plan gc`.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PLAN: &str = "plan: delayplan
target: { provider: aws, region: us-east-1 }
state: s3://delay-state/runs
defaults: { timeout: 5m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  work:
    kind: run
    on: host
    run: echo ran >> \"$SORTIE_HOST_ROOT/work-ran\"
  teardown: { kind: teardown, needs: [work] }
";

/// An endpoint with `delay` (launcher options), the plan's bucket, and a `plan` for it.
async fn setup(delay: &[&str]) -> (Endpoint, Test) {
    let endpoint = Endpoint::ready("delay-state", delay).await;
    let t = endpoint.plan_test(PLAN);
    (endpoint, t)
}

fn output(events: &[serde_json::Value], step: &str, key: &str) -> String {
    events
        .iter()
        .find(|e| e["event"] == "step_output" && e["step"] == step && e["key"] == key)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no output {step}.{key}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_apply_waits_until_the_instance_registers_with_ssm() {
    let (endpoint, t) = setup(&["--ssm-registration-delay", "8"]).await;
    let started = Instant::now();
    let events = endpoint.apply_ok(&t);
    let took = started.elapsed();
    let instance = output(&events, "host", "instance_id");
    // Running at once, registered 8 s later: the apply cannot have sent its command sooner.
    assert!(took >= Duration::from_secs(8), "the apply took {took:?}");
    let calls = endpoint.calls();
    assert!(
        calls["ssm:DescribeInstanceInformation"]
            .as_u64()
            .unwrap_or(0)
            >= 2,
        "sortie asked SSM until the instance was Online: {calls}"
    );
    let ran = std::fs::read_to_string(endpoint.sandbox_root().join(&instance).join("work-ran"))
        .expect("the step ran on the instance");
    assert_eq!(ran, "ran\n", "the step ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_root_volume_still_deleting_after_teardown_is_no_leak() {
    let (endpoint, t) = setup(&["--root-volume-deletion-delay", "10"]).await;
    let events = endpoint.apply_ok(&t);
    let run = events[0]["run"].as_str().expect("run id").to_string();

    // The root volume (tagged with the run, as the instance) is still there, going away by itself.
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let root_state = || async {
        let found = ec2
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("tag:sortie:run")
                    .values(&run)
                    .build(),
            )
            .send()
            .await
            .expect("describe volumes");
        let v = found.volumes();
        assert_eq!(v.len(), 1, "the run's volumes: {v:?}");
        (
            v[0].volume_id().unwrap_or_default().to_string(),
            v[0].state().map(|s| s.as_str().to_string()),
        )
    };
    let (root, state) = root_state().await;
    assert_eq!(state.as_deref(), Some("deleting"));

    // plan gc neither counts nor touches it.
    let gc = |args: &[&str]| {
        let out = t
            .command()
            .args(["gc", "p.yaml"])
            .args(args)
            .output_within(DEADLINE)
            .expect("plan gc");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "plan gc {args:?}: {text}");
        assert!(
            !text.contains(&root),
            "plan gc {args:?} lists {root}: {text}"
        );
        assert!(!text.contains("to collect;"), "plan gc {args:?}: {text}");
    };
    let (status, _) = endpoint.http("DELETE", "/_sortie/calls", None);
    assert_eq!(status, 200);
    gc(&[]);
    gc(&["--yes"]);
    let calls = endpoint.calls();
    assert!(
        calls.get("ec2:DeleteVolume").is_none() && calls.get("ec2:DetachVolume").is_none(),
        "{calls}"
    );
    // Still within the delay: the checks above saw the volume `deleting`.
    assert_eq!(root_state().await, (root, Some("deleting".to_string())));
}
