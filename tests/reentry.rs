//! Crash re-entry on the local target: `plan apply` is killed with SIGKILL at a step boundary (or in the middle of
//! a step), then `plan apply` is run again until it succeeds. Every run step appends a line to its own marker file
//! when it starts, so "each step executed exactly once" is "each marker has exactly one line". The detached step
//! (`train`, ~3 s) must be re-attached, not restarted; an attached step that was running must be reconciled.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::apply::{
    events, has_event, leftover_processes, plan_cmd, processes_in, run_cmd, sandbox, state_files,
    status_json, Live, Ran,
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
    /// As soon as the apply announces the run (nothing has finished yet).
    RunStarted,
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

/// The step's status as stored: `state.json`, then the lines of its journal when the run has one
/// (docs/DESIGN.md, "State and re-entry": a record's `steps` replace those steps).
fn state_status(dir: &Path, step: &str) -> Option<String> {
    let path = state_files(dir, "reentry").pop()?;
    let state: Json = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let mut status = state["steps"][step]["status"].as_str().map(String::from);
    let journal = std::fs::read_to_string(path.with_file_name("journal.jsonl")).unwrap_or_default();
    for line in journal.lines() {
        let Ok(record) = serde_json::from_str::<Json>(line) else {
            break; // a torn last line
        };
        if record["serial"].as_u64() > state["serial"].as_u64() {
            if let Some(s) = record["steps"][step]["status"].as_str() {
                status = Some(s.to_string());
            }
        }
    }
    status
}

/// Whether the run's checkpoints are in a journal beside `state.json` (with at least one line in it).
fn journaled(dir: &Path) -> bool {
    state_files(dir, "reentry").pop().is_some_and(|p| {
        std::fs::read_to_string(p.with_file_name("journal.jsonl"))
            .is_ok_and(|j| j.lines().count() > 0)
    })
}

