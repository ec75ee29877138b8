//! `plan apply --wait DURATION`: the apply advances the run for at most that long, leaves its run steps running on
//! their hosts and exits 4; the next apply re-attaches them and finishes the run, each step executed once.

use std::time::Duration;

use crate::apply::{events, has_event, plan_cmd, run_cmd, sandbox, status_json};

const PLAN: &str = "plan: deadline
target: { provider: local }
defaults: { timeout: 2m }
steps:
  host: { kind: instance }
  prep:
    kind: run
    on: host
    run: |
      echo x >> \"$MARKERS/prep\"
      sleep 4
  train:
    kind: run
    on: host
    detach: true
    run: |
      echo x >> \"$MARKERS/train\"
      sleep 4
  report:
    kind: run
    on: host
    needs: [prep, train]
    run: echo x >> \"$MARKERS/report\"
  teardown: { kind: teardown, needs: [report] }
";

fn lines(markers: &std::path::Path, step: &str) -> usize {
    std::fs::read_to_string(markers.join(step)).map_or(0, |t| t.lines().count())
}

#[test]
fn test_e2e_wait_runs_out_leaves_steps_running_and_the_next_apply_finishes() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).expect("mkdir");
    let apply = |extra: &[&str]| {
        let mut args = vec!["apply", "p.yaml", "--output", "json"];
        args.extend_from_slice(extra);
        let mut c = plan_cmd(dir, &args);
        c.env("MARKERS", &markers);
        run_cmd(c, Duration::from_secs(60))
    };

    let first = apply(&["--wait", "1s"]);
    assert_eq!(first.code, Some(4), "{}", first.show());
    // Both 4-second steps were left, not waited for: the apply ended well before they could finish.
    assert!(
        first.elapsed < Duration::from_secs(4),
        "--wait 1s took {:?}\n{}",
        first.elapsed,
        first.show()
    );
    let evs = events(&first.stdout);
    let notice = evs
        .iter()
        .filter_map(|e| e["message"].as_str())
        .find(|m| m.starts_with("--wait 1s: time is up"))
        .unwrap_or_else(|| panic!("no --wait notice\n{}", first.show()));
    assert!(
        notice.ends_with("left running on their hosts: prep, train"),
        "{notice}"
    );
    assert_eq!(evs.last().map(|e| e["exit_code"].clone()), Some(4.into()));
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(status["status"], "interrupted", "{status:#}");
    for step in ["prep", "train"] {
        assert_eq!(status["steps"][step]["status"], "running", "{status:#}");
    }
    assert_eq!(status["steps"]["report"]["status"], "pending", "{status:#}");

    let second = apply(&[]);
    assert_eq!(second.code, Some(0), "{}", second.show());
    let evs = events(&second.stdout);
    for step in ["prep", "train"] {
        assert!(
            has_event(&evs, "step_reattached", Some(step)),
            "{step} not re-attached\n{}",
            second.show()
        );
        assert!(
            !has_event(&evs, "step_started", Some(step)),
            "{}",
            second.show()
        );
    }
    for step in ["prep", "train", "report"] {
        assert_eq!(
            lines(&markers, step),
            1,
            "{step} ran {} times",
            lines(&markers, step)
        );
    }
}

#[test]
fn test_e2e_wait_longer_than_the_run_changes_nothing() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let markers = dir.join("markers");
    std::fs::create_dir(&markers).expect("mkdir");
    let mut c = plan_cmd(dir, &["apply", "p.yaml", "--wait", "10m"]);
    c.env("MARKERS", &markers);
    let ran = run_cmd(c, Duration::from_secs(60));
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(!ran.stdout.contains("time is up"), "{}", ran.show());
}

#[test]
fn test_e2e_wait_rejects_what_is_not_a_duration() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let ran = run_cmd(
        plan_cmd(dir, &["apply", "p.yaml", "--wait", "soon"]),
        Duration::from_secs(20),
    );
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains("`soon` is not a duration like `90s`, `45m` or `5h30m`"),
        "{}",
        ran.show()
    );
    let both = run_cmd(
        plan_cmd(dir, &["apply", "p.yaml", "--wait", "1h", "--no-wait"]),
        Duration::from_secs(20),
    );
    assert_eq!(both.code, Some(2), "{}", both.show());
    assert!(
        !dir.join(".sortie/state").exists(),
        "a rejected apply wrote state"
    );
}
