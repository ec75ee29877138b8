//! The fault campaign (issue 10 §10), on plans/mistral-qlora.yaml with its test var file against the test endpoint:
//! throttling and 5xx answers on a seeded tenth of all calls, and `kill -9` of `plan` at seeded points across the
//! apply (teardown included), each followed by applies until the run finishes. After every scenario: exactly one
//! instance and one volume were created, nothing of the run is left, the state reads back, and every step ran
//! once (attempt 1).
//!
//! CI runs the throttled apply and `SORTIE_FAULT_POINTS` kill points (default 3); `scripts/fault-campaign` runs 24
//! and prints the table kept in docs/RELIABILITY.md (`SORTIE_FAULT_REPORT` names the file the rows go to).

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use serde_json::Value;

use crate::apply::Live;
use crate::aws_endpoint::Endpoint;
use crate::aws_mistral::{mistral_apply_args, mistral_endpoint};
use crate::test_builder::{repo, Test};
use crate::test_builder::{Deadline as _, DEADLINE};

/// A small seeded generator (splitmix64): the same seed picks the same kill points on every machine.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

fn test(endpoint: &Endpoint) -> Test {
    Test::new()
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env())
}

fn apply(t: &Test) -> Command {
    let mut cmd = t.command();
    cmd.args(mistral_apply_args());
    cmd
}

/// What the endpoint counted for `op`, minus the calls a fault answered: the calls that took effect.
fn effective(endpoint: &Endpoint, op: &str) -> u64 {
    let calls = endpoint.calls()[op].as_u64().unwrap_or(0);
    let (_, body) = endpoint.http("GET", "/_sortie/faulted", None);
    let faulted: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    calls - faulted[op].as_u64().unwrap_or(0)
}

/// The run's state through `plan status` (it must read back), and the problems found with the run.
async fn problems(endpoint: &Endpoint, t: &Test, run: &str, creates: (u64, u64)) -> Vec<String> {
    let vars = repo().join("tests/fixtures/vars/mistral-on-test-endpoint.yaml");
    let out = t
        .command()
        .args([
            "status",
            &repo().join("plans/mistral-qlora.yaml").to_string_lossy(),
        ])
        .args(["--var-file", &vars.to_string_lossy(), "--run", run])
        .args(["--output", "json"])
        .output_within(DEADLINE)
        .expect("plan status");
    let mut found = Vec::new();
    let state: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "state does not read back ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )]
        }
    };
    if state["status"] != "succeeded" {
        found.push(format!("run is {}", state["status"]));
    }
    for (id, step) in state["steps"].as_object().into_iter().flatten() {
        if step["status"] != "succeeded" || step["attempt"] != 1 {
            found.push(format!(
                "{id}: {} at attempt {}",
                step["status"], step["attempt"]
            ));
        }
    }
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let tag = Filter::builder().name("tag:sortie:run").values(run).build();
    let described = ec2
        .describe_instances()
        .filters(tag.clone())
        .send()
        .await
        .expect("describe instances");
    let instances: Vec<String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let state = i.state().and_then(|s| s.name()).map(|n| n.as_str());
            format!(
                "{} {}",
                i.instance_id().unwrap_or("?"),
                state.unwrap_or("?")
            )
        })
        .collect();
    if instances.len() != 1 || !instances[0].ends_with(" terminated") {
        found.push(format!("instances of the run: {instances:?}"));
    }
    let volumes = ec2
        .describe_volumes()
        .filters(tag)
        .send()
        .await
        .expect("describe volumes");
    if !volumes.volumes().is_empty() {
        found.push(format!("{} volume(s) left", volumes.volumes().len()));
    }
    let made = (
        effective(endpoint, "ec2:RunInstances") - creates.0,
        effective(endpoint, "ec2:CreateVolume") - creates.1,
    );
    if made != (1, 1) {
        found.push(format!(
            "created {} instance(s), {} volume(s)",
            made.0, made.1
        ));
    }
    found
}

/// Appends a table row to `$SORTIE_FAULT_REPORT`, if set.
fn report(row: &str) {
    if let Some(path) = std::env::var_os("SORTIE_FAULT_REPORT") {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        writeln!(f, "{row}").expect("write report");
    }
}

