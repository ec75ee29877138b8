//! Safety at the edges of a run, end to end on the local target: concurrent applies start one run, run ids and
//! state documents from outside are checked, a run stays with its plan file, and nothing outside the sandbox is
//! ever deleted.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::apply::{
    leftover_processes, plan_cmd, run_plan, sandbox, state_files, status_json, wait_for_run, Drain,
    Guarded,
};

const MINUTE: Duration = Duration::from_secs(60);

/// Starts `plan ARGS` in `dir` `n` times at once and returns (exit code, stderr) of each.
fn at_once(dir: &Path, args: &[&str], n: usize, env: &[(String, String)]) -> Vec<(i32, String)> {
    let mut started = Vec::new();
    for _ in 0..n {
        let mut cmd = plan_cmd(dir, args);
        cmd.envs(env.iter().cloned())
            .env("MARKERS", dir.join("m"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Guarded::spawn(cmd);
        let err = Drain::start(proc.child.stderr.take().expect("stderr"));
        started.push((proc, err));
    }
    started
        .into_iter()
        .map(|(mut proc, err)| {
            let code = proc.wait_for(MINUTE).code().unwrap_or(-1);
            (code, err.collect())
        })
        .collect()
}

/// Exactly one of the applies ran (exit 0); every other one exited 3 and named a holder.
fn one_ran(results: &[(i32, String)]) {
    let ok = results.iter().filter(|(code, _)| *code == 0).count();
    assert_eq!(ok, 1, "exactly one apply proceeds: {results:#?}");
    for (code, stderr) in results.iter().filter(|(code, _)| *code != 0) {
        assert_eq!(*code, 3, "{stderr}");
        assert!(
            stderr.contains("is locked by another apply") && stderr.contains(": pid "),
            "the holder is not named: {stderr}"
        );
    }
}

const SLOW: &str = "plan: five
steps:
  host: { kind: instance }
  train: { kind: run, on: host, run: 'echo x >> \"$MARKERS/train\"; sleep 2' }
";

#[test]
fn test_e2e_five_concurrent_applies_start_one_run() {
    let (t, _reaper) = sandbox("p.yaml", SLOW);
    let dir = t.dir.path();
    std::fs::create_dir(dir.join("m")).expect("mkdir");
    one_ran(&at_once(dir, &["apply", "p.yaml"], 5, &[]));
    assert_eq!(state_files(dir, "five").len(), 1, "more than one run");
    assert_eq!(
        std::fs::read_to_string(dir.join("m/train")).expect("marker"),
        "x\n",
        "the step ran more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_five_concurrent_applies_on_s3_start_one_run() {
    let endpoint = crate::aws_endpoint::Endpoint::start();
    endpoint.create_bucket("sortie-state").await;
    let plan = SLOW.replace("steps:", "state: s3://sortie-state/runs\nsteps:");
    let (t, _reaper) = sandbox("p.yaml", &plan);
    let dir = t.dir.path().to_path_buf();
    std::fs::create_dir(dir.join("m")).expect("mkdir");
    let env = endpoint.env();
    let results = tokio::task::spawn_blocking(move || at_once(&dir, &["apply", "p.yaml"], 5, &env))
        .await
        .expect("applies");
    one_ran(&results);
    let listed = endpoint
        .s3_client()
        .await
        .list_objects_v2()
        .bucket("sortie-state")
        .prefix("runs/five/")
        .send()
        .await
        .expect("list");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    let states = keys.iter().filter(|k| k.ends_with("/state.json")).count();
    assert_eq!(states, 1, "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.ends_with("lock.json")),
        "a lock was left behind: {keys:?}"
    );
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("m/train")).expect("marker"),
        "x\n",
        "the step ran more than once"
    );
}

#[test]
fn test_e2e_run_id_must_have_the_generated_format() {
    let (t, _reaper) = sandbox("p.yaml", SLOW);
    let dir = t.dir.path();
    std::fs::create_dir_all(dir.join("precious")).expect("mkdir");
    std::fs::write(dir.join("precious/keep"), "x").expect("write");
    let bad = "../../../precious";
    for args in [
        vec!["apply", "p.yaml", "--run", bad],
        vec!["preview", "p.yaml", "--run", bad],
        vec!["status", "p.yaml", "--run", bad],
        vec!["logs", "p.yaml", "train", "--run", bad],
        vec!["destroy", "p.yaml", "--run", bad],
        vec!["unlock", "p.yaml", "--run", bad, "--force"],
    ] {
        let ran = run_plan(dir, &args, MINUTE);
        assert_eq!(ran.code, Some(2), "plan {args:?}:\n{}", ran.show());
        assert!(
            ran.stderr
                .contains("is not a run id; run ids look like YYYYMMDD-HHMMSS-mmm-xx"),
            "plan {args:?}:\n{}",
            ran.show()
        );
    }
    assert!(dir.join("precious/keep").exists());
    assert!(!dir.join(".sortie/state").exists() || state_files(dir, "five").is_empty());
}

#[test]
fn test_e2e_apply_run_of_an_unknown_run_is_refused() {
    let (t, _reaper) = sandbox("p.yaml", SLOW);
    let dir = t.dir.path();
    let ran = run_plan(
        dir,
        &["apply", "p.yaml", "--run", "20240101-000000-000-00"],
        MINUTE,
    );
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains("plan `five` has no run `20240101-000000-000-00`"),
        "{}",
        ran.show()
    );
    assert!(state_files(dir, "five").is_empty());
    assert!(!dir.join(".sortie/hosts").exists());
}

