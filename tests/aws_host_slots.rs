//! On AWS each running step holds one of the SSM agent's 5 command workers on its host (amazon-ssm-agent:
//! Mds.CommandWorkersLimit, default 5; the test endpoint enforces it): the runner starts at most 3 run steps at
//! once per host and queues the rest, so launches and probes always find a free worker.

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

fn plan() -> String {
    let mut text = String::from(
        "plan: slots
target: { provider: aws, region: us-east-1 }
state: s3://slots-state/runs
defaults: { timeout: 5m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
",
    );
    for i in 1..=6 {
        text.push_str(&format!(
            "  s{i}:
    kind: run
    on: host
    run: |
      r=\"$SORTIE_HOST_ROOT/running\"
      mkdir -p \"$r\" && mkdir \"$r/s{i}\"
      ls \"$r\" | wc -l >> \"$SORTIE_HOST_ROOT/seen\"
      sleep 1.5
      rmdir \"$r/s{i}\"
"
        ));
    }
    text.push_str("  teardown: { kind: teardown }\n");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_at_most_three_steps_run_at_once_on_one_host() {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("slots-state").await;
    let t = Test::new()
        .file("p.yaml", plan())
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
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
    let instance = std::fs::read_dir(endpoint.sandbox_root())
        .expect("sandboxes")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("seen").exists())
        .expect("the instance's sandbox");
    let seen: Vec<usize> = std::fs::read_to_string(instance.join("seen"))
        .expect("seen")
        .lines()
        .map(|l| l.trim().parse().expect("a count"))
        .collect();
    assert_eq!(seen.len(), 6, "every step ran once: {seen:?}");
    let most = seen.iter().copied().max().unwrap_or(0);
    // Six independent steps with parallelism 10: without the limit all six would overlap.
    assert!(
        (2..=3).contains(&most),
        "steps at once on the host: {seen:?}"
    );
}
