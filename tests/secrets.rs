//! Secrets are scrubbed by value from everything a run leaves, and secret outputs reach later steps of the same
//! apply only (issue 7, item 4).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::apply::{plan_cmd, run_cmd, run_plan, sandbox};
use crate::test_builder::{Deadline as _, DEADLINE};

const MINUTE: Duration = Duration::from_secs(60);

const VAR_SECRET: &str = "var-s3cr3t-8c1f";
const OUTPUT_SECRET: &str = "out-s3cr3t-5d2e";
const KEY_ID: &str = "AKIAQWERTYUIOPASDFGH";

fn leaky_plan() -> String {
    format!(
        "plan: leaky
target: {{ provider: local }}
vars:
  hf_token: {VAR_SECRET}
steps:
  host: {{ kind: instance }}
  make:
    kind: run
    on: host
    run: echo 'api_token={OUTPUT_SECRET}' >> \"$SORTIE_OUTPUT\"
  leak:
    kind: run
    on: host
    env: {{ AWS_ACCESS_KEY_ID: {KEY_ID} }}
    run: |
      stat -c %a \"$SORTIE_STEP_DIR/script\" > \"$MARK.mode\"
      echo {{{{ steps.make.outputs.api_token }}}} > \"$MARK\"
      echo \"var {{{{ vars.hf_token }}}} output {{{{ steps.make.outputs.api_token }}}} key $AWS_ACCESS_KEY_ID\"
      echo \"var {{{{ vars.hf_token }}}} output {{{{ steps.make.outputs.api_token }}}} key $AWS_ACCESS_KEY_ID\" >&2
      exit 3
  teardown: {{ kind: teardown, when: always }}
"
    )
}

/// Every file under `dir` (recursively) that contains one of `needles`, with the needle.
fn hits_in_files(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            hits.extend(hits_in_files(&path, needles));
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            for n in needles.iter().filter(|n| text.contains(**n)) {
                hits.push(format!("{}: {n}", path.display()));
            }
        }
    }
    hits
}

fn hits_in(what: &str, text: &str, needles: &[&str]) -> Vec<String> {
    needles
        .iter()
        .filter(|n| text.contains(**n))
        .map(|n| format!("{what}: {n}"))
        .collect()
}

#[test]
fn test_e2e_planted_secrets_leave_no_trace() {
    let (t, _reaper) = sandbox("p.yaml", &leaky_plan());
    let dir = t.dir.path();
    let mark = dir.join("marks").join("seen");
    std::fs::create_dir_all(mark.parent().expect("parent")).expect("mkdir");
    let mut cmd = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
    cmd.env("MARK", &mark);
    let json = run_cmd(cmd, MINUTE);
    assert_eq!(json.code, Some(1), "{}", json.show());
    // The step did get the real values, and its rendered script was private.
    let seen = std::fs::read_to_string(&mark).expect("mark");
    assert_eq!(
        seen.trim(),
        OUTPUT_SECRET,
        "the output reached the next step"
    );
    let mode = std::fs::read_to_string(mark.with_extension("mode")).expect("mode");
    assert_eq!(mode.trim(), "600", "mode of the rendered script");

    let needles = [VAR_SECRET, OUTPUT_SECRET, KEY_ID];
    let mut hits = hits_in(
        "apply events",
        &(json.stdout.clone() + &json.stderr),
        &needles,
    );
    // A human apply of a new run prints the same things as lines.
    let human = run_plan(dir, &["apply", "p.yaml", "--new"], MINUTE);
    hits.extend(hits_in(
        "apply lines",
        &(human.stdout.clone() + &human.stderr),
        &needles,
    ));
    assert!(human.stdout.contains("<redacted>"), "{}", human.show());
    for args in [
        vec!["status", "p.yaml"],
        vec!["status", "p.yaml", "--output", "json"],
        vec!["logs", "p.yaml", "leak"],
        vec!["runs", "p.yaml"],
    ] {
        let ran = run_plan(dir, &args, MINUTE);
        assert_eq!(ran.code, Some(0), "plan {args:?}: {}", ran.show());
        hits.extend(hits_in(
            &args.join(" "),
            &(ran.stdout + &ran.stderr),
            &needles,
        ));
    }
    // Everything the runs left beside the plan: state, kept logs, hosts.
    hits.extend(hits_in_files(&dir.join(".sortie"), &needles));
    assert!(hits.is_empty(), "secrets found:\n{}", hits.join("\n"));

    let logs = run_plan(dir, &["logs", "p.yaml", "leak"], MINUTE);
    assert!(
        logs.stdout
            .contains("var <redacted> output <redacted> key <redacted>"),
        "the log is served, scrubbed: {}",
        logs.show()
    );
    for state in crate::apply::state_files(dir, "leaky") {
        let mode = std::fs::metadata(&state)
            .expect("state")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "mode of {}", state.display());
    }
}