/// Starts `plan apply FILE` (plan name PLAN), waits until its step touched `m/started`, and kills the apply with
/// SIGKILL; the step goes on running on the host. Returns the run id.
fn apply_killed_mid_step(dir: &Path, file: &str, plan: &str) -> String {
    let mut first = plan_cmd(dir, &["apply", file]);
    first
        .env("MARKERS", dir.join("m"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = Guarded::spawn(first);
    let run = wait_for_run(dir, plan, MINUTE);
    let deadline = Instant::now() + MINUTE;
    while !dir.join("m/started").exists() {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill9();
    run
}

/// Two plan files with one `plan:` name share a state directory: the second must not continue (and tear down)
/// the first one's unfinished run while its step still runs.
#[test]
fn test_e2e_run_of_another_plan_file_is_not_continued() {
    let a = "plan: shared
steps:
  host: { kind: instance }
  train: { kind: run, on: host, run: 'touch \"$MARKERS/started\"; sleep 60' }
  down: { kind: teardown }
";
    let b = "plan: shared
steps:
  host: { kind: instance }
  other: { kind: run, on: host, run: 'echo other' }
  down: { kind: teardown }
";
    let (t, _reaper) = sandbox("a.yaml", a);
    let dir = t.dir.path();
    std::fs::write(dir.join("b.yaml"), b).expect("write b.yaml");
    std::fs::create_dir(dir.join("m")).expect("mkdir");
    // The apply dies; its step goes on running on the host.
    let run = apply_killed_mid_step(dir, "a.yaml", "shared");
    let ran = run_plan(dir, &["apply", "b.yaml"], MINUTE);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr.contains(&format!(
            "run {run} belongs to the plan file `a.yaml`, not b.yaml"
        )),
        "{}",
        ran.show()
    );
    let host = dir.join(".sortie/hosts").join(format!("{run}-host"));
    assert!(host.exists(), "the first run's host was torn down");
    let status = status_json(dir, "a.yaml", Some(&run));
    assert_eq!(status["steps"]["train"]["status"], "running", "{status:#}");
    let ran = run_plan(dir, &["destroy", "a.yaml", "--run", &run], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}

const TORN: &str = "plan: torn
steps:
  host: { kind: instance }
  a: { kind: run, on: host, run: 'echo a' }
  down: { kind: teardown }
";

/// `--from` on a run whose host is torn down would fail a succeeded run: refused, unless it re-creates the host.
#[test]
fn test_e2e_from_on_a_torn_down_run_is_refused() {
    let (t, _reaper) = sandbox("p.yaml", TORN);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let run = wait_for_run(dir, "torn", MINUTE);
    let ran = run_plan(dir, &["apply", "p.yaml", "--from", "a"], MINUTE);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr.contains(&format!(
            "--from a: the resources of step `host` in run {run} were torn down"
        )),
        "{}",
        ran.show()
    );
    assert_eq!(
        status_json(dir, "p.yaml", Some(&run))["status"],
        "succeeded"
    );
    // Only the teardown again: it needs no host.
    let ran = run_plan(dir, &["apply", "p.yaml", "--from", "down"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert_eq!(
        status_json(dir, "p.yaml", Some(&run))["status"],
        "succeeded"
    );
    // From the host itself: it is re-created, and the run succeeds again.
    let ran = run_plan(dir, &["apply", "p.yaml", "--from", "host"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert_eq!(
        status_json(dir, "p.yaml", Some(&run))["status"],
        "succeeded"
    );
}

#[test]
fn test_e2e_apply_run_of_a_destroyed_run_is_refused() {
    let plan = "plan: gone
steps:
  host: { kind: instance }
  a: { kind: run, on: host, run: 'echo a' }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let run = wait_for_run(dir, "gone", MINUTE);
    let ran = run_plan(dir, &["destroy", "p.yaml", "--run", &run], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let ran = run_plan(dir, &["apply", "p.yaml", "--run", &run], MINUTE);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains(&format!("run {run} was destroyed and cannot be continued")),
        "{}",
        ran.show()
    );
    assert_eq!(
        status_json(dir, "p.yaml", Some(&run))["status"],
        "destroyed"
    );
}

/// A state document that is not the run it is stored as, or with a number out of range: exit 2 naming the
/// file, which is left as it was.
#[test]
fn test_e2e_state_document_is_checked_on_load() {
    let (t, _reaper) = sandbox("p.yaml", TORN);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let path = state_files(dir, "torn").pop().expect("state file");
    let run = wait_for_run(dir, "torn", MINUTE);
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("state")).expect("json");
    let rel = format!(".sortie/state/torn/{run}/state.json");
    let cases = [
        ("/version", serde_json::json!(2), "`version` is 2"),
        ("/plan", serde_json::json!("other"), "`plan` is `other`"),
        (
            "/run_id",
            serde_json::json!("20240101-000000-000-00"),
            "`run_id` is `20240101-000000-000-00`",
        ),
        (
            "/steps/a/attempt",
            serde_json::json!(4294967295u64),
            "`steps.a.attempt` is 4294967295, out of range",
        ),
        (
            "/steps/a/started_at",
            serde_json::json!(1e300),
            "`steps.a.started_at` is",
        ),
    ];
    for (pointer, value, reason) in cases {
        let mut doc = good.clone();
        *doc.pointer_mut(pointer).expect("key") = value;
        let bytes = serde_json::to_vec_pretty(&doc).expect("json");
        std::fs::write(&path, &bytes).expect("write");
        for args in [
            vec!["apply", "p.yaml", "--run", run.as_str()],
            vec!["status", "p.yaml"],
            vec!["destroy", "p.yaml"],
        ] {
            let ran = run_plan(dir, &args, MINUTE);
            assert_eq!(
                ran.code,
                Some(2),
                "{pointer}: plan {args:?}\n{}",
                ran.show()
            );
            assert!(
                ran.stderr.contains(&rel) && ran.stderr.contains(reason),
                "{pointer}: plan {args:?}\n{}",
                ran.show()
            );
        }
        assert_eq!(std::fs::read(&path).expect("state"), bytes, "{pointer}");
    }
}

/// State is untrusted: `plan destroy` removes a local resource only when it resolves under the sandbox root.
#[test]
fn test_e2e_destroy_never_deletes_outside_the_sandbox() {
    let plan = "plan: keep
steps:
  host: { kind: instance }
  a: { kind: run, on: host, run: 'echo a' }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let path = state_files(dir, "keep").pop().expect("state file");
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("state")).expect("json");
    let precious = dir.join("precious");
    std::fs::create_dir_all(&precious).expect("mkdir");
    std::fs::write(precious.join("keep"), "x").expect("write");
    // Named directly, through `..`, and through a symlink inside the sandbox root.
    let link = dir.join(".sortie/hosts/link");
    std::os::unix::fs::symlink(&precious, &link).expect("symlink");
    let dotdot = dir.join(".sortie/hosts/../../precious");
    for target in [&precious, &dotdot, &link] {
        let mut doc = good.clone();
        doc["steps"]["host"]["resources"][0]["id"] = serde_json::json!(target.to_string_lossy());
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
        let ran = run_plan(dir, &["destroy", "p.yaml"], MINUTE);
        assert_eq!(ran.code, Some(2), "{}\n{}", target.display(), ran.show());
        assert!(
            ran.stderr.contains(&format!(
                "refusing to delete {} (`steps.host.resources[0].id` in the run's state)",
                target.display()
            )) && ran.stderr.contains("which is not under the sandbox root"),
            "{}",
            ran.show()
        );
        assert!(precious.join("keep").exists(), "{}", target.display());
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&good).expect("json")).expect("write");
    let ran = run_plan(dir, &["destroy", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(precious.join("keep").exists());
}

/// A step removed from the plan while it still runs (the apply died, the plan was edited) is cancelled before
/// the walk: its process is gone, its state says so, and the run is not marked succeeded around a running step.
#[test]
fn test_e2e_running_step_removed_from_the_plan_is_cancelled() {
    let before = "plan: edited
steps:
  host: { kind: instance }
  train: { kind: run, on: host, run: 'touch \"$MARKERS/started\"; sleep 60' }
  down: { kind: teardown }
";
    let after = "plan: edited
steps:
  host: { kind: instance }
  down: { kind: teardown }
";
    let (t, _reaper) = sandbox("p.yaml", before);
    let dir = t.dir.path();
    std::fs::create_dir(dir.join("m")).expect("mkdir");
    let run = apply_killed_mid_step(dir, "p.yaml", "edited");
    std::fs::write(dir.join("p.yaml"), after).expect("edit the plan");
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let status = status_json(dir, "p.yaml", Some(&run));
    assert_eq!(status["status"], "succeeded", "{status:#}");
    assert_eq!(
        status["steps"]["train"]["status"], "cancelled",
        "{status:#}"
    );
    let left = leftover_processes(dir, Duration::from_secs(5));
    assert!(left.is_empty(), "still running: {left:?}");
}
