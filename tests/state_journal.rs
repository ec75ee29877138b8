//! The state journal of large runs (src/state_journal.rs): a 100-step chain keeps its checkpoints in
//! `journal.jsonl` beside `state.json`; after kill -9 the journal is the truth (status reads it, the next apply
//! continues from it and runs nothing twice); a torn last line is ignored; a corrupt line is refused, untouched.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;

use crate::apply::{plan_cmd, run_cmd, run_plan, sandbox, state_files, status_json, Live};

const STEPS: usize = 100;
const MINUTE: Duration = Duration::from_secs(60);

fn chain() -> String {
    let mut plan = String::from(
        "plan: big\ntarget: { provider: local }\nsteps:\n  host: { kind: instance }\n",
    );
    for i in 1..=STEPS {
        let needs = if i > 1 {
            format!("s{}", i - 1)
        } else {
            String::new()
        };
        let _ = writeln!(
            plan,
            "  s{i}: {{ kind: run, on: host, needs: [{needs}], run: 'echo x >> \"$MARKERS/s{i}\"' }}"
        );
    }
    plan
}

fn markers(dir: &Path, step: usize) -> usize {
    std::fs::read_to_string(dir.join("markers").join(format!("s{step}")))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn apply(dir: &Path) -> std::process::Command {
    let mut c = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
    c.env("MARKERS", dir.join("markers"));
    c
}

/// Starts the chain, kills the apply with SIGKILL once `s<at>` has finished, and returns state.json's path.
fn killed_after(dir: &Path, at: usize) -> PathBuf {
    std::fs::create_dir(dir.join("markers")).expect("mkdir");
    let mut live = Live::start(apply(dir));
    let step = format!("s{at}");
    live.expect_event(
        MINUTE,
        |e| e["event"] == "step_finished" && e["step"] == step.as_str(),
        || true,
    );
    live.kill9();
    state_files(dir, "big").pop().expect("state file")
}

fn journal_lines(state_file: &Path) -> Vec<String> {
    std::fs::read_to_string(state_file.with_file_name("journal.jsonl"))
        .expect("a journal beside state.json")
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn test_e2e_large_run_journals_checkpoints_and_resumes_after_kill9() {
    let (t, _reaper) = sandbox("p.yaml", &chain());
    let dir = t.dir.path();
    let state_file = killed_after(dir, 40);

    // state.json alone is behind: the journal holds the checkpoints since the walk began.
    let snapshot: Json =
        serde_json::from_slice(&std::fs::read(&state_file).expect("read")).expect("json");
    let lines = journal_lines(&state_file);
    let last: Json = serde_json::from_str(lines.last().expect("a line")).expect("json line");
    assert!(
        last["serial"].as_u64() > snapshot["serial"].as_u64(),
        "journal {last} vs snapshot serial {}",
        snapshot["serial"]
    );
    assert_eq!(
        snapshot["steps"]["s40"]["status"], "pending",
        "state.json was rewritten"
    );

    // A torn last line (an append cut short by the kill) is no checkpoint: ignored.
    let journal = state_file.with_file_name("journal.jsonl");
    let mut bytes = std::fs::read(&journal).expect("read");
    bytes.extend_from_slice(b"{\"serial\":");
    std::fs::write(&journal, &bytes).expect("write");
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(status["steps"]["s40"]["status"], "succeeded", "{status:#}");

    let ran = run_cmd(apply(dir), MINUTE * 3);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    for i in 1..=STEPS {
        assert_eq!(markers(dir, i), 1, "s{i} ran {} times", markers(dir, i));
    }
    // The walk ended: everything is folded into state.json again, and the journal is gone.
    assert!(!journal.exists(), "journal left after the run finished");
    let doc: Json =
        serde_json::from_slice(&std::fs::read(&state_file).expect("read")).expect("json");
    assert_eq!(doc["status"], "succeeded");
    for i in 1..=STEPS {
        assert_eq!(doc["steps"][format!("s{i}")]["status"], "succeeded", "s{i}");
        assert_eq!(doc["steps"][format!("s{i}")]["attempt"], 1, "s{i}");
    }
}

#[test]
fn test_e2e_corrupt_journal_line_is_refused_and_left_untouched() {
    let (t, _reaper) = sandbox("p.yaml", &chain());
    let dir = t.dir.path();
    let state_file = killed_after(dir, 5);
    let journal = state_file.with_file_name("journal.jsonl");
    let mut lines = journal_lines(&state_file);
    assert!(lines.len() >= 3, "{lines:?}");
    lines[1] = "{\"serial\": \"two\"}".into();
    let corrupt = lines.join("\n") + "\n";
    std::fs::write(&journal, &corrupt).expect("write");

    for args in [&["apply", "p.yaml"][..], &["status", "p.yaml"][..]] {
        let ran = run_plan(dir, args, MINUTE);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.show());
        assert!(
            ran.stderr.contains("journal.jsonl") && ran.stderr.contains("line 2"),
            "{args:?}: the error does not name the journal and line:\n{}",
            ran.show()
        );
    }
    assert_eq!(std::fs::read_to_string(&journal).expect("read"), corrupt);
    assert_eq!(markers(dir, 6), 0, "a step ran from a corrupt state");
}
