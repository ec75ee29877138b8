//! Scheduled retraining: examples/schedule/advance.sh (what cron, the systemd timer and the GitHub Actions example
//! run) driven with the real `plan` on the local target, and the example files' own invocations checked.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::apply::{run_cmd, sandbox, status_json, Ran};
use crate::test_builder::{repo, PLAN};
use crate::test_builder::{Deadline as _, DEADLINE};

const MINUTE: Duration = Duration::from_secs(60);

const PLAN_TEXT: &str = "plan: nightly
concurrency: forbid
target: { provider: local }
steps:
  host: { kind: instance }
  train:
    kind: run
    on: host
    detach: true
    run: |
      echo \"$SORTIE_KEY_SEEN\" >> \"$MARKERS/train\"
      while [ ! -e \"$MARKERS/release\" ]; do sleep 0.1; done
  teardown: { kind: teardown, needs: [train] }
";

/// One scheduled start: `advance.sh p.yaml KEY` with `plan` on PATH, WAIT=0 (as `--no-wait`).
fn advance(dir: &Path, key: &str) -> Ran {
    let bin = Path::new(PLAN).parent().expect("plan's directory");
    let mut cmd = Command::new("sh");
    cmd.arg(repo().join("examples/schedule/advance.sh"))
        .args(["p.yaml", key])
        .current_dir(dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("WAIT", "0")
        .env("MARKERS", dir.join("markers"))
        .env("SORTIE_KEY_SEEN", key);
    for (k, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("SORTIE_") && k != "SORTIE_KEY_SEEN")
    {
        cmd.env_remove(k);
    }
    run_cmd(cmd, MINUTE)
}

fn trained(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("markers/train"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts advance.sh until the run it works on ends (the step is released first).
fn finish(dir: &Path, key: &str) -> Ran {
    std::fs::write(dir.join("markers/release"), "").expect("release");
    let end = Instant::now() + MINUTE;
    loop {
        let ran = advance(dir, key);
        if ran.code != Some(4) || Instant::now() > end {
            return ran;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn test_e2e_schedule_advances_the_unfinished_run_and_trains_each_key_once() {
    let (t, _reaper) = sandbox("p.yaml", PLAN_TEXT);
    let dir = t.dir.path();
    std::fs::create_dir(dir.join("markers")).expect("mkdir");
    // Day 1: the first start trains day 1; it is still going.
    let ran = advance(dir, "nightly-1");
    assert_eq!(ran.code, Some(4), "{}", ran.show());
    assert_eq!(trained(dir), ["nightly-1"]);
    // Day 2 begins while day 1 trains: day 1 is advanced, day 2 does not start beside it.
    let ran = advance(dir, "nightly-2");
    assert_eq!(ran.code, Some(4), "{}", ran.show());
    assert!(
        ran.stderr.contains("is unfinished: advancing it"),
        "{}",
        ran.show()
    );
    assert_eq!(trained(dir), ["nightly-1"]);
    // Day 1 ends; the next start sees it finished and trains day 2, once, however often it runs.
    let ran = finish(dir, "nightly-2");
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert_eq!(status_json(dir, "p.yaml", None)["run_key"], "nightly-1");
    let ran = finish(dir, "nightly-2");
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert_eq!(trained(dir), ["nightly-1", "nightly-2"]);
    for _ in 0..2 {
        let ran = advance(dir, "nightly-2");
        assert_eq!(ran.code, Some(0), "{}", ran.show());
        assert!(
            ran.stdout.contains("(key `nightly-2`) succeeded at"),
            "{}",
            ran.show()
        );
    }
    assert_eq!(trained(dir), ["nightly-1", "nightly-2"]);
}

/// The cron line, the systemd unit and the workflow all run advance.sh on the shipped plan, which validates with
/// the variables they pass; the unit counts exit 4 as success.
#[test]
fn test_int_schedule_examples_invoke_advance_sh_on_a_valid_plan() {
    let files = [
        "examples/schedule/sortie.cron",
        "examples/schedule/sortie-retrain.service",
        "examples/github-actions/retrain.yml",
    ];
    for file in files {
        let text = std::fs::read_to_string(repo().join(file)).expect("example");
        assert!(
            text.contains("examples/schedule/advance.sh plans/mistral-qlora.yaml"),
            "{file} does not run advance.sh on the plan"
        );
        assert!(
            text.contains("SORTIE_YES"),
            "{file} would stop at the confirmation"
        );
    }
    let unit = std::fs::read_to_string(repo().join(files[1])).expect("unit");
    assert!(unit.contains("SuccessExitStatus=4"));
    let timer = std::fs::read_to_string(repo().join("examples/schedule/sortie-retrain.timer"))
        .expect("timer");
    assert!(timer.contains("OnCalendar=") && timer.contains("Persistent=true"));
    let ran = run_cmd(
        {
            let mut c = Command::new(PLAN);
            c.args([
                "validate",
                "plans/mistral-qlora.yaml",
                "--var",
                "bucket=my-state-bucket",
            ])
            .current_dir(repo());
            c
        },
        MINUTE,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    // shellcheck, where the test environment has it (scripts/setup-test-env installs it).
    if let Ok(out) = Command::new("shellcheck")
        .arg(repo().join("examples/schedule/advance.sh"))
        .output_within(DEADLINE)
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
