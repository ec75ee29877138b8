//! SSM's 64 KB limit on a command (issue 10 §9): a launch command carries the host wrapper beside the script, so
//! a script of 36 KiB (which used to travel inline) is already too big; it travels through S3 instead, and every
//! command sortie sends fits. The endpoint refuses a bigger command as AWS does (MaxDocumentSizeExceeded).

use std::time::Duration;

use crate::aws_endpoint::Endpoint;

/// SSM's limit, the document's own content included (docs/TEST_ENDPOINT.md).
const LIMIT: usize = 64 * 1024;

fn plan(padding: &str) -> String {
    format!(
        "plan: sizes
target: {{ provider: aws, region: us-east-1 }}
state: s3://size-state/runs
defaults: {{ timeout: 10m }}
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  mid:
    kind: run
    on: host
    run: |
      # {padding}
      echo mid=$(( 6 * 7 )) >> \"$SORTIE_OUTPUT\"
  small:
    kind: run
    on: host
    needs: [mid]
    run: echo small=ok >> \"$SORTIE_OUTPUT\"
  teardown: {{ kind: teardown, needs: [small] }}
"
    )
}

/// The text of the launch command of `step`'s first attempt, among the commands SSM keeps.
fn launch_of<'a>(commands: &'a [(String, String)], step: &str) -> &'a str {
    let needle =
        format!("wrapper.sh\" launch \"${{SORTIE_HOST_ROOT:-}}/var/lib/sortie/steps\"/{step} 1 ");
    commands
        .iter()
        .map(|(_, text)| text.as_str())
        .find(|text| text.contains(&needle))
        .unwrap_or_else(|| {
            panic!(
                "no launch command of `{step}` among {} commands",
                commands.len()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_launch_over_the_ssm_size_limit_travels_through_s3() {
    let endpoint = Endpoint::ready("size-state", &[]).await;
    let padding = "x".repeat(36 * 1024);
    // Inline, the script's base64 alone is 48 KiB, and the wrapper's another 21 KiB: over the limit.
    assert!(padding.len() * 4 / 3 + 21 * 1024 > LIMIT);
    let t = endpoint.plan_test(&plan(&padding));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::from(t.command())
            .args(["apply", "p.yaml", "--output", "json"])
            .output(),
    )
    .await
    .expect("apply within 2 minutes")
    .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}\nendpoint log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        endpoint.log()
    );
    let outputs: Vec<(String, String)> = crate::apply::events(&stdout)
        .into_iter()
        .filter(|e| e["event"] == "step_output")
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        outputs.contains(&("mid".into(), "42".into())),
        "{outputs:?}"
    );
    assert!(
        outputs.contains(&("small".into(), "ok".into())),
        "{outputs:?}"
    );

    // Every command SSM keeps fits, measured as the request carries it (JSON).
    let ssm = aws_sdk_ssm::Client::new(&endpoint.sdk_config().await);
    let listed = ssm.list_commands().send().await.expect("list commands");
    let mut commands = Vec::new();
    for c in listed.commands() {
        let params = c.parameters().expect("parameters");
        let size = serde_json::to_string(params).expect("json").len();
        assert!(size < LIMIT, "command {:?} is {size} bytes", c.command_id());
        let text = params
            .get("commands")
            .map(|v| v.join("\n"))
            .unwrap_or_default();
        commands.push((c.command_id().unwrap_or_default().to_string(), text));
    }
    // The big script was fetched from S3 (a presigned GET); the small one still travels inline.
    let mid = launch_of(&commands, "mid");
    assert!(
        mid.contains("curl -fsS --retry 5 --retry-delay 1 -o \"$H/scripts\"/mid.1 "),
        "{}",
        &mid[..mid.len().min(2000)]
    );
    assert!(!mid.contains(&padding[..1024]));
    let small = launch_of(&commands, "small");
    assert!(!small.contains("-o \"$H/scripts\"/small.1"));
}
