//! Dev environments: `ttl` enforced on the host itself, `plan extend`, `plan connect`; on the local target and on
//! the AWS test endpoint with examples/dev-env.yaml itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::apply::{leftover_processes, plan_cmd, run_cmd, sandbox, status_json, Ran};
use crate::aws_endpoint::Endpoint;
use crate::test_builder::{repo, Test};
use crate::test_builder::{Deadline as _, DEADLINE};

const MINUTE: Duration = Duration::from_secs(60);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn epoch_of(rfc3339: &serde_json::Value) -> u64 {
    let text = rfc3339.as_str().expect("an RFC 3339 string");
    humantime::parse_rfc3339(text)
        .expect("RFC 3339")
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

fn deadline_in(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .expect("epoch seconds")
}

fn wait_until(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    assert!(within(timeout, done), "timed out waiting for {what}");
}

/// Whether `done` holds within `timeout` (polled every 100 ms).
fn within(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The command lines of live processes that run the ttl watcher under `root` (for a failure message).
fn watchers(root: &Path) -> Vec<String> {
    let needle = root.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&needle) && c.contains("ttl.sh"))
                .collect()
        })
        .unwrap_or_default()
}

const LOCAL: &str = "plan: dev
target: { provider: local }
steps:
  host: { kind: instance, ttl: 1h }
  work:
    kind: run
    on: host
    detach: true
    run: sleep 120
";

fn local(dir: &Path, args: &[&str]) -> Ran {
    let mut c = plan_cmd(dir, args);
    c.env("SORTIE_TTL_POLL", "1");
    run_cmd(c, MINUTE)
}

