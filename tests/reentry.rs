//! Crash re-entry on the local target: `plan apply` is killed with SIGKILL at a step boundary (or in the middle of
//! a step), then `plan apply` is run again until it succeeds. Every run step appends a line to its own marker file
//! when it starts, so "each step executed exactly once" is "each marker has exactly one line". The detached step
//! (`train`, ~3 s) must be re-attached, not restarted; an attached step that was running must be reconciled.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::apply::{
    events, has_event, leftover_processes, plan_cmd, run_cmd, sandbox, state_files, status_json,
    Live, Ran,
};

const PLAN: &str = "plan: reentry
target: { provider: local }
defaults: { timeout: 2m }
steps:
  host: { kind: instance }
  data: { kind: volume, attach_to: host, size: 1GiB, mount: /mnt/data }
  s1:
    kind: run
    on: host
    needs: [data]
    run: |
      echo x >> \"$MARKERS/s1\"
      echo rows=3 >> \"$SORTIE_OUTPUT\"
  s2:
    kind: run
    on: host
    needs: [s1]
    run: |
      echo x >> \"$MARKERS/s2\"
      sleep 1
      echo rows={{ steps.s1.outputs.rows }} >> \"$SORTIE_OUTPUT\"
  train:
    kind: run
    on: host
    needs: [s2]
    detach: true
    lock: train
    heartbeat: { interval: 1s }
    run: |
      echo x >> \"$MARKERS/train\"
      for i in 1 2 3 4 5 6; do echo \"step $i/6\"; sleep 0.5; done
      echo adapter={{ steps.data.outputs.mount_path }}/adapter.bin >> \"$SORTIE_OUTPUT\"
      echo weights > {{ steps.data.outputs.mount_path }}/adapter.bin
  s4:
    kind: run
    on: host
    needs: [train]
    run: |
      echo x >> \"$MARKERS/s4\"
      test -s {{ steps.train.outputs.adapter }}
      test {{ steps.s2.outputs.rows }} = 3
  teardown: { kind: teardown, needs: [s4] }
";

const RUN_STEPS: [&str; 4] = ["s1", "s2", "train", "s4"];
const ALL_STEPS: [&str; 7] = ["host", "data", "s1", "s2", "train", "s4", "teardown"];

