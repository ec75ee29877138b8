//! Robustness items found by probing the binary (issue 7, item 5): each test is named after its case.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::apply::{
    events, plan_cmd, run_cmd, run_plan, sandbox, state_files, status_json, wait_for_run, Guarded,
};

const MINUTE: Duration = Duration::from_secs(60);

const ONE_STEP: &str = "plan: one
target: { provider: local }
steps:
  host: { kind: instance }
  work: { kind: run, on: host, run: echo working }
  teardown: { kind: teardown, when: always }
";

#[test]
fn test_e2e_non_utf8_environment_variable_does_not_panic() {
    let (t, _reaper) = sandbox("p.yaml", ONE_STEP);
    let dir = t.dir.path();
    for args in [vec!["validate", "p.yaml"], vec!["apply", "p.yaml"]] {
        let mut cmd = plan_cmd(dir, &args);
        cmd.env("UNRELATED_LATIN1", std::ffi::OsStr::from_bytes(b"caf\xe9"));
        let ran = run_cmd(cmd, MINUTE);
        assert_eq!(ran.code, Some(0), "plan {args:?}: {}", ran.show());
        assert!(!ran.stderr.contains("panicked"), "{}", ran.show());
    }
}

#[test]
fn test_e2e_non_utf8_output_line_is_reported_and_the_others_kept() {
    let plan = "plan: outs
target: { provider: local }
steps:
  host: { kind: instance }
  make:
    kind: run
    on: host
    run: printf 'first=1\\nbad=\\377\\nlast=3\\n' >> \"$SORTIE_OUTPUT\"
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(
        ran.stdout
            .contains("warning  make: line 2 of $SORTIE_OUTPUT is not UTF-8 and was skipped"),
        "{}",
        ran.show()
    );
    let status = status_json(dir, "p.yaml", None);
    let outputs = &status["steps"]["make"]["outputs"];
    assert_eq!(outputs["first"], "1", "{status:#}");
    assert_eq!(outputs["last"], "3", "{status:#}");
    assert!(outputs.get("bad").is_none(), "{status:#}");
}

#[test]
fn test_e2e_retry_line_names_the_attempt_that_failed() {
    let plan = "plan: retry
target: { provider: local }
steps:
  host: { kind: instance }
  flaky:
    kind: run
    on: host
    retries: 1
    backoff: 10ms
    run: exit 1
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let ran = run_plan(t.dir.path(), &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        ran.stdout
            .contains("  retry    flaky: attempt 1 failed (exit code 1); attempt 2 in "),
        "{}",
        ran.show()
    );
}