/// Kills a running `plan apply --output json` at `at`; returns its events.
fn kill_at(dir: &Path, markers: &Path, at: KillAt, cmd: Command) -> Vec<String> {
    let limit = Duration::from_secs(30);
    let mut apply = Live::start(cmd);
    let step_is = |e: &Json, kind: &str, step: &str| e["event"] == kind && e["step"] == step;
    let reached = match at {
        KillAt::RunStarted => apply.wait_event(limit, |e| e["event"] == "run_started", || true),
        KillAt::Started(s) => apply.wait_event(limit, |e| step_is(e, "step_started", s), || true),
        KillAt::Finished(s) => apply.wait_event(limit, |e| step_is(e, "step_finished", s), || true),
        KillAt::Running(s) => apply.wait_event(
            limit,
            |e| step_is(e, "step_started", s) || step_is(e, "step_reattached", s),
            || marker_lines(markers, s) > 0,
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
        apply.seen.join("\n")
    );
    apply.kill9()
}

/// Waits (bounded) until `step`'s attempt has recorded its exit code on the host.
fn wait_finished_on_host(dir: &Path, step: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = std::fs::read_dir(dir.join(".sortie/hosts"))
            .map(|hosts| {
                hosts.flatten().any(|h| {
                    h.path()
                        .join(".sortie/steps")
                        .join(step)
                        .join("exit_code")
                        .is_file()
                })
            })
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{step} never finished on its host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One scenario: apply number k is killed at `kills[k]`; then (after `settle`, if given, has finished on the
/// host) `plan apply` is run until it exits 0. Checks exactly-once and cleanliness; returns the events of every
/// apply after the last kill.
fn crash_and_resume(kills: &[KillAt], settle: Option<&str>) -> Vec<Vec<Json>> {
    crash_and_resume_in(kills, settle, false)
}

/// `crash_and_resume`, with `journal`: every apply keeps its checkpoints in the state journal (a plan this small
/// rewrites `state.json` by default), and the first kill must leave a journal behind.
fn crash_and_resume_in(kills: &[KillAt], settle: Option<&str>, journal: bool) -> Vec<Vec<Json>> {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).expect("mkdir");
    let cmd = || {
        let mut c = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
        c.env("MARKERS", &markers);
        if journal {
            c.env("SORTIE_JOURNAL_MIN_STEPS", "0");
        }
        c
    };

    let mut context = String::new();
    for (k, &at) in kills.iter().enumerate() {
        let killed = kill_at(dir, &markers, at, cmd());
        let before: Vec<(&str, usize)> = RUN_STEPS
            .iter()
            .map(|s| (*s, marker_lines(&markers, s)))
            .collect();
        context.push_str(&format!(
            "apply #{} killed at {at:?}: markers {before:?}; state {:?}\nits events:\n{}\n",
            k + 1,
            ALL_STEPS.map(|s| (s, state_status(dir, s))),
            killed.join("\n")
        ));
        assert!(
            !journal || k > 0 || journaled(dir) || matches!(at, KillAt::RunStarted),
            "{at:?}: no journal was written before the kill\n{context}"
        );
    }
    if let Some(step) = settle {
        wait_finished_on_host(dir, step);
    }

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
    crash_and_resume(&[KillAt::Started("host")], None);
}

#[test]
fn test_e2e_reentry_killed_after_the_host() {
    let r = crash_and_resume(&[KillAt::Finished("host")], None);
    assert!(
        !started_again(&r, "host"),
        "the host was created again: {:?}",
        r[0]
    );
}

#[test]
fn test_e2e_reentry_killed_after_the_first_run_step() {
    let r = crash_and_resume(&[KillAt::Finished("s1")], None);
    assert!(!started_again(&r, "s1"), "{:?}", r[0]);
}

#[test]
fn test_e2e_reentry_killed_when_state_says_running() {
    // The window between the checkpoint of "running" and the launch on the host.
    crash_and_resume(&[KillAt::StateRunning("s1")], None);
}

#[test]
fn test_e2e_reentry_killed_during_an_attached_step_reconciles_it() {
    let r = crash_and_resume(&[KillAt::Running("s2")], None);
    assert!(reattached(&r, "s2"), "s2 was not reconciled: {:#?}", r[0]);
    assert!(
        !started_again(&r, "s2"),
        "s2 was started again: {:#?}",
        r[0]
    );
}

#[test]
fn test_e2e_reentry_killed_after_the_attached_step() {
    let r = crash_and_resume(&[KillAt::Finished("s2")], None);
    assert!(!started_again(&r, "s2"), "{:?}", r[0]);
}

#[test]
fn test_e2e_reentry_killed_during_the_detached_step_reattaches_it() {
    let r = crash_and_resume(&[KillAt::Running("train")], None);
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
    let r = crash_and_resume(&[KillAt::Finished("train")], None);
    assert!(!started_again(&r, "train"), "{:?}", r[0]);
}

#[test]
fn test_e2e_reentry_killed_before_teardown_finishes() {
    crash_and_resume(&[KillAt::Started("teardown")], None);
}

/// The same crash points with the checkpoints in the state journal (what runs of more than 64 steps use): a
/// kill -9 between two appends, or in the middle of one, loses nothing and runs nothing twice.
#[test]
fn test_e2e_reentry_from_a_journaled_state() {
    for at in [
        KillAt::Finished("s1"),
        KillAt::StateRunning("s1"),
        KillAt::Running("s2"),
        KillAt::Running("train"),
        KillAt::Started("teardown"),
    ] {
        crash_and_resume_in(&[at], None, true);
    }
}

#[test]
fn test_e2e_reentry_killed_at_run_start() {
    crash_and_resume(&[KillAt::RunStarted], None);
}

#[test]
fn test_e2e_reentry_after_the_killed_attached_step_finished_on_its_host() {
    // The apply died; the step finished without it. Re-entry picks up the recorded result.
    let r = crash_and_resume(&[KillAt::Running("s2")], Some("s2"));
    assert!(reattached(&r, "s2"), "s2 was not reconciled: {:#?}", r[0]);
    assert!(
        !started_again(&r, "s2"),
        "s2 was started again: {:#?}",
        r[0]
    );
}

#[test]
fn test_e2e_reentry_after_the_detached_step_finished_on_its_host() {
    let r = crash_and_resume(&[KillAt::Running("train")], Some("train"));
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
fn test_e2e_reentry_killed_twice() {
    // The first re-entry is killed too, while it watches the re-attached detached step.
    let r = crash_and_resume(&[KillAt::Running("s2"), KillAt::Running("train")], None);
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
fn test_e2e_reentry_after_no_wait_reattaches_the_detached_step() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).expect("mkdir");
    let apply = |extra: &[&str]| apply_with(dir, extra);
    let first = apply(&["--no-wait"]);
    assert_eq!(first.code, Some(4), "{}", first.show());
    let evs = events(&first.stdout);
    let last = evs.last().expect("events");
    assert_eq!(last["event"], "run_finished", "{}", first.show());
    assert_eq!(last["exit_code"], 4, "{}", first.show());
    assert_eq!(marker_lines(&markers, "train"), 1, "{}", first.show());
    assert_eq!(
        marker_lines(&markers, "s4"),
        0,
        "s4 ran before train finished\n{}",
        first.show()
    );
    assert_eq!(
        state_status(dir, "train").as_deref(),
        Some("running"),
        "{}",
        first.show()
    );

    let second = apply(&[]);
    assert_eq!(second.code, Some(0), "{}", second.show());
    let evs = events(&second.stdout);
    assert!(
        has_event(&evs, "step_reattached", Some("train")),
        "{}",
        second.show()
    );
    assert!(
        !has_event(&evs, "step_started", Some("train")),
        "{}",
        second.show()
    );
    for step in RUN_STEPS {
        assert_eq!(
            marker_lines(&markers, step),
            1,
            "step {step}\n{}",
            second.show()
        );
    }
    let procs = leftover_processes(dir, Duration::from_secs(5));
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

/// Kills the apply of `plan` (in `dir`, markers in `dir/markers`) while `step`'s script runs.
fn kill_during(dir: &Path, step: &'static str) {
    let mut c = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
    c.env("MARKERS", dir.join("markers"));
    kill_at(dir, &dir.join("markers"), KillAt::Running(step), c);
}

const EDITED: &str = "plan: reentry
target: { provider: local }
steps:
  host: { kind: instance }
  s2: { kind: run, on: host, run: 'echo v1 >> \"$MARKERS/s2\"; sleep 1.5' }
  s3: { kind: run, on: host, needs: [s2], run: 'echo x >> \"$MARKERS/s3\"' }
";

fn apply_ok(dir: &Path, extra: &[&str]) -> Vec<Json> {
    let mut args = vec!["apply", "p.yaml", "--output", "json"];
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

/// A step is edited while the crashed apply's attempt still runs. Re-entry reconciles the old attempt (right: it
/// must not run twice at once), but the new definition has not run yet, so the run is not done with it: applying
/// again must run the edited script, and until then preview must not call the step unchanged.
#[test]
fn test_e2e_reentry_step_edited_while_running_is_rerun_after_reconcile() {
    let (t, _reaper) = sandbox("p.yaml", EDITED);
    let dir = t.dir.path();
    std::fs::create_dir(dir.join("markers")).expect("mkdir");
    kill_during(dir, "s2");
    std::fs::write(dir.join("p.yaml"), EDITED.replace("echo v1", "echo v2")).expect("edit");
    let evs = apply_ok(dir, &[]);
    assert!(has_event(&evs, "step_reattached", Some("s2")), "{evs:#?}");
    let run = evs[0]["run"].as_str().expect("run").to_string();
    let after_reconcile = lines(dir, "s2");
    if after_reconcile == ["v1"] {
        let preview = run_cmd(
            plan_cmd(dir, &["preview", "p.yaml", "--run", &run]),
            Duration::from_secs(20),
        );
        let s2 = preview
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("s2 "))
            .unwrap_or_default()
            .to_string();
        assert!(
            !s2.contains("skip"),
            "only the old script (v1) ran, yet preview says the edited step is done:\n{}",
            preview.show()
        );
    } else {
        // The other correct outcome: the same apply ran the edited script after reconciling the old attempt.
        assert_eq!(
            after_reconcile,
            ["v1", "v2"],
            "s2 markers after the reconcile"
        );
    }
    apply_ok(dir, &["--run", &run]);
    assert_eq!(
        lines(dir, "s2").last().map(String::as_str),
        Some("v2"),
        "the edited script never ran; s2 markers: {:?}",
        lines(dir, "s2")
    );
}

/// `--from STEP` after a crash, while STEP's attempt still runs on its host: the forced rerun must happen
/// (after that attempt is reconciled or cancelled), not fail on the wrapper's "attempt 1 is still running".
#[test]
fn test_e2e_reentry_from_a_step_still_running_after_a_crash() {
    let (t, _reaper) = sandbox("p.yaml", EDITED);
    let dir = t.dir.path();
    std::fs::create_dir(dir.join("markers")).expect("mkdir");
    kill_during(dir, "s2");
    let mut c = plan_cmd(
        dir,
        &["apply", "p.yaml", "--from", "s2", "--output", "json"],
    );
    c.env("MARKERS", dir.join("markers"));
    let ran = run_cmd(c, Duration::from_secs(60));
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(status["steps"]["s2"]["status"], "succeeded", "{status:#}");
    assert_eq!(status["steps"]["s3"]["status"], "succeeded", "{status:#}");
    assert_eq!(lines(dir, "s3").len(), 1);
    let procs = leftover_processes(dir, Duration::from_secs(5));
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

/// `plan destroy` of a run whose detached step was left running (`--no-wait`) stops it and removes the host.
#[test]
fn test_e2e_destroy_stops_a_detached_step_left_running() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).expect("mkdir");
    let mut c = plan_cmd(dir, &["apply", "p.yaml", "--no-wait"]);
    c.env("MARKERS", &markers);
    let ran = run_cmd(c, Duration::from_secs(60));
    assert_eq!(ran.code, Some(4), "{}", ran.show());
    assert!(!processes_in(dir).is_empty(), "train is not running");
    let ran = run_cmd(
        plan_cmd(dir, &["destroy", "p.yaml"]),
        Duration::from_secs(30),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let procs = leftover_processes(dir, Duration::from_secs(5));
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let hosts: Vec<_> = std::fs::read_dir(dir.join(".sortie/hosts"))
        .map(|e| e.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(hosts.is_empty(), "{hosts:?}");
    assert_eq!(marker_lines(&markers, "s4"), 0);
}

/// `plan apply p.yaml --output json` in `dir` with `extra`, markers in `dir/markers`.
fn apply_with(dir: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["apply", "p.yaml", "--output", "json"];
    args.extend_from_slice(extra);
    let mut c = plan_cmd(dir, &args);
    c.env("MARKERS", dir.join("markers"));
    run_cmd(c, Duration::from_secs(60))
}

/// Applies PLAN with `--no-wait` (the detached `train` is left running) and returns its state file and document.
fn left_running(dir: &Path) -> (std::path::PathBuf, Json) {
    std::fs::create_dir(dir.join("markers")).expect("mkdir");
    let first = apply_with(dir, &["--no-wait"]);
    assert_eq!(first.code, Some(4), "{}", first.show());
    let files = state_files(dir, "reentry");
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("read");
    let doc = serde_json::from_str(&text).expect("json");
    (files[0].clone(), doc)
}

/// A run started by an older sortie stored each handle as a plain string map (`{"status_dir": …}`). After an
/// upgrade, apply must still find the detached step through it and re-attach, not start it again.
#[test]
fn test_e2e_reentry_reads_the_untagged_handles_of_older_runs() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let (file, mut doc) = left_running(dir);
    let mut rewritten = 0;
    for st in doc["steps"].as_object_mut().expect("steps").values_mut() {
        let Some(handle) = st.get_mut("handle").and_then(Json::as_object_mut) else {
            continue;
        };
        if handle.remove("kind").is_some() {
            rewritten += 1;
        }
    }
    assert!(
        doc["steps"]["train"]["handle"]["status_dir"].is_string(),
        "{doc:#}"
    );
    assert!(rewritten >= 5, "handles rewritten: {rewritten}\n{doc:#}");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");

    let second = apply_with(dir, &[]);
    assert_eq!(second.code, Some(0), "{}", second.show());
    let evs = events(&second.stdout);
    assert!(
        has_event(&evs, "step_reattached", Some("train")),
        "{}",
        second.show()
    );
    for step in RUN_STEPS {
        assert_eq!(
            marker_lines(&dir.join("markers"), step),
            1,
            "step {step}\n{}",
            second.show()
        );
    }
    // Written back in the tagged form.
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.contains("\"kind\": \"local_run\""), "{text}");
}

/// A handle of a kind no sortie writes is refused with exit 2, naming the state file, and the file is untouched.
#[test]
fn test_e2e_reentry_refuses_an_unknown_handle() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let (file, mut doc) = left_running(dir);
    doc["steps"]["train"]["handle"] = serde_json::json!({ "kind": "rocket", "pad": "39A" });
    let bad = serde_json::to_vec_pretty(&doc).expect("json");
    std::fs::write(&file, &bad).expect("write");

    let second = apply_with(dir, &[]);
    assert_eq!(second.code, Some(2), "{}", second.show());
    assert!(
        second.stderr.contains("state.json") && second.stderr.contains("rocket"),
        "{}",
        second.show()
    );
    assert_eq!(std::fs::read(&file).expect("read"), bad);
    // The detached step is still the first apply's; let it end before the sandbox goes.
    wait_finished_on_host(dir, "train");
}