/// Where the first apply is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as this step has started (its `step_started` event).
    Started(&'static str),
    /// As soon as this step has finished (its `step_finished` event).
    Finished(&'static str),
    /// While this step's script runs: started, and its marker written.
    Running(&'static str),
    /// As soon as the state file says this step is `running` (polled, not from events).
    StateRunning(&'static str),
}

fn marker_lines(markers: &Path, step: &str) -> usize {
    std::fs::read_to_string(markers.join(step))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn state_status(dir: &Path, step: &str) -> Option<String> {
    let path = state_files(dir, "reentry").pop()?;
    let state: Json = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    state["steps"][step]["status"].as_str().map(String::from)
}

/// One scenario: kill the first apply at `at`, re-apply until exit 0, check exactly-once and cleanliness.
/// Returns the events of every re-entry apply.
fn crash_and_resume(at: KillAt) -> Vec<Vec<Json>> {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).expect("mkdir");
    let cmd = || {
        let mut c = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
        c.env("MARKERS", &markers);
        c
    };
    let limit = Duration::from_secs(30);

    let mut first = Live::start(cmd());
    let step_is = |e: &Json, kind: &str, step: &str| e["event"] == kind && e["step"] == step;
    let reached = match at {
        KillAt::Started(s) => first.wait_event(limit, |e| step_is(e, "step_started", s), || true),
        KillAt::Finished(s) => first.wait_event(limit, |e| step_is(e, "step_finished", s), || true),
        KillAt::Running(s) => first.wait_event(
            limit,
            |e| step_is(e, "step_started", s),
            || marker_lines(&markers, s) > 0,
        ),
        KillAt::StateRunning(s) => {
            let deadline = Instant::now() + limit;
            while state_status(dir, s).as_deref() != Some("running") {
                assert!(
                    Instant::now() < deadline,
                    "{s} never showed as running in state"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        }
    };
    assert!(
        reached,
        "{at:?}: the apply ended before the kill point; events:\n{}",
        first.seen.join("\n")
    );
    let killed_at = first.kill9();
    let before: Vec<(&str, usize)> = RUN_STEPS
        .iter()
        .map(|s| (*s, marker_lines(&markers, s)))
        .collect();
    let context = format!(
        "{at:?}: markers at the kill {before:?}; state then: {:?}\nfirst apply's events:\n{}",
        ALL_STEPS.map(|s| (s, state_status(dir, s))),
        killed_at.join("\n")
    );

    let mut reentries: Vec<Vec<Json>> = Vec::new();
    let mut outputs: Vec<Ran> = Vec::new();
    loop {
        let ran = run_cmd(cmd(), Duration::from_secs(60));
        reentries.push(events(&ran.stdout));
        let code = ran.code;
        outputs.push(ran);
        if code == Some(0) || outputs.len() == 3 {
            break;
        }
    }
    let shown: Vec<String> = outputs.iter().map(Ran::show).collect();
    let shown = shown.join("\n=== next apply\n");
    assert_eq!(
        outputs.last().and_then(|r| r.code),
        Some(0),
        "re-entry never succeeded\n{context}\n=== re-entry applies\n{shown}"
    );
    assert_eq!(
        outputs.len(),
        1,
        "the first re-entry apply did not finish the run\n{context}\n=== re-entry applies\n{shown}"
    );
    // Continued the same run, not a new one.
    assert_eq!(state_files(dir, "reentry").len(), 1, "{context}\n{shown}");
    assert_eq!(reentries[0][0]["event"], "run_started", "{shown}");
    for step in RUN_STEPS {
        assert_eq!(
            marker_lines(&markers, step),
            1,
            "step {step} ran {} times\n{context}\n=== re-entry applies\n{shown}",
            marker_lines(&markers, step)
        );
    }
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(status["status"], "succeeded", "{status:#}");
    for step in ALL_STEPS {
        assert_eq!(
            status["steps"][step]["status"], "succeeded",
            "{step}: {status:#}\n{context}"
        );
    }
    // Run steps are never retried here: attempt 1 each, even across the crash.
    for step in RUN_STEPS {
        assert_eq!(
            status["steps"][step]["attempt"], 1,
            "{step}: {status:#}\n{context}\n{shown}"
        );
    }
    let hosts = dir.join(".sortie/hosts");
    let left: Vec<_> = std::fs::read_dir(&hosts)
        .map(|e| e.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "sandboxes left after teardown: {left:?}\n{context}"
    );
    let procs = leftover_processes(dir, Duration::from_secs(5));
    assert!(
        procs.is_empty(),
        "processes left: {procs:?}\n{context}\n{shown}"
    );
    reentries
}

fn reattached(reentries: &[Vec<Json>], step: &str) -> bool {
    has_event(&reentries[0], "step_reattached", Some(step))
}

fn started_again(reentries: &[Vec<Json>], step: &str) -> bool {
    has_event(&reentries[0], "step_started", Some(step))
}

#[test]
fn test_e2e_reentry_killed_before_the_first_step_finishes() {
    crash_and_resume(KillAt::Started("host"));
}

#[test]
fn test_e2e_reentry_killed_after_the_host() {
    let r = crash_and_resume(KillAt::Finished("host"));
    assert!(
        !started_again(&r, "host"),
        "the host was created again: {:?}",
        r[0]
    );
}

#[test]
fn test_e2e_reentry_killed_after_the_first_run_step() {
    let r = crash_and_resume(KillAt::Finished("s1"));
    assert!(!started_again(&r, "s1"), "{:?}", r[0]);
}

#[test]
fn test_e2e_reentry_killed_when_state_says_running() {
    // The window between the checkpoint of "running" and the launch on the host.
    crash_and_resume(KillAt::StateRunning("s1"));
}

#[test]
fn test_e2e_reentry_killed_during_an_attached_step_reconciles_it() {
    let r = crash_and_resume(KillAt::Running("s2"));
    assert!(reattached(&r, "s2"), "s2 was not reconciled: {:#?}", r[0]);
    assert!(
        !started_again(&r, "s2"),
        "s2 was started again: {:#?}",
        r[0]
    );
}

#[test]
fn test_e2e_reentry_killed_after_the_attached_step() {
    let r = crash_and_resume(KillAt::Finished("s2"));
    assert!(!started_again(&r, "s2"), "{:?}", r[0]);
}

#[test]
fn test_e2e_reentry_killed_during_the_detached_step_reattaches_it() {
    let r = crash_and_resume(KillAt::Running("train"));
    assert!(
        reattached(&r, "train"),
        "train was not re-attached: {:#?}",
        r[0]
    );
    assert!(
        !started_again(&r, "train"),
        "train was started again: {:#?}",
        r[0]
    );
}

#[test]
fn test_e2e_reentry_killed_after_the_detached_step() {
    let r = crash_and_resume(KillAt::Finished("train"));
    assert!(!started_again(&r, "train"), "{:?}", r[0]);
}

#[test]
fn test_e2e_reentry_killed_before_teardown_finishes() {
    crash_and_resume(KillAt::Started("teardown"));
}
