//! `files:` on a run step: what the plan ships reaches the step's working directory (and absolute destinations
//! inside the sandbox) on the local target; a change to the files reruns the step, and only that step.

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use crate::apply::{events, plan_cmd, run_cmd, sandbox};
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

/// The plan lives in `plans/` and ships `../pipeline`, as the example does.
const PLAN: &str = "plan: ship
target: { provider: local }
steps:
  host: { kind: instance }
  train:
    kind: run
    on: host
    files:
      ../pipeline: pipeline
      ../pipeline/conf.txt: /etc/ship/conf.txt
    run: |
      ./pipeline/train.sh >> \"$MARKERS/train\"
      cat \"$SORTIE_HOME/etc/ship/conf.txt\" >> \"$MARKERS/train\"
      echo \"result=$(cat pipeline/lib/data.txt)\" >> \"$SORTIE_OUTPUT\"
  other:
    kind: run
    on: host
    run: echo other >> \"$MARKERS/other\"
";

fn apply(dir: &Path, extra: &[&str]) -> Vec<Json> {
    let mut args = vec!["apply", "plans/p.yaml", "--output", "json"];
    args.extend_from_slice(extra);
    let mut c = plan_cmd(dir, &args);
    c.env("MARKERS", dir.join("markers"));
    let ran = run_cmd(c, Duration::from_secs(60));
    assert_eq!(ran.code, Some(0), "plan {args:?}\n{}", ran.show());
    events(&ran.stdout)
}

fn lines(dir: &Path, step: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("markers").join(step))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn test_e2e_files_ship_to_the_sandbox_and_a_change_reruns_only_that_step() {
    let (t, _reaper) = sandbox("plans/p.yaml", PLAN);
    let dir = t.dir.path();
    std::fs::create_dir_all(dir.join("markers")).expect("mkdir");
    std::fs::create_dir_all(dir.join("pipeline/lib")).expect("mkdir");
    // Run directly (not through `sh`): the executable bit must survive the trip.
    write_exec(
        &dir.join("pipeline/train.sh"),
        "#!/bin/sh\necho \"trained on $(cat \"$(dirname \"$0\")/lib/data.txt\")\"\n",
    );
    std::fs::write(dir.join("pipeline/lib/data.txt"), "v1\n").expect("write");
    std::fs::write(dir.join("pipeline/conf.txt"), "conf\n").expect("write");

    let evs = apply(dir, &[]);
    let run = evs[0]["run"].as_str().expect("run id").to_string();
    assert_eq!(lines(dir, "train"), ["trained on v1", "conf"]);
    assert_eq!(lines(dir, "other"), ["other"]);
    let status = crate::apply::status_json(dir, "plans/p.yaml", Some(&run));
    assert_eq!(
        status["steps"]["train"]["outputs"]["result"], "v1",
        "{status:#}"
    );

    // Nothing changed: nothing runs again.
    apply(dir, &["--run", &run]);
    assert_eq!(lines(dir, "train").len(), 2, "{:?}", lines(dir, "train"));
    // A file the step ships changed: that step runs again, with the new content; the other does not.
    std::fs::write(dir.join("pipeline/lib/data.txt"), "v2\n").expect("write");
    apply(dir, &["--run", &run]);
    assert_eq!(lines(dir, "train")[2..], ["trained on v2", "conf"]);
    assert_eq!(lines(dir, "other"), ["other"]);
    // A file removed from the source is gone from the host too (the tree is replaced, not merged).
    std::fs::write(dir.join("pipeline/extra.txt"), "x").expect("write");
    apply(dir, &["--run", &run]);
    std::fs::remove_file(dir.join("pipeline/extra.txt")).expect("rm");
    apply(dir, &["--run", &run]);
    let homes: Vec<_> = std::fs::read_dir(dir.join("plans/.sortie/hosts"))
        .expect("hosts")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(homes.len(), 1, "{homes:?}");
    let shipped = homes[0].join(".sortie/steps/train/pipeline");
    assert!(shipped.join("train.sh").is_file());
    assert!(!shipped.join("extra.txt").exists());
    assert_eq!(lines(dir, "train").len(), 8, "{:?}", lines(dir, "train"));
}

