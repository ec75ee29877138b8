//! Snapshots of what users read: the human output of `plan graph`, `plan preview`, `plan apply` and `plan status`
//! on a small local plan (issue 9, "Keep"). Run ids, times, durations and temporary paths are masked; everything
//! else must stay as it is unless a change means to alter it (then `INSTA_UPDATE=always cargo test -- output_snapshots`,
//! and review the diff of tests/snapshots/).

use std::time::Duration;

use crate::apply::{plan_cmd, run_cmd, sandbox};

const PLAN: &str = "plan: snap
target: { provider: local }
steps:
  host: { kind: instance }
  prep:
    kind: run
    on: host
    run: echo rows=3 >> \"$SORTIE_OUTPUT\"
  train:
    kind: run
    on: host
    needs: [prep]
    retries: 1
    backoff: 1s
    run: |
      if [ ! -f \"$SORTIE_HOME/tried\" ]; then touch \"$SORTIE_HOME/tried\"; echo first try fails; exit 3; fi
      echo model=ok >> \"$SORTIE_OUTPUT\"
  teardown: { kind: teardown, when: always }
";

/// Masks what changes from run to run.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    for (pattern, mask) in [
        (r"\d{8}-\d{6}-\d{3}-[0-9a-f]{2}", "[run]"),
        (
            r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?Z?",
            "[time]",
        ),
        (r"\d+(\.\d+)?s\b", "[secs]"),
        (r"(/[\w.-]+)*/\.tmp\w+", "[dir]"),
        (r"local-\[run\]-", "local-[run]-"),
        (r"in \d+(\.\d+)?s", "in [secs]"),
        // Masked cells of a table are narrower than what they hide: one space after each.
        (r"(\[secs\]|\[time\]) +", "$1 "),
        (r" +\n", "\n"),
    ] {
        s.add_filter(pattern, mask);
    }
    s
}

fn run(dir: &std::path::Path, args: &[&str]) -> String {
    let ran = run_cmd(plan_cmd(dir, args), Duration::from_secs(60));
    format!("exit {:?}\n{}{}", ran.code, ran.stdout, ran.stderr)
}

#[test]
fn test_e2e_human_output_of_graph_preview_apply_and_status() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let _guard = settings().bind_to_scope();
    insta::assert_snapshot!("graph", run(dir, &["graph", "p.yaml"]));
    insta::assert_snapshot!("preview_new", run(dir, &["preview", "p.yaml"]));
    insta::assert_snapshot!("apply", run(dir, &["apply", "p.yaml"]));
    insta::assert_snapshot!("status", run(dir, &["status", "p.yaml"]));
}
