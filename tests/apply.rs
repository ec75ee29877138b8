//! `plan apply` on the local target, end to end: the real binary runs real processes in a temporary directory.
//! Every wait is bounded: commands run under a deadline and are killed (by pid) when a test ends early.
//! The helpers at the top are shared with tests/reentry.rs.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::test_builder::{Test, PLAN};

// ---------------------------------------------------------------------------------------------------------------
// Harness

/// A `plan` command run in `dir`, with the environment the `Test` builder uses (no SORTIE_*, no colour).
pub(crate) fn plan_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(PLAN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SORTIE_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// A child process that is killed (SIGKILL, by its pid) and reaped when dropped, so no test leaves one behind.
pub(crate) struct Guarded {
    pub child: Child,
    pub args: String,
    done: bool,
}

impl Guarded {
    pub fn spawn(mut cmd: Command) -> Guarded {
        let args = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
        let child = cmd.spawn().expect("spawn plan");
        Guarded {
            child,
            args,
            done: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `timeout`; panics (and the guard kills the child) if it is still running then.
    pub fn wait_for(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.done = true;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("plan {} still running after {timeout:?}", self.args);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if !self.done {
            self.kill9();
        }
    }
}

/// Reads a pipe to the end on a thread; `collect` waits at most a few seconds for it.
pub(crate) struct Drain(mpsc::Receiver<Vec<u8>>);

impl Drain {
    pub fn start(mut pipe: impl Read + Send + 'static) -> Drain {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        Drain(rx)
    }

    pub fn collect(self) -> String {
        let bytes = self
            .0
            .recv_timeout(Duration::from_secs(10))
            .expect("a pipe of plan stayed open 10 s after it exited (a child process holds it)");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

pub(crate) struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    pub fn show(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `plan ARGS` in `dir` to completion, at most `timeout`.
pub(crate) fn run_plan(dir: &Path, args: &[&str], timeout: Duration) -> Ran {
    run_cmd(plan_cmd(dir, args), timeout)
}

pub(crate) fn run_cmd(mut cmd: Command, timeout: Duration) -> Ran {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = Guarded::spawn(cmd);
    let out = Drain::start(child.child.stdout.take().expect("stdout"));
    let err = Drain::start(child.child.stderr.take().expect("stderr"));
    let status = child.wait_for(timeout);
    Ran {
        code: status.code(),
        elapsed: start.elapsed(),
        stdout: out.collect(),
        stderr: err.collect(),
    }
}

/// A running `plan apply --output json` whose stdout lines arrive one by one (stderr is discarded).
pub(crate) struct Live {
    pub proc: Guarded,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Live {
    pub fn start(mut cmd: Command) -> Live {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut proc = Guarded::spawn(cmd);
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Live {
            proc,
            lines,
            seen: Vec::new(),
        }
    }

    /// `wait_event` that must succeed: a kill point that was never reached (the apply exited first) would
    /// otherwise turn the scenario into one without a kill.
    pub fn expect_event(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&Json) -> bool,
        extra: impl FnMut() -> bool,
    ) {
        if !self.wait_event(timeout, pred, extra) {
            panic!(
                "the apply exited before the awaited event; events:\n{}",
                self.seen.join("\n")
            );
        }
    }

    /// Waits (at most `timeout`) for an event for which `pred` holds; also checks `extra` on every poll.
    /// Returns false if the stream ended first; panics at the timeout.
    #[must_use = "false means the apply exited before the event: use expect_event, or handle it"]
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Json) -> bool,
        mut extra: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut matched = false;
        loop {
            if matched && extra() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "no matching event within {timeout:?}; events so far:\n{}",
                    self.seen.join("\n")
                );
            }
            match self
                .lines
                .recv_timeout((deadline - now).min(Duration::from_millis(20)))
            {
                Ok(line) => {
                    let event: Json = serde_json::from_str(&line).unwrap_or(Json::Null);
                    if !event.is_null() {
                        crate::event_schema::check_event(&event);
                    }
                    self.seen.push(line);
                    if !matched && pred(&event) {
                        matched = true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if matched {
                        // The stream ended (plan exited); keep checking `extra` until the deadline.
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    return false;
                }
            }
        }
    }

    pub fn kill9(mut self) -> Vec<String> {
        self.proc.kill9();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        self.seen
    }
}

/// The run id named by the first event of an apply's JSON output (e.g. the lines a killed apply printed).
pub(crate) fn run_id(lines: &[String]) -> String {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find_map(|e| e["run"].as_str().map(str::to_string))
        .expect("run id")
}

/// Every line of stdout as JSON, each checked against docs/events.schema.json (panics naming the first line
/// that is not JSON or not a valid event).
pub(crate) fn events(stdout: &str) -> Vec<Json> {
    stdout
        .lines()
        .map(|l| {
            let event = serde_json::from_str::<Json>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n--- stdout\n{stdout}"));
            crate::event_schema::check_event(&event);
            event
        })
        .collect()
}

pub(crate) fn has_event(events: &[Json], kind: &str, step: Option<&str>) -> bool {
    events
        .iter()
        .any(|e| e["event"] == kind && step.is_none_or(|s| e["step"] == s))
}

/// `plan status --output json` of the latest run (or `--run ID`).
pub(crate) fn status_json(dir: &Path, plan: &str, run: Option<&str>) -> Json {
    let mut args = vec!["status", plan, "--output", "json"];
    if let Some(r) = run {
        args.extend(["--run", r]);
    }
    let ran = run_plan(dir, &args, Duration::from_secs(20));
    assert_eq!(ran.code, Some(0), "plan status:\n{}", ran.show());
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("status json: {e}\n{}", ran.show()))
}

/// The state files under `<dir>/.sortie/state/<plan>/*/state.json`.
pub(crate) fn state_files(dir: &Path, plan: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join(".sortie/state").join(plan))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("state.json"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits (bounded) until a run of `plan` has a state file, and returns its run id.
pub(crate) fn wait_for_run(dir: &Path, plan: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(path) = state_files(dir, plan).first() {
            // The file is written atomically (rename), so once it exists it parses.
            return path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .expect("run dir");
        }
        assert!(
            Instant::now() < deadline,
            "no state file for plan {plan} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose environment has SORTIE_HOME inside `dir` (the run's hosts), zombies excluded.
pub(crate) fn processes_in(dir: &Path) -> Vec<String> {
    let mut prefixes = vec![dir.to_string_lossy().into_owned()];
    if let Ok(c) = dir.canonicalize() {
        prefixes.push(c.to_string_lossy().into_owned());
    }
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let home = environ
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"SORTIE_HOME="))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let Some(home) = home else { continue };
        if !prefixes.iter().any(|p| home.starts_with(p.as_str())) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("Z");
        if state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        found.push(format!("pid {name} [{state}]: {}", cmdline.trim()));
    }
    found
}

/// Waits up to `timeout` for every process of the run to be gone; returns those still there.
pub(crate) fn leftover_processes(dir: &Path, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = processes_in(dir);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills (by pid) whatever a test's runs left behind, so a failing test does not leak sleepers.
pub(crate) struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for line in processes_in(&self.0) {
            if let Some(pid) = line
                .strip_prefix("pid ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A test directory with the plan written to `file`, and a reaper for its processes.
pub(crate) fn sandbox(file: &str, plan: &str) -> (Test, Reaper) {
    let t = Test::new().file(file, plan);
    let reaper = Reaper(t.dir.path().to_path_buf());
    (t, reaper)
}

fn list_dir(path: &Path) -> Vec<String> {
    std::fs::read_dir(path)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

const MINUTE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------------
// Failure handling

const DIAMOND_FAILS: &str = "plan: diamond
target: { provider: local }
steps:
  host: { kind: instance }
  a: { kind: run, on: host, run: echo a }
  b: { kind: run, on: host, needs: [a], run: 'echo about to fail; exit 3' }
  c: { kind: run, on: host, needs: [a], run: echo c }
  d: { kind: run, on: host, needs: [b, c], run: echo d }
  e: { kind: run, on: host, needs: [d], run: echo e }
  teardown: { kind: teardown, when: always }
";

#[test]
fn test_e2e_failed_branch_skips_dependents_and_still_tears_down() {
    let (t, _reaper) = sandbox("p.yaml", DIAMOND_FAILS);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    let status = status_json(dir, "p.yaml", None);
    let s = &status["steps"];
    assert_eq!(status["status"], "failed", "{status:#}");
    for (id, want) in [
        ("host", "succeeded"),
        ("a", "succeeded"),
        ("b", "failed"),
        ("c", "succeeded"),
        ("d", "skipped"),
        ("e", "skipped"),
        ("teardown", "succeeded"),
    ] {
        assert_eq!(s[id]["status"], want, "step {id}: {status:#}");
    }
    let error = s["b"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exit code 3") && error.contains("about to fail"),
        "b's error: {error:?}"
    );
    assert!(
        list_dir(&dir.join(".sortie/hosts")).is_empty(),
        "teardown left hosts"
    );
    let roots: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with("root cause: "))
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "root cause lines: {roots:?}\n{}",
        ran.show()
    );
    assert!(
        roots[0].starts_with("root cause: step `b` failed"),
        "{roots:?}"
    );
    assert!(leftover_processes(dir, Duration::from_secs(5)).is_empty());
}

#[test]
fn test_e2e_retry_then_success() {
    let plan = "plan: retry
target: { provider: local }
steps:
  host: { kind: instance }
  flaky:
    kind: run
    on: host
    retries: 2
    backoff: 100ms
    run: |
      n=$(cat \"$COUNTER\" 2>/dev/null || echo 0)
      n=$((n + 1)); echo $n > \"$COUNTER\"
      if [ $n -lt 2 ]; then echo \"failing attempt $n\"; exit 1; fi
      echo \"ok on attempt $n\"
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let mut cmd = plan_cmd(dir, &["apply", "p.yaml", "--output", "json"]);
    cmd.env("COUNTER", dir.join("counter"));
    let ran = run_cmd(cmd, MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let evs = events(&ran.stdout);
    let retry = evs
        .iter()
        .find(|e| e["event"] == "step_retry" && e["step"] == "flaky")
        .unwrap_or_else(|| panic!("no step_retry event\n{}", ran.show()));
    assert_eq!(retry["attempt"], 2, "{retry}");
    assert!(
        retry["error"]
            .as_str()
            .unwrap_or_default()
            .contains("exit code 1"),
        "{retry}"
    );
    assert!(
        retry["delay_secs"].as_f64().is_some_and(|d| d < 1.0),
        "{retry}"
    );
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(
        status["steps"]["flaky"]["status"], "succeeded",
        "{status:#}"
    );
    assert_eq!(status["steps"]["flaky"]["attempt"], 2, "{status:#}");
    assert_eq!(
        std::fs::read_to_string(dir.join("counter"))
            .expect("counter")
            .trim(),
        "2"
    );
}

#[test]
fn test_e2e_step_timeout_kills_the_whole_group() {
    let plan = "plan: slow
target: { provider: local }
steps:
  host: { kind: instance }
  slow:
    kind: run
    on: host
    timeout: 1s
    run: |
      sleep 60 &
      echo started
      sleep 30
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        ran.elapsed < Duration::from_secs(10),
        "a 1 s timeout took {:?}",
        ran.elapsed
    );
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(status["steps"]["slow"]["status"], "failed", "{status:#}");
    let error = status["steps"]["slow"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("timed out"), "error: {error:?}");
    // The sandbox is kept (no teardown), but nothing of the step may run on: not the script, not its grandchild.
    let left = leftover_processes(dir, Duration::from_secs(3));
    assert!(left.is_empty(), "processes left: {left:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Output, locking, state files

#[test]
fn test_e2e_json_output_is_one_event_per_line() {
    let plan = "plan: json
target: { provider: local }
steps:
  host: { kind: instance }
  produce: { kind: run, on: host, run: 'echo \"rows=7\" >> \"$SORTIE_OUTPUT\"; echo hello' }
  consume: { kind: run, on: host, run: 'test {{ steps.produce.outputs.rows }} = 7' }
  teardown: { kind: teardown }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml", "--output", "json"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let evs = events(&ran.stdout);
    for kind in [
        "run_started",
        "step_started",
        "step_output",
        "step_finished",
        "run_finished",
    ] {
        assert!(
            has_event(&evs, kind, None),
            "no {kind} event\n{}",
            ran.show()
        );
    }
    assert_eq!(
        evs.first().map(|e| &e["event"]),
        Some(&Json::from("run_started"))
    );
    // Every event names its run and when it was emitted (RFC 3339), so a CI log says when a step started.
    let run = evs[0]["run"].as_str().expect("run id");
    let mut previous = None;
    for e in &evs {
        assert_eq!(e["run"], run, "{e}");
        let ts = e["ts"].as_str().unwrap_or_else(|| panic!("no ts: {e}"));
        let at = humantime::parse_rfc3339(ts).unwrap_or_else(|err| panic!("ts {ts}: {err}"));
        assert!(previous.is_none_or(|p| p <= at), "out of order: {e}");
        previous = Some(at);
    }
    let last = evs.last().expect("events");
    assert_eq!(last["event"], "run_finished", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");
    assert_eq!(last["status"], "succeeded", "{last}");
    assert!(
        evs.iter().any(|e| e["event"] == "step_output"
            && e["step"] == "produce"
            && e["key"] == "rows"
            && e["value"] == "7"),
        "{}",
        ran.show()
    );
    for id in ["host", "produce", "consume", "teardown"] {
        assert!(
            evs.iter().any(|e| e["event"] == "step_finished"
                && e["step"] == id
                && e["status"] == "succeeded"),
            "no successful step_finished for {id}\n{}",
            ran.show()
        );
    }

    // A failing run says so in its last event too.
    let (t, _reaper) = sandbox("p.yaml", DIAMOND_FAILS);
    let ran = run_plan(
        t.dir.path(),
        &["apply", "p.yaml", "--output", "json"],
        MINUTE,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    let evs = events(&ran.stdout);
    let last = evs.last().expect("events");
    assert_eq!(last["event"], "run_finished", "{last}");
    assert_eq!(last["exit_code"], 1, "{last}");
}

#[test]
fn test_e2e_second_apply_of_a_running_run_is_locked_out() {
    let plan = "plan: locked
target: { provider: local }
steps:
  host: { kind: instance }
  nap: { kind: run, on: host, run: 'echo x >> \"$MARKERS/nap\"; sleep 3' }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    std::fs::create_dir(dir.join("m")).expect("mkdir");
    let mut first = plan_cmd(dir, &["apply", "p.yaml"]);
    first.env("MARKERS", dir.join("m"));
    first.stdout(Stdio::null()).stderr(Stdio::null());
    let mut first = Guarded::spawn(first);
    let run = wait_for_run(dir, "locked", Duration::from_secs(20));
    for args in [
        vec!["apply", "p.yaml", "--run", run.as_str()],
        vec!["apply", "p.yaml"],
    ] {
        let mut cmd = plan_cmd(dir, &args);
        cmd.env("MARKERS", dir.join("m"));
        let second = run_cmd(cmd, Duration::from_secs(20));
        assert_eq!(second.code, Some(3), "plan {args:?}:\n{}", second.show());
        assert!(
            second.stderr.contains(&format!("pid {}", first.pid())),
            "the holder (pid {}) is not named:\n{}",
            first.pid(),
            second.show()
        );
        assert!(second.stderr.contains(&run), "{}", second.show());
    }
    let code = first.wait_for(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.join("m/nap")).expect("marker"),
        "x\n",
        "the step ran more than once"
    );
    assert_eq!(
        state_files(dir, "locked").len(),
        1,
        "a second run was created"
    );
}

#[test]
fn test_e2e_corrupt_state_file_is_reported_and_left_untouched() {
    let plan = "plan: corrupt
target: { provider: local }
steps:
  host: { kind: instance }
  a: { kind: run, on: host, run: echo a }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let path = state_files(dir, "corrupt").pop().expect("state file");
    let run = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .expect("run");
    let good = std::fs::read(&path).expect("state");
    let rel = format!(".sortie/state/corrupt/{run}/state.json");
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"\x00\xffnot json at all\n".to_vec()),
        ("wrong shape", b"{\"version\": 1}\n".to_vec()),
    ];
    for (what, bytes) in variants {
        std::fs::write(&path, &bytes).expect("write");
        for args in [
            vec!["apply", "p.yaml"],
            vec!["apply", "p.yaml", "--run", run.as_str()],
            vec!["status", "p.yaml"],
            vec!["status", "p.yaml", "--output", "json"],
        ] {
            let ran = run_plan(dir, &args, Duration::from_secs(20));
            assert_eq!(
                ran.code,
                Some(2),
                "{what} state, plan {args:?}:\n{}",
                ran.show()
            );
            assert!(
                ran.stderr.contains(&rel),
                "{what} state, plan {args:?}: the message does not name {rel}:\n{}",
                ran.show()
            );
            assert_eq!(
                std::fs::read(&path).expect("state"),
                bytes,
                "{what} state was changed by plan {args:?}"
            );
        }
    }
    assert_eq!(
        state_files(dir, "corrupt").len(),
        1,
        "a new run was started"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Re-running: preview, changed steps, --from

const CHAIN: &str = "plan: pv
target: { provider: local }
steps:
  host: { kind: instance }
  a: { kind: run, on: host, run: 'echo a >> \"$MARKERS/a\"' }
  b: { kind: run, on: host, needs: [a], run: 'echo b >> \"$MARKERS/b\"' }
  c: { kind: run, on: host, needs: [a], run: 'echo c >> \"$MARKERS/c\"' }
  d: { kind: run, on: host, needs: [b], run: 'echo d >> \"$MARKERS/d\"' }
";

fn preview_actions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

fn marker_lines(dir: &Path, step: &str) -> usize {
    std::fs::read_to_string(dir.join(step))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn test_e2e_preview_rerun_and_from() {
    let (t, _reaper) = sandbox("p.yaml", CHAIN);
    let dir = t.dir.path();
    let markers = dir.join("m");
    std::fs::create_dir(&markers).expect("mkdir");
    let apply = |args: &[&str]| {
        let mut cmd = plan_cmd(dir, args);
        cmd.env("MARKERS", &markers);
        let ran = run_cmd(cmd, MINUTE);
        assert_eq!(ran.code, Some(0), "plan {args:?}:\n{}", ran.show());
        ran
    };
    let preview = |args: &[&str]| {
        let ran = run_plan(dir, args, Duration::from_secs(20));
        assert_eq!(ran.code, Some(0), "plan {args:?}:\n{}", ran.show());
        ran.stdout
    };
    let counts = || -> Vec<usize> {
        ["a", "b", "c", "d"]
            .map(|s| marker_lines(&markers, s))
            .to_vec()
    };
    apply(&["apply", "p.yaml"]);
    assert_eq!(counts(), [1, 1, 1, 1]);
    let run = state_files(dir, "pv")
        .pop()
        .and_then(|p| {
            p.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .expect("run");

    let text = preview(&["preview", "p.yaml", "--run", &run]);
    assert!(
        text.starts_with(&format!("plan pv: continuing run {run}\n")),
        "{text}"
    );
    let actions = preview_actions(&text);
    assert_eq!(actions.len(), 5, "{text}");
    assert!(actions.iter().all(|(_, a)| a == "skip"), "{text}");

    // Edit b: b and its descendant d rerun, the rest is skipped.
    let edited = CHAIN.replace("echo b >>", "echo B >>");
    std::fs::write(dir.join("p.yaml"), &edited).expect("write");
    let text = preview(&["preview", "p.yaml", "--run", &run]);
    let want: Vec<(String, String)> = [
        ("host", "skip"),
        ("a", "skip"),
        ("b", "rerun"),
        ("c", "skip"),
        ("d", "rerun"),
    ]
    .iter()
    .map(|(s, a)| (s.to_string(), a.to_string()))
    .collect();
    let mut got = preview_actions(&text);
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted, "{text}");
    assert_eq!(counts(), [1, 1, 1, 1], "preview ran something");

    // Applying the run again runs exactly those.
    apply(&["apply", "p.yaml", "--run", &run]);
    assert_eq!(counts(), [1, 2, 1, 2]);
    let text = preview(&["preview", "p.yaml", "--run", &run]);
    assert!(
        preview_actions(&text).iter().all(|(_, a)| a == "skip"),
        "{text}"
    );

    // --from b: b and d only, in the same run.
    apply(&["apply", "p.yaml", "--from", "b"]);
    assert_eq!(counts(), [1, 3, 1, 3]);
    // --from a: everything below the host.
    apply(&["apply", "p.yaml", "--from", "a"]);
    assert_eq!(counts(), [2, 4, 2, 4]);
    assert_eq!(state_files(dir, "pv").len(), 1, "--from started a new run");
    let status = status_json(dir, "p.yaml", None);
    assert_eq!(status["status"], "succeeded", "{status:#}");
    assert_eq!(status["steps"]["b"]["attempt"], 4, "{status:#}");
    assert_eq!(status["steps"]["host"]["attempt"], 1, "{status:#}");
}

// ---------------------------------------------------------------------------------------------------------------
// Injection, logs, runs, destroy

#[test]
fn test_e2e_interpolated_values_cannot_inject_commands() {
    let (t, _reaper) = sandbox("p.yaml", "");
    let dir = t.dir.path();
    let pwned = dir.join("pwned");
    let pwned2 = dir.join("pwned2");
    let pwned3 = dir.join("pwned3");
    let x = format!("$(touch {}); echo", pwned.display());
    let y = format!("'; touch {}; echo '", pwned2.display());
    let z = format!("`touch {}` \"$HOME\"", pwned3.display());
    let plan = "plan: inj
target: { provider: local }
vars: { x: '', y: '', z: '' }
steps:
  host: { kind: instance }
  say:
    kind: run
    on: host
    run: |
      echo {{ vars.x }}
      echo {{ vars.y }}
      echo {{ vars.z }}
";
    std::fs::write(dir.join("p.yaml"), plan).expect("write");
    let ran = run_plan(
        dir,
        &[
            "apply",
            "p.yaml",
            "--var",
            &format!("x={x}"),
            "--var",
            &format!("y={y}"),
            "--var",
            &format!("z={z}"),
        ],
        MINUTE,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    for p in [&pwned, &pwned2, &pwned3] {
        assert!(
            !p.exists(),
            "{} was created: a value ran as a command",
            p.display()
        );
    }
    let logs = run_plan(dir, &["logs", "p.yaml", "say"], Duration::from_secs(20));
    assert_eq!(logs.code, Some(0), "{}", logs.show());
    assert_eq!(logs.stdout, format!("{x}\n{y}\n{z}\n"), "{}", logs.show());
}

/// The run id a `plan apply --output json` announced.
fn run_of(ran: &Ran) -> String {
    events(&ran.stdout)
        .iter()
        .find(|e| e["event"] == "run_started")
        .and_then(|e| e["run"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("no run_started event\n{}", ran.show()))
}

#[test]
fn test_e2e_logs_runs_and_destroy() {
    let plan = "plan: kept
target: { provider: local }
steps:
  host: { kind: instance }
  data: { kind: volume, attach_to: host, size: 1GiB, mount: /data }
  talk: { kind: run, on: host, needs: [data], run: 'echo line one; echo line two >&2; echo three > {{ steps.data.outputs.mount_path }}/f' }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let ran = run_plan(dir, &["apply", "p.yaml", "--output", "json"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let run = run_of(&ran);

    let logs = run_plan(dir, &["logs", "p.yaml", "talk"], Duration::from_secs(20));
    assert_eq!(logs.code, Some(0), "{}", logs.show());
    assert_eq!(logs.stdout, "line one\nline two\n");
    let logs = run_plan(
        dir,
        &["logs", "p.yaml", "talk", "--run", &run, "--follow"],
        Duration::from_secs(20),
    );
    assert_eq!(logs.code, Some(0), "{}", logs.show());
    assert_eq!(logs.stdout, "line one\nline two\n");
    let logs = run_plan(dir, &["logs", "p.yaml", "nosuch"], Duration::from_secs(20));
    assert_eq!(logs.code, Some(2), "{}", logs.show());

    // A second run; `runs` lists both.
    let ran = run_plan(
        dir,
        &["apply", "p.yaml", "--new", "--output", "json"],
        MINUTE,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let run2 = run_of(&ran);
    assert_ne!(run, run2);
    let runs = run_plan(dir, &["runs", "p.yaml"], Duration::from_secs(20));
    assert_eq!(runs.code, Some(0), "{}", runs.show());
    let lines: Vec<&str> = runs.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", runs.show());
    assert!(lines[0].starts_with("RUN"), "{}", runs.show());
    for r in [&run, &run2] {
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.starts_with(r.as_str()) && l.contains("succeeded")),
            "run {r} is not listed as succeeded:\n{}",
            runs.show()
        );
    }

    // No teardown: both sandboxes are kept until destroyed.
    let hosts = dir.join(".sortie/hosts");
    let mut kept = list_dir(&hosts);
    kept.sort();
    let mut want = vec![format!("{run}-host"), format!("{run2}-host")];
    want.sort();
    assert_eq!(kept, want);
    for attempt in 1..=2 {
        let ran = run_plan(
            dir,
            &["destroy", "p.yaml", "--run", &run],
            Duration::from_secs(30),
        );
        assert_eq!(ran.code, Some(0), "destroy #{attempt}:\n{}", ran.show());
        assert_eq!(
            list_dir(&hosts),
            [format!("{run2}-host")],
            "destroy #{attempt}"
        );
    }
    let status = status_json(dir, "p.yaml", Some(&run));
    assert_eq!(status["status"], "destroyed", "{status:#}");
    for id in ["host", "data"] {
        let resources = status["steps"][id]["resources"]
            .as_array()
            .expect("resources");
        assert!(
            !resources.is_empty() && resources.iter().all(|r| r["destroyed"] == true),
            "{status:#}"
        );
    }
    let ran = run_plan(
        dir,
        &["destroy", "p.yaml", "--run", &run2],
        Duration::from_secs(30),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(list_dir(&hosts).is_empty(), "{:?}", list_dir(&hosts));
    assert!(leftover_processes(dir, Duration::from_secs(3)).is_empty());
}

/// Runs started in the same second: the latest is still the one started last (status, logs, destroy and
/// apply act on "the latest run" by default; `runs` lists oldest first).
#[test]
fn test_e2e_latest_run_is_the_one_started_last() {
    let plan = "plan: ids
target: { provider: local }
steps:
  host: { kind: instance }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let dir = t.dir.path();
    let mut started = Vec::new();
    for _ in 0..8 {
        let ran = run_plan(
            dir,
            &["apply", "p.yaml", "--new", "--output", "json"],
            MINUTE,
        );
        assert_eq!(ran.code, Some(0), "{}", ran.show());
        let run = run_of(&ran);
        let status = status_json(dir, "p.yaml", None);
        assert_eq!(
            status["run_id"], run.as_str(),
            "`plan status` shows run {} right after run {run} was started (runs so far: {started:?})",
            status["run_id"]
        );
        started.push(run);
    }
    let runs = run_plan(dir, &["runs", "p.yaml"], Duration::from_secs(20));
    let listed: Vec<&str> = runs
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, started, "`plan runs` is not oldest first");
}

/// Many steps start at once on a fresh host: each launch installs the host wrapper, and none may fail doing so.
#[test]
fn test_e2e_parallel_steps_on_a_fresh_host() {
    let mut plan = String::from(
        "plan: fan\ntarget: { provider: local }\nsteps:\n  host: { kind: instance }\n",
    );
    for i in 0..12 {
        plan.push_str(&format!(
            "  s{i}: {{ kind: run, on: host, run: 'echo {i}' }}\n"
        ));
    }
    plan.push_str("  teardown: { kind: teardown }\n");
    let (t, _reaper) = sandbox("p.yaml", &plan);
    let dir = t.dir.path();
    for round in 0..8 {
        let ran = run_plan(dir, &["apply", "p.yaml", "--new"], MINUTE);
        assert_eq!(ran.code, Some(0), "round {round}:\n{}", ran.show());
    }
}