#[test]
fn test_e2e_secret_output_from_an_earlier_apply_fails_clearly() {
    let plan = "plan: later
target: { provider: local }
steps:
  host: { kind: instance }
  make:
    kind: run
    on: host
    run: echo 'db_password=p4ssw0rd-later' >> \"$SORTIE_OUTPUT\"
  use:
    kind: run
    on: host
    needs: [make]
    run: |
      test -f \"$GO\" || exit 5
      echo {{ steps.make.outputs.db_password }}
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let go = dir.join("go");
    let mut first = plan_cmd(dir, &["apply", "p.yaml"]);
    first.env("GO", &go);
    let ran = run_cmd(first, MINUTE);
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    std::fs::write(&go, "").expect("go");
    // The failed run is finished: continue it by name.
    let run = crate::apply::wait_for_run(dir, "later", MINUTE);
    let mut second = plan_cmd(dir, &["apply", "p.yaml", "--run", &run]);
    second.env("GO", &go);
    let ran = run_cmd(second, MINUTE);
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        ran.stdout.contains(
            "step `use` needs the secret output `steps.make.outputs.db_password`, which an earlier apply produced"
        ),
        "{}",
        ran.show()
    );
    // With --from the secret is made again in the same apply, and it is passed on.
    let mut third = plan_cmd(dir, &["apply", "p.yaml", "--run", &run, "--from", "make"]);
    third.env("GO", &go);
    let ran = run_cmd(third, MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let logs = run_plan(dir, &["logs", "p.yaml", "use"], MINUTE);
    assert_eq!(logs.stdout, "<redacted>\n", "{}", logs.show());
}

/// The aws target: the same secrets, and every object the run leaves in the endpoint's S3 is grepped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_planted_secrets_leave_no_trace_in_s3() {
    let profile = "sortie-ssm";
    let endpoint = crate::aws_endpoint::Endpoint::start_with(&[
        "--seed-profile",
        profile,
        "--require-instance-profile",
    ]);
    endpoint.create_bucket("sortie-state").await;
    let plan = format!(
        "plan: awsleaky
target: {{ provider: aws, region: us-east-1 }}
state: s3://sortie-state/runs
defaults: {{ timeout: 5m }}
vars:
  hf_token: {VAR_SECRET}
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {profile}
    root_size: 20GiB
    max_lifetime: 2h
  make:
    kind: run
    run: |
      echo 'api_token={OUTPUT_SECRET}' >> \"$SORTIE_OUTPUT\"
      echo \"mode=$(stat -c %a \"$SORTIE_STEP_DIR/script\")\" >> \"$SORTIE_OUTPUT\"
  leak:
    kind: run
    needs: [make]
    env: {{ AWS_ACCESS_KEY_ID: {KEY_ID} }}
    run: |
      echo \"var {{{{ vars.hf_token }}}} output {{{{ steps.make.outputs.api_token }}}} key $AWS_ACCESS_KEY_ID\"
      echo \"var {{{{ vars.hf_token }}}} output {{{{ steps.make.outputs.api_token }}}} key $AWS_ACCESS_KEY_ID\" >&2
      exit 3
  teardown:
    kind: teardown
    when: always
"
    );
    let t = crate::test_builder::Test::new()
        .file("p.yaml", plan)
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let needles = [VAR_SECRET, OUTPUT_SECRET, KEY_ID];
    let apply = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    let text = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    assert_eq!(apply.status.code(), Some(1), "{}", text(&apply));
    let mut hits = hits_in("apply", &text(&apply), &needles);
    for args in [
        vec!["status", "p.yaml"],
        vec!["status", "p.yaml", "--output", "json"],
        vec!["logs", "p.yaml", "leak"],
    ] {
        let out = t
            .command()
            .args(&args)
            .output_within(DEADLINE)
            .expect("plan");
        assert_eq!(
            out.status.code(),
            Some(0),
            "plan {args:?}: {}\n--- apply\n{}",
            text(&out),
            text(&apply)
        );
        hits.extend(hits_in(&args.join(" "), &text(&out), &needles));
        if args.contains(&"json") {
            let state: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state");
            assert_eq!(
                state["steps"]["make"]["outputs"]["mode"], "600",
                "{state:#}"
            );
        }
        if args[0] == "logs" {
            assert!(text(&out).contains("key <redacted>"), "{}", text(&out));
        }
    }
    let s3 = endpoint.s3_client().await;
    let listed = s3
        .list_objects_v2()
        .bucket("sortie-state")
        .send()
        .await
        .expect("list");
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(keys.iter().any(|k| k.contains("/ssm/")), "{keys:?}");
    for key in &keys {
        let got = s3
            .get_object()
            .bucket("sortie-state")
            .key(key)
            .send()
            .await
            .expect("get");
        let bytes = got.body.collect().await.expect("body").into_bytes();
        hits.extend(hits_in(
            &format!("s3://sortie-state/{key}"),
            &String::from_utf8_lossy(&bytes),
            &needles,
        ));
    }
    // SSM keeps every command's parameters for 30 days (ssm:ListCommands): no secret travels there.
    let ssm = aws_sdk_ssm::Client::new(&endpoint.sdk_config().await);
    let commands = ssm.list_commands().send().await.expect("list commands");
    assert!(commands.commands().len() >= 4, "{commands:?}");
    for c in commands.commands() {
        // The launch command carries files base64-encoded: look inside those too.
        let mut params = format!("{:?}", c.parameters());
        params += &decoded_base64_runs(&params);
        // `make` has the output's value literally in its script (it stands in for a step that fetches it):
        // sortie cannot know it is a secret before the step has run.
        let known: Vec<&str> = if params.contains("echo 'api_token=") {
            vec![VAR_SECRET, KEY_ID]
        } else {
            needles.to_vec()
        };
        hits.extend(hits_in(
            &format!("ssm command {}", c.command_id().unwrap_or_default()),
            &params,
            &known,
        ));
    }
    assert!(hits.is_empty(), "secrets found:\n{}", hits.join("\n"));
}

/// Every run of 16 or more base64 characters in `text`, decoded (where it decodes), one per line.
fn decoded_base64_runs(text: &str) -> String {
    use base64::Engine;
    let mut out = String::new();
    for run in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .filter(|r| r.len() >= 16)
    {
        let trimmed = run.trim_end_matches('=');
        let usable = &trimmed[..trimmed.len() - trimmed.len() % 4];
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(usable) {
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}
