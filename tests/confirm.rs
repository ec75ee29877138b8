//! `plan apply` on AWS asks before it spends: on a terminal it shows the preview and asks; without one and
//! without `--yes` it exits 2 and creates nothing. The terminal is a real pty (`script`), answered through it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::aws_endpoint::Endpoint;
use crate::test_builder::{Test, PLAN};

const PLAN_TEXT: &str = "plan: asked
target: { provider: aws, region: us-east-1 }
state: s3://sortie-state/runs
defaults: { timeout: 5m }
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    root_size: 20GiB
  hello:
    kind: run
    run: echo hello
  teardown: { kind: teardown }
";

async fn started() -> Endpoint {
    let endpoint = Endpoint::start();
    endpoint.create_bucket("sortie-state").await;
    endpoint
}

/// The endpoint's environment without the CI answer (SORTIE_YES).
fn env_without_yes(endpoint: &Endpoint) -> Vec<(String, String)> {
    endpoint
        .env()
        .into_iter()
        .filter(|(k, _)| k != "SORTIE_YES")
        .chain([("SORTIE_POLL_INTERVAL".to_string(), "100ms".to_string())])
        .collect()
}

async fn instances(endpoint: &Endpoint) -> usize {
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let out = ec2.describe_instances().send().await.expect("describe");
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

/// Runs `plan apply p.yaml` on a pty in `dir`, typing `answer` once the question is asked. Returns the exit code
/// and everything the terminal showed.
fn apply_on_a_terminal(
    dir: &std::path::Path,
    env: &[(String, String)],
    answer: &str,
) -> (i32, String) {
    let mut cmd = Command::new("script");
    // -q: no banner; -e: script exits with the command's status; -c: the command; /dev/null: no typescript.
    cmd.args([
        "-q",
        "-e",
        "-c",
        &format!("{PLAN} apply p.yaml"),
        "/dev/null",
    ])
    .current_dir(dir)
    .env_remove("SORTIE_YES")
    .envs(env.iter().cloned())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("script");
    let mut stdin = child.stdin.take().expect("stdin");
    // Typed ahead: the pty holds the line until `plan` reads it, as a user's early keystrokes would be.
    stdin.write_all(answer.as_bytes()).expect("type");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            drop(stdin);
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
                .expect("read");
            return (status.code().unwrap_or(-1), out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("plan apply on a terminal did not end in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn test_e2e_aws_apply_without_a_terminal_and_without_yes_exits_2() {
    let endpoint = started().await;
    let t = Test::new()
        .file("p.yaml", PLAN_TEXT)
        .envs(env_without_yes(&endpoint))
        .args(["apply", "p.yaml"])
        .status(2);
    let out = t.run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("asks before it spends money, and there is no terminal to ask on"),
        "{stderr}"
    );
    assert!(stderr.contains("pass --yes"), "{stderr}");
    assert_eq!(instances(&endpoint).await, 0, "an instance was created");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_e2e_aws_apply_on_a_terminal_shows_the_preview_and_asks() {
    let endpoint = started().await;
    let t = Test::new().file("p.yaml", PLAN_TEXT);
    let dir = t.dir.path();
    let env = env_without_yes(&endpoint);

    let (code, screen) = apply_on_a_terminal(dir, &env, "no\n");
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("plan asked: new run"), "{screen}");
    assert!(screen.contains("instance  run"), "{screen}");
    assert!(
        screen.contains("Apply this on AWS (region us-east-1)? Type `yes` to go on:"),
        "{screen}"
    );
    assert!(
        screen.contains("apply cancelled: nothing was changed"),
        "{screen}"
    );
    assert_eq!(
        instances(&endpoint).await,
        0,
        "an instance was created after `no`"
    );

    let (code, screen) = apply_on_a_terminal(dir, &env, "yes\n");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("run ") && !screen.contains("failed"),
        "{screen}"
    );
    assert_eq!(instances(&endpoint).await, 1);

    // `--yes` never asks, even on a terminal; a run with nothing left to do does not ask either.
    let ran = Test::new()
        .current_dir(dir)
        .envs(env.clone())
        .args(["apply", "p.yaml", "--yes", "--new"])
        .run();
    assert!(!String::from_utf8_lossy(&ran.stderr).contains("Type `yes`"));
}