/// Applies until the run finishes (at most 3 times); the exit code of the last and how many it took. With `run`,
/// that run is continued: a kill just after the run was recorded finished must not start another one.
fn finish(t: &Test, run: Option<&str>, log: &mut String) -> (Option<i32>, u32) {
    let mut last = None;
    for n in 1..=3 {
        let mut cmd = apply(t);
        if let Some(run) = run {
            cmd.args(["--run", run]);
        }
        let out = cmd.output_within(DEADLINE).expect("apply");
        log.push_str(&format!("\n--- apply {n}\n"));
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        last = out.status.code();
        if last == Some(0) {
            return (last, n);
        }
    }
    (last, 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_mistral_apply_completes_with_a_tenth_of_all_calls_throttled_or_failing() {
    let endpoint = mistral_endpoint().await;
    endpoint.http("DELETE", "/_sortie/calls", None);
    // A seeded tenth of every call fails: each service's own throttling answer, and 5xx from any of them.
    for (i, (action, code, status)) in [
        ("ec2:*", "RequestLimitExceeded", 503),
        ("ssm:*", "ThrottlingException", 400),
        ("s3:*", "SlowDown", 503),
        ("*", "InternalError", 500),
    ]
    .iter()
    .enumerate()
    {
        endpoint.add_fault(&format!(
            r#"{{"action":"{action}","rate":0.05,"seed":{},"times":-1,"error":{{"code":"{code}","message":"injected","status":{status}}}}}"#,
            1000 + i
        ));
    }
    let t = test(&endpoint);
    let started = Instant::now();
    let mut log = String::new();
    let (code, applies) = finish(&t, None, &mut log);
    let took = started.elapsed().as_secs_f64();
    let (_, body) = endpoint.http("GET", "/_sortie/faulted", None);
    let faulted: Value = serde_json::from_str(&body).expect("faulted");
    let failed: u64 = faulted
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let calls: u64 = endpoint
        .calls()
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    endpoint.http("DELETE", "/_sortie/faults", None);
    assert_eq!(code, Some(0), "{log}\n--- endpoint log\n{}", endpoint.log());
    let run = crate::apply::run_id(&log.lines().map(str::to_string).collect::<Vec<_>>());
    let found = problems(&endpoint, &t, &run, (0, 0)).await;
    report(&format!(
        "| throttling + 5xx, seeded | {failed} of {calls} calls failed | {applies} | {took:.0} s | {} |",
        if found.is_empty() { "pass".to_string() } else { found.join("; ") }
    ));
    assert!(found.is_empty(), "{found:#?}\n{log}");
    assert!(
        failed * 100 >= calls * 5,
        "only {failed} of {calls} calls failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_mistral_apply_killed_at_seeded_points_finishes_exactly_once() {
    let points: u64 = std::env::var("SORTIE_FAULT_POINTS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("SORTIE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    let endpoint = mistral_endpoint().await;
    let t = test(&endpoint);
    // A clean apply first: the events a run goes through, where the kill points are picked.
    let out = apply(&t).output_within(DEADLINE).expect("apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Value> = crate::apply::events(&String::from_utf8_lossy(&out.stdout));
    let teardown = reference
        .iter()
        .position(|e| e["event"] == "step_started" && e["step"] == "teardown")
        .expect("teardown starts");
    let mut rng = Seeded(seed);
    let mut failures = Vec::new();
    for k in 0..points {
        // One point in four lies inside the teardown.
        let at = if k % 4 == 3 {
            teardown + rng.below((reference.len() - 1 - teardown) as u64) as usize
        } else {
            1 + rng.below((reference.len() - 2) as u64) as usize
        };
        let delay = Duration::from_millis(rng.below(400));
        let what = format!(
            "{} {}",
            reference[at]["event"].as_str().unwrap_or("?"),
            reference[at]["step"].as_str().unwrap_or("")
        );
        let creates = (
            effective(&endpoint, "ec2:RunInstances"),
            effective(&endpoint, "ec2:CreateVolume"),
        );
        let started = Instant::now();
        let mut live = Live::start(apply(&t));
        let mut seen = 0usize;
        let reached = live.wait_event(
            Duration::from_secs(180),
            |_| {
                seen += 1;
                seen > at
            },
            || true,
        );
        std::thread::sleep(delay);
        let first = live.kill9();
        let run = crate::apply::run_id(&first);
        let mut log = first.join("\n");
        let (code, applies) = finish(&t, Some(&run), &mut log);
        let took = started.elapsed().as_secs_f64();
        let mut found = problems(&endpoint, &t, &run, creates).await;
        if code != Some(0) {
            found.push(format!("the applies after the kill ended with {code:?}"));
        }
        if !reached {
            found.push("the apply ended before the kill point".into());
        }
        report(&format!(
            "| kill -9 #{} | after event {at} ({what}) + {} ms | {applies} | {took:.0} s | {} |",
            k + 1,
            delay.as_millis(),
            if found.is_empty() {
                "pass".to_string()
            } else {
                found.join("; ")
            }
        ));
        if !found.is_empty() {
            failures.push(format!("point {} ({what}): {found:?}\n{log}", k + 1));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
