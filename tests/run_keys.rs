//! Idempotent CI on the local target: a run key applied twice runs once; a keyed run that failed is continued,
//! not restarted; `concurrency: forbid | replace` when an apply would start a new run beside an unfinished one.

use std::path::Path;
use std::time::Duration;

use crate::apply::{
    leftover_processes, plan_cmd, processes_in, run_cmd, sandbox, status_json, Ran,
};

const MINUTE: Duration = Duration::from_secs(60);

fn plan(extra: &str) -> String {
    format!(
        "plan: keyed
{extra}
target: {{ provider: local }}
defaults: {{ timeout: 2m }}
steps:
  host: {{ kind: instance }}
  train:
    kind: run
    on: host
    detach: true
    run: |
      echo x >> \"$MARKERS/train\"
      sleep \"${{TRAIN_SECONDS:-0}}\"
  upload:
    kind: run
    on: host
    needs: [train]
    run: |
      echo x >> \"$MARKERS/upload\"
      test ! -e \"$MARKERS/fail-upload\"
  teardown: {{ kind: teardown, needs: [upload] }}
"
    )
}

fn apply(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut all = vec!["apply", "p.yaml"];
    all.extend_from_slice(args);
    let mut c = plan_cmd(dir, &all);
    c.env("MARKERS", dir.join("markers"));
    for (k, v) in env {
        c.env(k, v);
    }
    run_cmd(c, MINUTE)
}

fn lines(dir: &Path, step: &str) -> usize {
    std::fs::read_to_string(dir.join("markers").join(step)).map_or(0, |t| t.lines().count())
}

