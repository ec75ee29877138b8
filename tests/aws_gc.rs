//! `plan gc` over time (issue 10 §7), against the test endpoint: a run that says running is left alone while it
//! can be going; it is garbage once its instance is terminated or once it wrote no checkpoint for
//! `--stale-after`. A volume the run keeps is listed, and removed only with `--yes --include-kept`.

use std::time::Duration;

use aws_sdk_ec2::types::Filter;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PLAN: &str = "plan: gcplan
target: { provider: aws, region: us-east-1 }
state: s3://gc-state/runs
defaults: { timeout: 10m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  scratch:
    kind: volume
    attach_to: host
    size: 1GiB
    mount: /mnt/scratch
  data:
    kind: volume
    attach_to: host
    size: 1GiB
    mount: /mnt/data
    keep: true
  train:
    kind: run
    on: host
    needs: [scratch, data]
    detach: true
    run: sleep 300
  teardown: { kind: teardown, needs: [train] }
";

struct Gc {
    endpoint: Endpoint,
    t: Test,
}

impl Gc {
    /// `plan gc p.yaml ARGS...`: exit code and stdout.
    fn gc(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = self
            .t
            .command()
            .args(["gc", "p.yaml"])
            .args(args)
            .output_within(DEADLINE)
            .expect("plan gc");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        (out.status.code(), format!("{stdout}{stderr}"))
    }

    async fn volume_exists(&self, id: &str) -> bool {
        let ec2 = aws_sdk_ec2::Client::new(&self.endpoint.sdk_config().await);
        let found = ec2
            .describe_volumes()
            .filters(Filter::builder().name("volume-id").values(id).build())
            .send()
            .await
            .expect("describe volumes");
        !found.volumes().is_empty()
    }
}

/// The line `plan gc` prints for a resource id.
fn line<'a>(text: &'a str, id: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("no line for {id}:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_gc_collects_abandoned_running_runs_and_keeps_kept_volumes() {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("gc-state").await;
    let t = Test::new()
        .file("p.yaml", PLAN)
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let g = Gc { endpoint, t };

    // An apply that leaves its run running: the detached step goes on, the apply stops waiting.
    let out =
        g.t.command()
            .args(["apply", "p.yaml", "--no-wait", "--output", "json"])
            .output_within(DEADLINE)
            .expect("apply");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = crate::apply::events(&String::from_utf8_lossy(&out.stdout));
    let output = |step: &str, key: &str| -> String {
        events
            .iter()
            .find(|e| e["event"] == "step_output" && e["step"] == step && e["key"] == key)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no output {step}.{key}"))
            .to_string()
    };
    let (instance, scratch, data) = (
        output("host", "instance_id"),
        output("scratch", "volume_id"),
        output("data", "volume_id"),
    );

    // Running and recent: nothing is garbage.
    let (code, text) = g.gc(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        line(&text, &instance).starts_with("keep")
            && line(&text, &instance).contains("still going")
    );
    assert!(text.contains("nothing to collect"), "{text}");

    // No checkpoint for longer than --stale-after: abandoned. The kept volume is only listed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, text) = g.gc(&["--stale-after", "1s"]);
    assert_eq!(code, Some(0), "{text}");
    for id in [&instance, &scratch] {
        let l = line(&text, id);
        assert!(
            l.starts_with("garbage") && l.contains("has not been checkpointed for"),
            "{l}"
        );
    }
    let l = line(&text, &data);
    assert!(l.starts_with("keep") && l.contains("--include-kept"), "{l}");
    assert!(text.contains("run again with --yes"), "{text}");

    // The instance dies outside sortie: the run still says running, but its volumes are garbage now.
    let ec2 = aws_sdk_ec2::Client::new(&g.endpoint.sdk_config().await);
    ec2.terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .expect("terminate");
    let (code, text) = g.gc(&[]);
    assert_eq!(code, Some(0), "{text}");
    let l = line(&text, &scratch);
    assert!(
        l.starts_with("garbage") && l.contains(&format!("its instance {instance} is terminated")),
        "{l}"
    );
    assert!(line(&text, &data).starts_with("keep"), "{text}");

    // --yes removes the garbage, not the kept volume; --include-kept needs --yes, then removes it too.
    let (code, text) = g.gc(&["--yes"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("removed  ebs-volume {scratch}")),
        "{text}"
    );
    assert!(!g.volume_exists(&scratch).await);
    assert!(
        g.volume_exists(&data).await,
        "the kept volume survives --yes"
    );
    let (code, text) = g.gc(&["--include-kept"]);
    assert_eq!(code, Some(2), "--include-kept without --yes: {text}");
    assert!(g.volume_exists(&data).await);
    let (code, text) = g.gc(&["--yes", "--include-kept"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("removed  ebs-volume {data}")),
        "{text}"
    );
    assert!(!g.volume_exists(&data).await);
}