#[test]
fn test_e2e_files_over_the_size_limit_are_exit_2_at_the_key() {
    let t = Test::new().file(
        "p.yaml",
        "plan: p\nsteps:\n  host: { kind: instance }\n  s:\n    kind: run\n    files: { data: data }\n    run: ls data\n",
    );
    std::fs::create_dir(t.dir.path().join("data")).expect("mkdir");
    // Sparse: the size is checked before any content is read, so this costs nothing.
    let big = std::fs::File::create(t.dir.path().join("data/big.bin")).expect("create");
    big.set_len(64 * 1024 * 1024 + 1).expect("set_len");
    t.args(["validate", "p.yaml"])
        .status(2)
        .stderr(
            "error: step `s` ships `data`, which is 67108865 bytes; a step ships at most 67108864 bytes (64.0 MiB)
 --> p.yaml:6:14
  |
6 |     files: { data: data }
  |              ^^^^
  = help: sources are files or directories relative to the plan file
",
        )
        .run();
}

const AWS_PLAN: &str = "plan: awsfiles
target: { provider: aws, region: us-east-1 }
state: s3://sortie-state/runs
defaults: { timeout: 5m }
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
    root_size: 20GiB
  train:
    kind: run
    env: { EDIT: one }
    files:
      pipeline: pipeline
      pipeline/conf.txt: /opt/ship/conf.txt
    run: |
      set -eu
      echo \"result=$(./pipeline/train.sh)\" >> \"$SORTIE_OUTPUT\"
      echo \"conf=$(cat \"${SORTIE_HOST_ROOT:-}/opt/ship/conf.txt\")\" >> \"$SORTIE_OUTPUT\"
";

/// On aws the files travel as one tar.gz through S3 and the host checks its sha256 before using it: an archive
/// object replaced in S3 fails the step with a clear message instead of running whatever it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_files_ship_through_s3_and_a_corrupted_archive_fails_the_step_then_heals() {
    let endpoint = crate::aws_endpoint::Endpoint::start_with(&[
        "--seed-profile",
        "sortie-ssm",
        "--require-instance-profile",
    ]);
    endpoint.create_bucket("sortie-state").await;
    let t = Test::new()
        .file("p.yaml", AWS_PLAN)
        .file("pipeline/lib/data.txt", "v1\n")
        .file("pipeline/conf.txt", "conf\n")
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let dir = t.dir.path().to_path_buf();
    write_exec(
        &dir.join("pipeline/train.sh"),
        "#!/bin/sh\necho \"trained on $(cat \"$(dirname \"$0\")/lib/data.txt\")\"\n",
    );
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    let show = |o: &std::process::Output| {
        format!(
            "exit {:?}\n{}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let evs = events(&String::from_utf8_lossy(&out.stdout));
    let run = evs[0]["run"].as_str().expect("run id").to_string();
    let status = t
        .command()
        .args(["status", "p.yaml", "--run", &run, "--output", "json"])
        .output_within(DEADLINE)
        .expect("status");
    let state: Json = serde_json::from_slice(&status.stdout).expect("state");
    assert_eq!(
        state["steps"]["train"]["outputs"]["result"], "trained on v1",
        "{state:#}"
    );
    assert_eq!(
        state["steps"]["train"]["outputs"]["conf"], "conf",
        "{state:#}"
    );

    // Replace the archive in S3; a change to the step (not to its files) reruns it with the same archive key.
    let s3 = endpoint.s3_client().await;
    let prefix = format!("runs/awsfiles/{run}/ssm/files/");
    let listed = s3
        .list_objects_v2()
        .bucket("sortie-state")
        .prefix(&prefix)
        .send()
        .await
        .expect("list");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys.len(), 1, "one archive per content digest: {keys:?}");
    s3.put_object()
        .bucket("sortie-state")
        .key(keys[0])
        .body(b"not the archive".to_vec().into())
        .send()
        .await
        .expect("put");
    std::fs::write(
        dir.join("p.yaml"),
        AWS_PLAN.replace("EDIT: one", "EDIT: two"),
    )
    .expect("edit");
    let out = t
        .command()
        .args(["apply", "p.yaml", "--run", &run, "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let evs = events(&String::from_utf8_lossy(&out.stdout));
    let failed = evs
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "train")
        .unwrap_or_else(|| panic!("train did not finish\n{}", show(&out)));
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the files archive of step `train` does not match its sha256"),
        "{error}"
    );
    // The bad object was dropped: the next apply uploads the archive again and the step runs.
    let out = t
        .command()
        .args(["apply", "p.yaml", "--run", &run, "--output", "json"])
        .output_within(DEADLINE)
        .expect("apply");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}