#[test]
fn test_e2e_local_ttl_expires_the_host_and_extend_moves_it() {
    let (t, _reaper) = sandbox("p.yaml", LOCAL);
    let dir = t.dir.path();
    let ran = local(dir, &["apply", "p.yaml", "--no-wait"]);
    assert_eq!(ran.code, Some(4), "{}", ran.show());
    let status = status_json(dir, "p.yaml", None);
    let home = PathBuf::from(
        status["steps"]["host"]["outputs"]["home"]
            .as_str()
            .expect("home"),
    );
    let expires = epoch_of(&status["steps"]["host"]["outputs"]["expires_at"]);
    assert!(
        (now() + 3500..=now() + 3600).contains(&expires),
        "{expires}"
    );
    let file = home.join(".sortie/expires-at");
    assert_eq!(deadline_in(&file), expires);

    let ran = local(dir, &["extend", "p.yaml", "--ttl", "2h"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(ran.stdout.contains("now expires at"), "{}", ran.show());
    let moved = deadline_in(&file);
    assert!((now() + 7100..=now() + 7200).contains(&moved), "{moved}");
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(
        epoch_of(&status["steps"]["host"]["outputs"]["expires_at"]),
        moved
    );
    // Still running: the watcher only acts at the deadline.
    assert!(!home.join(".sortie/expired").exists());

    // A deadline in a second: the watcher (no `plan` running) cancels the host's step.
    let ran = local(dir, &["extend", "p.yaml", "--ttl", "1s"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    wait_until(
        "the ttl to expire the host",
        Duration::from_secs(20),
        || home.join(".sortie/expired").exists(),
    );
    let cancelled = home.join(".sortie/steps/work/cancelled");
    assert!(cancelled.exists(), "the step was not cancelled at expiry");
    let ran = local(dir, &["destroy", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let left = leftover_processes(dir, Duration::from_secs(5));
    assert!(left.is_empty(), "left running: {left:?}");
}

#[test]
fn test_e2e_local_destroy_stops_the_ttl_watcher_and_connect_points_at_the_host() {
    let (t, _reaper) = sandbox("p.yaml", &LOCAL.replace("sleep 120", "echo ok"));
    let dir = t.dir.path();
    let ran = local(dir, &["apply", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let status = status_json(dir, "p.yaml", None);
    let home = status["steps"]["host"]["outputs"]["home"]
        .as_str()
        .expect("home")
        .to_string();
    let ran = local(dir, &["connect", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(
        ran.stdout.contains(&format!("cd {home} && exec ")),
        "{}",
        ran.show()
    );
    // The watcher is a live process of the host until the host goes.
    assert!(
        !leftover_processes(dir, Duration::ZERO).is_empty(),
        "no ttl watcher runs"
    );
    let ran = local(dir, &["destroy", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let left = leftover_processes(dir, Duration::from_secs(5));
    assert!(left.is_empty(), "left running: {left:?}");
    let ran = local(dir, &["connect", "p.yaml"]);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(ran.stderr.contains("host `host` of run"), "{}", ran.show());
}

#[test]
fn test_e2e_extend_without_ttl_or_with_a_bad_duration_is_refused() {
    let (t, _reaper) = sandbox(
        "p.yaml",
        &LOCAL
            .replace(", ttl: 1h", "")
            .replace("sleep 120", "echo ok"),
    );
    let dir = t.dir.path();
    let ran = local(dir, &["apply", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let ran = local(dir, &["extend", "p.yaml", "--ttl", "2h"]);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains("p.yaml: instance step `host` has no `ttl`"),
        "{}",
        ran.show()
    );
    for bad in ["0", "soon"] {
        let ran = local(dir, &["extend", "p.yaml", "--ttl", bad]);
        assert_eq!(ran.code, Some(2), "{}", ran.show());
    }
    let ran = local(dir, &["destroy", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}

/// An executable stub on PATH that records its arguments (for `shutdown`), or fails (for `systemd-run`).
fn stub(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write stub");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod stub");
}

/// Plays cloud-init's part, which the endpoint does not: runs the ttl part of the instance's user data once, as
/// root at first boot, inside the instance's sandbox, with `shutdown` recorded and no systemd.
async fn boot(endpoint: &Endpoint, instance: &str, stubs: &Path) -> PathBuf {
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(instance)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let encoded = attr
        .user_data()
        .and_then(|v| v.value())
        .expect("user data set");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .expect("base64 user data");
    let text = String::from_utf8(bytes).expect("utf-8 user data");
    // The max_lifetime part writes to the real /var/lib/cloud; only the ttl part is prefixed for a sandbox.
    let ttl_part = &text[text.find("# sortie: ttl").expect("a ttl part")..];
    let root = endpoint.sandbox_root().join(instance);
    let status = std::process::Command::new("sh")
        .args(["-c", ttl_part])
        .env("SORTIE_HOST_ROOT", &root)
        .env("SORTIE_TTL_POLL", "1")
        .env(
            "PATH",
            format!(
                "{}:{}",
                stubs.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output_within(DEADLINE)
        .expect("run the user data")
        .status;
    assert!(status.success(), "the ttl user data failed:\n{ttl_part}");
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_dev_env_example_connect_extend_and_ttl_shutdown() {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    endpoint.create_bucket("dev-state").await;
    // The example itself; only its volume is smaller here (a sparse file on a loop device).
    let example = std::fs::read_to_string(repo().join("examples/dev-env.yaml")).expect("example");
    let text = example.replace("size: 200GiB", "size: 1GiB");
    assert_ne!(
        text, example,
        "the example's volume line changed; update this test"
    );
    let t = Test::new()
        .file("p.yaml", &text)
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let vars = [
        "--var",
        "bucket=dev-state",
        "--var",
        "image=ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        "--var",
        "jupyter=no",
    ];
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(vars);
        let out = t
            .command()
            .args(&all)
            .output_within(DEADLINE)
            .expect("plan");
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: Duration::ZERO,
        }
    };
    let ran = run(&["apply", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let ran = run(&["status", "p.yaml", "--output", "json"]);
    let status: serde_json::Value = serde_json::from_str(&ran.stdout).expect("status json");
    let host = &status["steps"]["host"]["outputs"];
    let instance = host["instance_id"]
        .as_str()
        .expect("instance id")
        .to_string();
    // `image` and `profile` come from vars: rendered at compile time, not sent to EC2 as `{{ ... }}`.
    assert!(
        host["image_id"]
            .as_str()
            .is_some_and(|i| i.starts_with("ami-")),
        "{host:#}"
    );
    let expires = epoch_of(&host["expires_at"]);
    assert!(
        (now() + 8 * 3600 - 300..=now() + 8 * 3600).contains(&expires),
        "{expires}"
    );

    let ran = run(&["connect", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(
        ran.stdout.contains(&format!(
            "aws ssm start-session --target {instance} --region us-east-1\n"
        )),
        "{}",
        ran.show()
    );
    assert!(
        ran.stdout.contains("--document-name AWS-StartPortForwardingSession --parameters '{\"portNumber\":[\"8888\"],\"localPortNumber\":[\"8888\"]}'"),
        "{}",
        ran.show()
    );

    let stubs = tempfile::tempdir().expect("stubs");
    let called = stubs.path().join("shutdown-called");
    stub(stubs.path(), "systemd-run", "exit 1");
    stub(
        stubs.path(),
        "shutdown",
        &format!("echo \"$@\" > {}", called.display()),
    );
    let root = boot(&endpoint, &instance, stubs.path()).await;
    let file = root.join("var/lib/sortie/expires-at");
    assert!((expires - 300..=expires + 300).contains(&deadline_in(&file)));

    let ran = run(&["extend", "p.yaml", "--ttl", "2h"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let moved = deadline_in(&file);
    assert!((now() + 7100..=now() + 7200).contains(&moved), "{moved}");
    assert!(!called.exists(), "shut down before the deadline");
    // The deadline passes: the host shuts itself down, with no `plan` running.
    let ran = run(&["extend", "p.yaml", "--ttl", "1s"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let shut_down = within(Duration::from_secs(60), || called.exists());
    assert!(
        shut_down,
        "the watcher did not call shutdown within 60 s; the deadline file holds {:?} (now {}); watchers running: \
         {:?}\nthe endpoint's log:\n{}",
        std::fs::read_to_string(&file),
        now(),
        watchers(&root),
        endpoint.log()
    );
    assert_eq!(
        std::fs::read_to_string(&called).expect("args").trim(),
        "-h now"
    );

    let ran = run(&["destroy", "p.yaml"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}
