//! A host that goes away under a step with retries left is re-provisioned within the same apply (issue 10 §4,
//! DESIGN.md's "a host that is gone makes its steps run again"): a new instance in the same zone, the same volume
//! re-attached with its data, the steps that ran on the host run again, the lost step retries there, and the
//! run succeeds, with exactly one more instance and no more volumes.

use std::time::Duration;

use serde_json::Value;

use crate::apply::Live;
use crate::aws_endpoint::Endpoint;

const PLAN: &str = r#"plan: replace
target: { provider: aws, region: us-east-1 }
state: s3://sortie-state/runs
defaults: { timeout: 10m }
steps:
  host:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  data:
    kind: volume
    attach_to: host
    size: 1GiB
    mount: /mnt/data
  prep:
    kind: run
    on: host
    needs: [data]
    run: |
      d={{ steps.data.outputs.mount_path }}
      echo run >> "$d/prep.log"
      echo runs=$(wc -l < "$d/prep.log") >> "$SORTIE_OUTPUT"
  train:
    kind: run
    on: host
    needs: [prep]
    retries: 1
    backoff: 1s
    run: |
      d={{ steps.data.outputs.mount_path }}
      if [ -f "$d/checkpoint" ]; then echo resumed=yes >> "$SORTIE_OUTPUT"; exit 0; fi
      touch "$d/checkpoint" "$SORTIE_HOST_ROOT/train-started"
      sleep 120
  teardown: { kind: teardown, needs: [train] }
"#;

fn outputs<'a>(events: &'a [Value], step: &str, key: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["event"] == "step_output" && e["step"] == step && e["key"] == key)
        .filter_map(|e| e["value"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_host_lost_mid_step_is_re_provisioned_beside_its_volume() {
    let endpoint = Endpoint::ready("sortie-state", &[]).await;
    let t = endpoint.plan_test(PLAN);
    let mut cmd = t.command();
    cmd.args(["apply", "p.yaml", "--output", "json"]);
    let mut live = Live::start(cmd);
    let root = endpoint.sandbox_root();
    live.expect_event(
        Duration::from_secs(60),
        |e| e["event"] == "step_started" && e["step"] == "train",
        || {
            std::fs::read_dir(&root)
                .map(|d| d.flatten().any(|e| e.path().join("train-started").exists()))
                .unwrap_or(false)
        },
    );
    let seen = crate::apply::events(&live.seen.join("\n"));
    let first = outputs(&seen, "host", "instance_id")[0].to_string();
    // EC2 takes the host away (as a spot reclaim or an operator would).
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    ec2.terminate_instances()
        .instance_ids(&first)
        .send()
        .await
        .expect("terminate");
    live.expect_event(
        Duration::from_secs(120),
        |e| e["event"] == "run_finished",
        || true,
    );
    let code = live.proc.child.wait().expect("apply exits").code();
    let events = crate::apply::events(&live.seen.join("\n"));
    assert_eq!(code, Some(0), "{}", live.seen.join("\n"));

    let replaced: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "host_replaced")
        .collect();
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_eq!(replaced[0]["step"], "host");
    assert_eq!(replaced[0]["instance_id"], first.as_str());
    assert!(
        replaced[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&first) && r.contains("terminated")),
        "{:?}",
        replaced[0]
    );
    assert_eq!(replaced[0]["rerun"], serde_json::json!(["data", "prep"]));

    let hosts = outputs(&events, "host", "instance_id");
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert_ne!(hosts[0], hosts[1]);
    let zones = outputs(&events, "host", "availability_zone");
    assert_eq!(zones[0], zones[1], "the new host is in the volume's zone");
    // The same volume, re-attached: what prep wrote the first time is still there, and train resumes.
    let volumes = outputs(&events, "data", "volume_id");
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    assert_eq!(volumes[0], volumes[1]);
    assert_eq!(outputs(&events, "prep", "runs"), ["1", "2"]);
    assert_eq!(outputs(&events, "train", "resumed"), ["yes"]);
    let retry = events
        .iter()
        .find(|e| e["event"] == "step_retry" && e["step"] == "train")
        .expect("train retried");
    assert_eq!(retry["attempt"], 2);

    let calls = endpoint.calls();
    assert_eq!(calls["ec2:RunInstances"], 2, "{calls:#}");
    assert_eq!(calls["ec2:CreateVolume"], 1, "{calls:#}");
    // Nothing of the run is left.
    let state = t.state("p.yaml");
    assert_eq!(state["status"], "succeeded", "{state:#}");
    let left = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        )
        .send()
        .await
        .expect("describe");
    assert!(left.reservations().is_empty(), "{left:?}");
    let volumes = ec2.describe_volumes().send().await.expect("volumes");
    let data: Vec<_> = volumes
        .volumes()
        .iter()
        .filter(|v| v.volume_id() == Some(volumes_id(&events)))
        .collect();
    assert!(data.is_empty(), "the data volume is left: {data:?}");
}

fn volumes_id(events: &[Value]) -> &str {
    outputs(events, "data", "volume_id")[0]
}
