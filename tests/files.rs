//! `files:` on a run step: what the plan ships reaches the step's working directory (and absolute destinations
//! inside the sandbox) on the local target; a change to the files reruns the step, and only that step.

use std::path::Path;
use std::time::Duration;

use serde_json::Value as Json;

use crate::apply::{events, plan_cmd, run_cmd, sandbox};
use crate::test_builder::Test;

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