fn runs(dir: &Path) -> Vec<String> {
    let ran = run_cmd(plan_cmd(dir, &["runs", "p.yaml"]), MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    ran.stdout.lines().skip(1).map(str::to_string).collect()
}

fn setup(extra: &str) -> (crate::test_builder::Test, crate::apply::Reaper) {
    let (t, reaper) = sandbox("p.yaml", &plan(extra));
    std::fs::create_dir(t.dir.path().join("markers")).expect("mkdir");
    (t, reaper)
}

#[test]
fn test_e2e_run_key_applied_twice_trains_once() {
    let (t, _reaper) = setup("");
    let dir = t.dir.path();
    let first = apply(dir, &["--run-key", "sha-1"], &[]);
    assert_eq!(first.code, Some(0), "{}", first.show());
    let second = apply(dir, &["--run-key", "sha-1"], &[]);
    assert_eq!(second.code, Some(0), "{}", second.show());
    assert!(
        second.stdout.contains("(key `sha-1`) succeeded at ")
            && second.stdout.contains("nothing to do"),
        "{}",
        second.show()
    );
    assert_eq!(lines(dir, "train"), 1, "train ran twice");
    assert_eq!(runs(dir).len(), 1, "{:?}", runs(dir));
    // The key is recorded in the run's state.
    assert_eq!(status_json(dir, "p.yaml", None)["run_key"], "sha-1");

    // Another key is another run.
    let third = apply(dir, &["--run-key", "sha-2"], &[]);
    assert_eq!(third.code, Some(0), "{}", third.show());
    assert_eq!(lines(dir, "train"), 2);
    assert_eq!(runs(dir).len(), 2, "{:?}", runs(dir));
}

#[test]
fn test_e2e_run_key_from_the_environment_and_a_missing_variable() {
    let (t, _reaper) = setup("run_key: \"build-{{ env.CI_COMMIT }}\"");
    let dir = t.dir.path();
    let validate = run_cmd(plan_cmd(dir, &["validate", "p.yaml"]), MINUTE);
    assert_eq!(
        validate.code,
        Some(0),
        "validate needs no CI environment\n{}",
        validate.show()
    );
    let missing = apply(dir, &[], &[]);
    assert_eq!(missing.code, Some(2), "{}", missing.show());
    assert!(
        missing
            .stderr
            .contains("p.yaml: run_key uses `env.CI_COMMIT`, which is not set"),
        "{}",
        missing.show()
    );
    assert!(!dir.join(".sortie/state").exists(), "state was written");
    for _ in 0..2 {
        let ran = apply(dir, &[], &[("CI_COMMIT", "abc123")]);
        assert_eq!(ran.code, Some(0), "{}", ran.show());
    }
    assert_eq!(lines(dir, "train"), 1);
    assert_eq!(status_json(dir, "p.yaml", None)["run_key"], "build-abc123");
}

#[test]
fn test_e2e_run_key_of_a_failed_run_continues_it_without_training_again() {
    let (t, _reaper) = setup("");
    let dir = t.dir.path();
    std::fs::write(dir.join("markers/fail-upload"), "").expect("write");
    let first = apply(dir, &["--run-key", "nightly-2026-12-01"], &[]);
    assert_eq!(first.code, Some(1), "{}", first.show());
    let run = status_json(dir, "p.yaml", None)["run_id"].clone();
    std::fs::remove_file(dir.join("markers/fail-upload")).expect("rm");
    let retried = apply(dir, &["--run-key", "nightly-2026-12-01"], &[]);
    assert_eq!(retried.code, Some(0), "{}", retried.show());
    assert_eq!(
        status_json(dir, "p.yaml", None)["run_id"],
        run,
        "a new run was started"
    );
    assert_eq!(lines(dir, "train"), 1, "train ran again");
    assert_eq!(lines(dir, "upload"), 2);
}

#[test]
fn test_e2e_run_key_rejects_bad_keys_and_other_run_selectors() {
    let (t, _reaper) = setup("");
    let dir = t.dir.path();
    let bad = apply(dir, &["--run-key", "a\nb"], &[]);
    assert_eq!(bad.code, Some(2), "{}", bad.show());
    assert!(
        bad.stderr
            .contains("the run key from --run-key holds a control character"),
        "{}",
        bad.show()
    );
    let both = apply(dir, &["--run-key", "k", "--new"], &[]);
    assert_eq!(both.code, Some(2), "{}", both.show());
    assert!(!dir.join(".sortie/state").exists());
}

#[test]
fn test_e2e_concurrency_forbid_starts_nothing_beside_an_unfinished_run() {
    let (t, _reaper) = setup("concurrency: forbid");
    let dir = t.dir.path();
    let slow = [("TRAIN_SECONDS", "30")];
    let first = apply(dir, &["--no-wait"], &slow);
    assert_eq!(first.code, Some(4), "{}", first.show());
    for args in [&["--new"][..], &["--run-key", "other"][..]] {
        let refused = apply(dir, args, &slow);
        assert_eq!(refused.code, Some(0), "{}", refused.show());
        assert!(
            refused.stdout.contains("is unfinished (interrupted), and the plan says `concurrency: forbid`: no new run was started"),
            "{}",
            refused.show()
        );
    }
    assert_eq!(runs(dir).len(), 1, "{:?}", runs(dir));
    assert_eq!(lines(dir, "train"), 1);
    let preview = run_cmd(plan_cmd(dir, &["preview", "p.yaml", "--new"]), MINUTE);
    assert!(
        preview.stdout.contains("apply starts nothing"),
        "{}",
        preview.show()
    );
    let destroy = run_cmd(plan_cmd(dir, &["destroy", "p.yaml"]), MINUTE);
    assert_eq!(destroy.code, Some(0), "{}", destroy.show());
}

#[test]
fn test_e2e_concurrency_replace_tears_down_the_unfinished_run_first() {
    let (t, _reaper) = setup("concurrency: replace");
    let dir = t.dir.path();
    let first = apply(dir, &["--no-wait"], &[("TRAIN_SECONDS", "30")]);
    assert_eq!(first.code, Some(4), "{}", first.show());
    let old = status_json(dir, "p.yaml", None)["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    assert!(
        !processes_in(dir).is_empty(),
        "the first train is not running"
    );
    let preview = run_cmd(plan_cmd(dir, &["preview", "p.yaml", "--new"]), MINUTE);
    assert!(
        preview.stdout.contains(&format!(
            "first cancels and tears down the unfinished run {old}"
        )),
        "{}",
        preview.show()
    );
    let second = apply(dir, &["--new"], &[]);
    assert_eq!(second.code, Some(0), "{}", second.show());
    assert!(
        second
            .stdout
            .contains(&format!("concurrency: replace: run {old}: destroyed")),
        "{}",
        second.show()
    );
    let old_state = status_json(dir, "p.yaml", Some(&old));
    assert_eq!(old_state["status"], "destroyed", "{old_state:#}");
    assert_eq!(
        old_state["steps"]["train"]["status"], "cancelled",
        "{old_state:#}"
    );
    assert!(
        old_state["steps"]["train"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("replaced by a new one")),
        "{old_state:#}"
    );
    let procs = leftover_processes(dir, Duration::from_secs(5));
    assert!(procs.is_empty(), "the old train still runs: {procs:?}");
    assert_eq!(lines(dir, "train"), 2);
    assert_eq!(runs(dir).len(), 2);
}