#[test]
fn test_e2e_status_watch_exits_on_a_finished_run_without_control_codes() {
    let (t, _reaper) = sandbox("p.yaml", ONE_STEP);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    // Bounded: the old watch never returned and is killed by the harness after 20 s.
    let ran = run_plan(
        dir,
        &["status", "p.yaml", "--watch"],
        Duration::from_secs(20),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(
        !ran.stdout.contains('\x1b'),
        "control codes in a pipe: {:?}",
        ran.stdout
    );
    assert!(ran.stdout.contains("work"), "{}", ran.show());
}

#[test]
fn test_e2e_validate_on_a_fifo_does_not_block() {
    let (t, _reaper) = sandbox("p.yaml", ONE_STEP);
    let dir = t.dir.path();
    nix::unistd::mkfifo(&dir.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let ran = run_plan(dir, &["validate", "fifo.yaml"], Duration::from_secs(10));
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr.contains("cannot read plan file: it is a FIFO")
            && ran.stderr.contains("fifo.yaml"),
        "{}",
        ran.show()
    );
}

#[test]
fn test_e2e_one_corrupt_state_file_does_not_break_runs() {
    let (t, _reaper) = sandbox("p.yaml", ONE_STEP);
    let dir = t.dir.path();
    for _ in 0..2 {
        let ran = run_plan(dir, &["apply", "p.yaml", "--new"], MINUTE);
        assert_eq!(ran.code, Some(0), "{}", ran.show());
    }
    let files = state_files(dir, "one");
    assert_eq!(files.len(), 2);
    std::fs::write(&files[0], "{ not json").expect("corrupt");
    let ran = run_plan(dir, &["runs", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.show());
    assert!(lines[1].contains("corrupt"), "{}", ran.show());
    assert!(lines[2].contains("succeeded"), "{}", ran.show());
    let corrupt_run = files[0]
        .parent()
        .and_then(|p| p.file_name())
        .expect("run dir");
    let named = format!("{}/state.json is unreadable", corrupt_run.to_string_lossy());
    assert!(ran.stderr.contains(&named), "{}", ran.show());
}

#[test]
fn test_e2e_logs_still_served_after_teardown() {
    let (t, _reaper) = sandbox("p.yaml", ONE_STEP);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(!dir
        .join(".sortie/hosts")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
    let logs = run_plan(dir, &["logs", "p.yaml", "work"], MINUTE);
    assert_eq!(
        (logs.code, logs.stdout.as_str()),
        (Some(0), "working\n"),
        "{}",
        logs.show()
    );
}

#[test]
fn test_e2e_logs_are_streamed_not_read_whole() {
    let plan = "plan: big
target: { provider: local }
steps:
  host: { kind: instance }
  work: { kind: run, on: host, run: echo small }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    // Make the kept log 64 MiB, then hold `plan logs` on a full pipe and read its peak memory.
    let run = wait_for_run(dir, "big", MINUTE);
    let kept = dir
        .join(".sortie/state/big")
        .join(&run)
        .join("logs/work.1.log");
    let line = "x".repeat(1023) + "\n";
    let live = dir
        .join(".sortie/hosts")
        .join(format!("{run}-host"))
        .join(".sortie/steps/work/output.log");
    for path in [&kept, &live] {
        std::fs::write(path, line.repeat(64 * 1024)).expect("big log");
    }
    let mut cmd = plan_cmd(dir, &["logs", "p.yaml", "work"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = Guarded::spawn(cmd);
    std::thread::sleep(Duration::from_secs(2));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).expect("proc");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    let mut out = child.child.stdout.take().expect("stdout");
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(child.wait_for(MINUTE).success());
    assert_eq!(total, 64 * 1024 * 1024);
    assert!(
        peak_kib < 32 * 1024,
        "plan logs peaked at {peak_kib} KiB for a 64 MiB log"
    );
}

#[test]
fn test_e2e_logs_follow_across_a_retry_shows_the_new_attempt_from_its_start() {
    let plan = "plan: follow
target: { provider: local }
steps:
  host: { kind: instance }
  flaky:
    kind: run
    on: host
    retries: 1
    backoff: 10ms
    run: |
      if [ ! -f \"$MARK\" ]; then
        echo attempt-one; touch \"$MARK\"; sleep 1; exit 1
      fi
      echo attempt-two-first-line
      i=0; while [ $i -lt 50 ]; do echo \"attempt-two-line-$i\"; i=$((i + 1)); done
      sleep 1
      echo attempt-two-done
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let mark = dir.join("mark");
    let mut apply = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
    apply
        .env("MARK", &mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut apply = Guarded::spawn(apply);
    let deadline = Instant::now() + MINUTE;
    while !mark.exists() {
        assert!(Instant::now() < deadline, "attempt 1 never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = run_plan(dir, &["logs", "p.yaml", "flaky", "-f"], MINUTE);
    assert_eq!(logs.code, Some(0), "{}", logs.show());
    assert!(apply.wait_for(MINUTE).success());
    let mut out = String::new();
    let _ = apply
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out);
    assert!(
        events(&out).iter().any(|e| e["event"] == "step_retry"),
        "{out}"
    );
    for want in [
        "attempt-one\n",
        "attempt-two-first-line\n",
        "attempt-two-line-0\n",
        "attempt-two-done\n",
    ] {
        assert!(
            logs.stdout.contains(want),
            "missing {want:?} in\n{}",
            logs.show()
        );
    }
}

/// Every file under `dir` whose name ends in `.tmp`.
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            found.extend(temp_files(&path));
        } else if path.to_string_lossy().ends_with(".tmp") {
            found.push(path.display().to_string());
        }
    }
    found
}

/// A full disk, made real with RLIMIT_FSIZE (`ulimit -f`, no root needed): a write past 512 bytes fails with
/// EFBIG as it would with ENOSPC, and SIGXFSZ is ignored so the write returns the error.
#[test]
fn test_e2e_full_state_dir_is_exit_2_with_the_path_and_leaves_no_temp_files() {
    let (t, _reaper) = sandbox("p.yaml", ONE_STEP);
    let dir = t.dir.path();
    let mut sh = std::process::Command::new("sh");
    sh.args([
        "-c",
        "trap '' XFSZ; ulimit -f 1; exec \"$0\" apply p.yaml",
        crate::test_builder::PLAN,
    ])
    .current_dir(dir)
    .env_remove("RUST_LOG")
    .env("NO_COLOR", "1");
    let ran = run_cmd(sh, MINUTE);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains("error: cannot use the state directory ")
            && ran.stderr.contains(".sortie/state/one/"),
        "{}",
        ran.show()
    );
    assert_eq!(temp_files(&dir.join(".sortie")), Vec::<String>::new());
    // With room again, the same command goes on.
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}

const BOGUS_KEY: &str = "  = help: a `run` step takes: kind, description, needs, when, timeout, retries, backoff, env, on, script, run, detach, lock, heartbeat, files\n";

#[test]
fn test_e2e_bom_and_tab_after_key_keep_positions() {
    let body = "target: { provider: local }\nsteps:\n  host:\t{ kind: instance }\n  a:\n    kind:\trun\n    on: host\n    run: echo\n    bogus: 1\n";
    let expected = format!(
        "error: unknown key `bogus` in `steps.a`\n --> p.yaml:9:5\n  |\n9 |     bogus: 1\n  |     ^^^^^\n{BOGUS_KEY}"
    );
    crate::test_builder::Test::new()
        .file("p.yaml", format!("\u{feff}plan: bom\n{body}"))
        .args(["validate", "p.yaml"])
        .status(2)
        .stderr(&expected)
        .run();
}

#[test]
fn test_e2e_numeric_step_id_is_reported_on_its_line() {
    let plan = "plan: num\ntarget: { provider: local }\nsteps:\n  host: { kind: instance }\n  x: { kind: run, on: host, run: echo }\n  42: { kind: run, on: host, run: echo }\n";
    crate::test_builder::Test::new()
        .file("p.yaml", plan)
        .args(["validate", "p.yaml"])
        .status(2)
        .stderr("error: invalid value for `steps`: invalid type: integer `42`, expected a string\n --> p.yaml:6:3\n  |\n6 |   42: { kind: run, on: host, run: echo }\n  |   ^^\n")
        .run();
}

const NAP: &str = "plan: locked
target: { provider: local }
steps:
  host: { kind: instance }
  nap: { kind: run, on: host, run: sleep 3 }
";

#[test]
fn test_e2e_unlock_force_names_the_live_apply_that_holds_the_lock() {
    let (t, _reaper) = sandbox("p.yaml", NAP);
    let dir = t.dir.path();
    let mut first = plan_cmd(dir, &["apply", "p.yaml"]);
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = Guarded::spawn(first);
    let run = wait_for_run(dir, "locked", Duration::from_secs(20));
    let ran = run_plan(dir, &["unlock", "p.yaml", "--force", "--run", &run], MINUTE);
    assert_eq!(ran.code, Some(3), "{}", ran.show());
    assert!(
        ran.stderr
            .contains(&format!("is locked by another apply: pid {}", first.pid())),
        "{}",
        ran.show()
    );
    assert!(first.wait_for(MINUTE).success());
    let ran = run_plan(dir, &["unlock", "p.yaml", "--force", "--run", &run], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(ran.stdout.contains("no lock to break"), "{}", ran.show());
}

#[test]
fn test_e2e_locked_message_names_the_live_holder_not_a_dead_pid() {
    let (t, _reaper) = sandbox("p.yaml", NAP);
    let dir = t.dir.path();
    let mut first = plan_cmd(dir, &["apply", "p.yaml"]);
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = Guarded::spawn(first);
    let run = wait_for_run(dir, "locked", Duration::from_secs(20));
    // What an earlier apply killed with -9 leaves: lock.json naming a pid that is gone.
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let dead = gone.id();
    gone.wait().expect("wait");
    let lock_json = dir
        .join(".sortie/state/locked")
        .join(&run)
        .join("lock.json");
    let host = nix::unistd::gethostname().expect("hostname");
    std::fs::write(
        &lock_json,
        format!(
            "{{\"pid\":{dead},\"host\":\"{}\",\"since\":\"2020-01-01T00:00:00Z\"}}",
            host.to_string_lossy()
        ),
    )
    .expect("lock.json");
    let ran = run_plan(dir, &["apply", "p.yaml", "--run", &run], MINUTE);
    assert_eq!(ran.code, Some(3), "{}", ran.show());
    assert!(
        ran.stderr
            .contains(&format!("locked by another apply: pid {} on", first.pid()))
            && !ran.stderr.contains(&format!("pid {dead} ")),
        "dead pid {dead}, live {}:\n{}",
        first.pid(),
        ran.show()
    );
    assert!(first.wait_for(MINUTE).success());
}

#[test]
fn test_e2e_unusable_state_dir_is_exit_2_with_the_path() {
    let plan = ONE_STEP.replace("plan: one\n", "plan: one\nstate: blocker/state\n");
    let (t, _reaper) = sandbox("p.yaml", &plan);
    let dir = t.dir.path();
    std::fs::write(dir.join("blocker"), "a file, not a directory").expect("blocker");
    for args in [vec!["apply", "p.yaml"], vec!["runs", "p.yaml"]] {
        let ran = run_plan(dir, &args, MINUTE);
        assert_eq!(ran.code, Some(2), "plan {args:?}: {}", ran.show());
        assert!(
            ran.stderr
                .contains("error: cannot use the state directory ")
                && ran.stderr.contains("blocker/state/one: Not a directory"),
            "{}",
            ran.show()
        );
    }
}
