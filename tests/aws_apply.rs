//! `plan apply` on the aws target, end to end against the test endpoint (moto with SSM commands that really
//! run in a per-instance sandbox): instance, volume (mounted on a real loop device), run steps through SSM,
//! teardown — and afterwards nothing of the run is left.

use aws_sdk_ec2::types::Filter;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PROFILE: &str = "sortie-ssm";

fn plan(fail: bool) -> String {
    let check = if fail {
        "exit 3"
    } else {
        "test -s \"$data/train.jsonl\""
    };
    format!(
        "plan: awsquick
target: {{ provider: aws, region: us-east-1 }}
state: s3://sortie-state/runs
defaults: {{ timeout: 5m }}
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge, g6.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {PROFILE}
    root_size: 20GiB
    max_lifetime: 2h
  volume:
    kind: volume
    attach_to: instance
    size: 1GiB
    mount: /mnt/training
  prep-data:
    kind: run
    run: |
      set -eu
      data={{{{ steps.volume.outputs.mount_path }}}}/data
      mkdir -p \"$data\"
      for i in 1 2 3; do echo '{{\"text\": \"row\"}}'; done > \"$data/train.jsonl\"
      echo \"rows=$(wc -l < \"$data/train.jsonl\")\" >> \"$SORTIE_OUTPUT\"
      echo \"data=$data\" >> \"$SORTIE_OUTPUT\"
  train:
    kind: run
    needs: [prep-data]
    detach: true
    lock: train
    run: |
      set -eu
      data={{{{ steps.prep_data.outputs.data }}}}
      {check}
      for s in 1 2 3; do echo \"step $s/3\"; sleep 0.2; done
      echo \"adapter=done\" >> \"$SORTIE_OUTPUT\"
  big:
    kind: run
    needs: [prep-data]
    run: |
      # A script larger than an SSM command may carry travels through S3 (a presigned GET).
      # {padding}
      echo big-ok=$(( 6 * 7 )) >> \"$SORTIE_OUTPUT\"
  teardown:
    kind: teardown
",
        padding = "x".repeat(60 * 1024)
    )
}

struct Aws {
    endpoint: Endpoint,
}

impl Aws {
    async fn start() -> Aws {
        let endpoint =
            Endpoint::start_with(&["--seed-profile", PROFILE, "--require-instance-profile"]);
        endpoint.create_bucket("sortie-state").await;
        Aws { endpoint }
    }

    fn test(&self, plan: &str) -> Test {
        Test::new()
            .file("p.yaml", plan)
            .env("SORTIE_POLL_INTERVAL", "100ms")
            .envs(self.endpoint.env())
    }

    /// Instances not terminated and volumes that still exist, tagged with the run.
    async fn left_of_run(&self, run: &str) -> Vec<String> {
        let ec2 = aws_sdk_ec2::Client::new(&self.endpoint.sdk_config().await);
        let tag = Filter::builder().name("tag:sortie:run").values(run).build();
        let mut left = Vec::new();
        let reservations = ec2
            .describe_instances()
            .filters(tag.clone())
            .send()
            .await
            .expect("describe instances");
        for r in reservations.reservations() {
            for i in r.instances() {
                let state = i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default();
                if state != "terminated" {
                    left.push(format!(
                        "instance {} ({state})",
                        i.instance_id().unwrap_or_default()
                    ));
                }
            }
        }
        let volumes = ec2
            .describe_volumes()
            .filters(tag)
            .send()
            .await
            .expect("describe volumes");
        for v in volumes.volumes() {
            left.push(format!("volume {}", v.volume_id().unwrap_or_default()));
        }
        left
    }
}

/// `plan apply p.yaml --output json`, which must succeed; its events.
fn apply_ok(t: &Test) -> Vec<serde_json::Value> {
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    events(&out.stdout)
}

fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let event = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            crate::event_schema::check_event(&event);
            event
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_quickstart_leaves_nothing_behind() {
    let aws = Aws::start().await;
    let t = aws.test(&plan(false));
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let events = events(&out.stdout);
    let run = events[0]["run"].as_str().expect("run id").to_string();
    let status = t
        .command()
        .args(["status", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("status");
    let state: serde_json::Value = serde_json::from_slice(&status.stdout).expect("state");
    for step in [
        "instance",
        "volume",
        "prep-data",
        "train",
        "big",
        "teardown",
    ] {
        assert_eq!(
            state["steps"][step]["status"], "succeeded",
            "{step}: {}",
            state["steps"][step]
        );
    }
    let instance = state["steps"]["instance"]["outputs"]["instance_id"]
        .as_str()
        .expect("instance id");
    assert!(instance.starts_with("i-"), "{instance}");
    let image = state["steps"]["instance"]["outputs"]["image_id"]
        .as_str()
        .unwrap_or_default();
    assert!(
        image.starts_with("ami-"),
        "the resolved AMI is recorded: {image}"
    );
    assert_eq!(state["steps"]["prep-data"]["outputs"]["rows"], "3");
    assert_eq!(state["steps"]["train"]["outputs"]["adapter"], "done");
    assert_eq!(
        state["steps"]["big"]["outputs"]["big-ok"], "42",
        "the 60 KiB script ran"
    );
    assert!(state["steps"]["volume"]["outputs"]["volume_id"]
        .as_str()
        .unwrap_or_default()
        .starts_with("vol-"));
    let left = aws.left_of_run(&run).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    // The full log comes back from S3, where SSM wrote the command output.
    let logs = t
        .command()
        .args(["logs", "p.yaml", "train"])
        .output_within(DEADLINE)
        .expect("logs");
    assert_eq!(
        logs.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("step 3/3"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );
    // The heartbeat went to S3 too, beside the state.
    let s3 = aws.endpoint.s3_client().await;
    let heartbeat = s3
        .get_object()
        .bucket("sortie-state")
        .key(format!("runs/awsquick/{run}/steps/train/heartbeat.json"))
        .send()
        .await
        .expect("heartbeat object");
    let heartbeat: serde_json::Value =
        serde_json::from_slice(&heartbeat.body.collect().await.expect("body").into_bytes())
            .expect("heartbeat JSON");
    assert_eq!(heartbeat["attempt"], 1);
    let calls = aws.endpoint.calls();
    assert!(
        calls["ssm:SendCommand"].as_u64().unwrap_or(0) >= 4,
        "{calls}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_failing_step_still_tears_down() {
    let aws = Aws::start().await;
    let t = aws.test(&plan(true));
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    let run = events[0]["run"].as_str().expect("run id").to_string();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["step"], "train");
    assert!(events.iter().any(|e| e["event"] == "step_finished"
        && e["step"] == "teardown"
        && e["status"] == "succeeded"));
    let left = aws.left_of_run(&run).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_capacity_failover_is_recorded() {
    let aws = Aws::start().await;
    aws.endpoint.add_fault(
        r#"{"action":"RunInstances","match":{"InstanceType":"g5.2xlarge"},"error":{"code":"InsufficientInstanceCapacity","message":"no g5 here","status":500},"times":-1}"#,
    );
    let t = aws.test(&plan(false));
    let events = apply_ok(&t);
    let failovers: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "step_failover")
        .collect();
    assert!(!failovers.is_empty(), "no failover recorded");
    assert!(
        failovers
            .iter()
            .all(|f| f["instance_type"] == "g5.2xlarge"
                && f["code"] == "InsufficientInstanceCapacity")
    );
    let launched = events
        .iter()
        .find(|e| {
            e["event"] == "step_output" && e["step"] == "instance" && e["key"] == "instance_type"
        })
        .expect("instance_type output");
    assert_eq!(launched["value"], "g6.2xlarge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_subnet_without_free_addresses_fails_over_to_another_zone() {
    let aws = Aws::start().await;
    aws.endpoint.add_fault(
        r#"{"action":"RunInstances","match":{"AvailabilityZone":"us-east-1a"},"error":{"code":"InsufficientFreeAddressesInSubnet","message":"no free address in subnet-1a","status":400},"times":-1}"#,
    );
    let t = aws.test(&plan(false));
    let events = apply_ok(&t);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "step_failover"
                && e["code"] == "InsufficientFreeAddressesInSubnet"),
        "{events:?}"
    );
    let zone = events
        .iter()
        .find(|e| {
            e["event"] == "step_output"
                && e["step"] == "instance"
                && e["key"] == "availability_zone"
        })
        .expect("availability_zone output");
    assert_ne!(zone["value"], "us-east-1a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_gc_collects_resources_of_a_lost_run() {
    let aws = Aws::start().await;
    let t = aws.test(&plan(false));
    // A run whose state is lost: kill the apply once its volume exists, then delete the state from S3.
    let mut cmd = t.command();
    cmd.args(["apply", "p.yaml", "--output", "json"]);
    let mut live = crate::apply::Live::start(cmd);
    live.expect_event(
        std::time::Duration::from_secs(60),
        |e| e["event"] == "step_finished" && e["step"] == "volume",
        || true,
    );
    let seen = live.kill9();
    let run = crate::apply::run_id(&seen);
    let s3 = aws.endpoint.s3_client().await;
    for key in ["state.json", "lock.json"] {
        let _ = s3
            .delete_object()
            .bucket("sortie-state")
            .key(format!("runs/awsquick/{run}/{key}"))
            .send()
            .await;
    }
    assert_eq!(
        aws.left_of_run(&run).await.len(),
        3,
        "instance, its root volume and the data volume"
    );

    let listed = t
        .command()
        .args(["gc", "p.yaml"])
        .output_within(DEADLINE)
        .expect("gc");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        text.contains("garbage") && text.contains("its run is unknown to the state store"),
        "{text}"
    );
    assert!(text.contains("run again with --yes"), "{text}");
    assert_eq!(
        aws.left_of_run(&run).await.len(),
        3,
        "listing removes nothing"
    );

    let removed = t
        .command()
        .args(["gc", "p.yaml", "--yes"])
        .output_within(DEADLINE)
        .expect("gc --yes");
    assert_eq!(
        removed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let left = aws.left_of_run(&run).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let again = t
        .command()
        .args(["gc", "p.yaml"])
        .output_within(DEADLINE)
        .expect("gc again");
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no resources tagged sortie:plan=awsquick")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_examples_quickstart_runs_on_aws() {
    // examples/quickstart.yaml itself, with only its target switched to aws and the instance described.
    let aws = Aws::start().await;
    let quickstart =
        std::fs::read_to_string(crate::test_builder::repo().join("examples/quickstart.yaml"))
            .expect("quickstart");
    let on_aws = quickstart
        .replace(
            "target: { provider: local }",
            "target: { provider: aws, region: us-east-1 }\nstate: s3://sortie-state/runs",
        )
        .replace(
            "  instance:\n    kind: instance\n",
            &format!(
                "  instance:\n    kind: instance\n    instance_types: [g5.2xlarge]\n    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64\n    profile: {PROFILE}\n    root_size: 20GiB\n"
            ),
        );
    assert_ne!(
        on_aws, quickstart,
        "the quickstart's target line changed; update this test"
    );
    // The plan ships ../pipeline and uses ../templates: give the test directory the same layout.
    let on_aws = on_aws
        .replace("../pipeline", "pipeline")
        .replace("../templates", "templates");
    let t = aws.test(&on_aws);
    crate::quickstart::copy_tree(
        &crate::test_builder::repo().join("pipeline"),
        &t.dir.path().join("pipeline"),
    );
    crate::quickstart::copy_tree(
        &crate::test_builder::repo().join("templates"),
        &t.dir.path().join("templates"),
    );
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    let run = events[0]["run"].as_str().expect("run id").to_string();
    let uploaded = events
        .iter()
        .find(|e| {
            e["event"] == "step_output" && e["step"] == "upload" && e["key"] == "artifact_uri"
        })
        .and_then(|e| e["value"].as_str())
        .expect("upload output")
        .to_string();
    let manifest = std::path::Path::new(&uploaded).join("manifest.json");
    assert!(manifest.exists(), "{}", manifest.display());
    let left = aws.left_of_run(&run).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_status_reads_the_heartbeat_from_s3() {
    let aws = Aws::start().await;
    let plan = format!(
        "plan: awsbeat
target: {{ provider: aws, region: us-east-1 }}
state: s3://sortie-state/runs
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {PROFILE}
    root_size: 20GiB
  train:
    kind: run
    detach: true
    heartbeat: {{ interval: 1s }}
    run: |
      for s in $(seq 1 40); do echo \"step $s/40\"; sleep 0.25; done
  teardown: {{ kind: teardown }}
"
    );
    let t = aws.test(&plan);
    let first = t
        .command()
        .args(["apply", "p.yaml", "--no-wait"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(
        first.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The orchestrator is gone; the host keeps uploading heartbeats, and status reads them from S3.
    let mut seen = String::new();
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let status = t
            .command()
            .args(["status", "p.yaml"])
            .output_within(DEADLINE)
            .expect("status");
        seen = String::from_utf8_lossy(&status.stdout).to_string();
        if seen.lines().any(|l| {
            l.starts_with("train")
                && l.contains("running")
                && l.contains("/40")
                && l.contains(" ago")
        }) {
            break;
        }
    }
    assert!(
        seen.lines()
            .any(|l| l.starts_with("train") && l.contains("/40") && l.contains(" ago")),
        "no heartbeat progress in:\n{seen}"
    );
    let second = t
        .command()
        .args(["apply", "p.yaml"])
        .output_within(DEADLINE)
        .expect("apply again");
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_teardown_terminates_the_instance_even_when_a_volume_cannot_be_detached() {
    // A volume stuck in `detaching` (here: DetachVolume always refused) must not keep the GPU running: the
    // instance is terminated first, which releases the volume, and the volume is deleted after.
    let aws = Aws::start().await;
    aws.endpoint.add_fault(
        r#"{"action": "ec2:DetachVolume", "times": -1,
            "error": {"code": "UnauthorizedOperation", "message": "stuck", "status": 403}}"#,
    );
    let t = aws.test(&plan(false));
    let run = apply_ok(&t)[0]["run"].as_str().expect("run id").to_string();
    let left = aws.left_of_run(&run).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        aws.endpoint.calls().get("ec2:DetachVolume").is_none(),
        "terminating first leaves nothing to detach"
    );
}
