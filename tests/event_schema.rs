//! docs/events.schema.json: every `--output json` event the tests parse is checked against it (`check_event`,
//! called by the shared `events` helpers), and one apply covers the common events line by line.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value as Json};

use crate::apply::{events, plan_cmd, run_cmd, sandbox};
use crate::test_builder::repo;

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let text = std::fs::read_to_string(repo().join("docs/events.schema.json"))
            .expect("docs/events.schema.json");
        let schema: Json = serde_json::from_str(&text).expect("docs/events.schema.json is JSON");
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("docs/events.schema.json is not a JSON Schema: {e}"))
    })
}

/// The ways `event` breaks docs/events.schema.json (none when it validates).
fn violations(event: &Json) -> Vec<String> {
    validator()
        .iter_errors(event)
        .map(|e| format!("{e} (at `{}`)", e.instance_path()))
        .collect()
}

/// Panics, naming the event and each violation, unless it validates against docs/events.schema.json.
pub(crate) fn check_event(event: &Json) {
    let found = violations(event);
    assert!(
        found.is_empty(),
        "event does not match docs/events.schema.json: {event}\n{}",
        found.join("\n")
    );
}

#[test]
fn test_int_event_schema_rejects_what_sortie_never_emits() {
    let good = json!({"event": "step_started", "step": "a", "attempt": 1,
                      "run": "20261201-063121-123-0f", "ts": "2026-12-01T06:31:21.123Z"});
    assert!(violations(&good).is_empty(), "{:?}", violations(&good));
    let early_notice = json!({"event": "notice", "message": "m", "ts": "2026-12-01T06:31:21.123Z"});
    assert!(violations(&early_notice).is_empty());
    let with = |key: &str, value: Json| {
        let mut e = good.clone();
        if let Some(o) = e.as_object_mut() {
            match value {
                Json::Null => o.remove(key),
                v => o.insert(key.into(), v),
            };
        }
        e
    };
    for (what, bad) in [
        ("no ts", with("ts", Json::Null)),
        (
            "ts without milliseconds",
            with("ts", json!("2026-12-01T06:31:21Z")),
        ),
        (
            "ts not in UTC",
            with("ts", json!("2026-12-01T06:31:21.123+01:00")),
        ),
        ("a run that is no run id", with("run", json!("latest"))),
        ("an unknown field", with("host", json!("x"))),
        ("an unknown event", with("event", json!("step_exploded"))),
        ("a missing event field", with("attempt", Json::Null)),
        ("a field of the wrong type", with("attempt", json!("1"))),
    ] {
        assert!(!violations(&bad).is_empty(), "{what} was accepted: {bad}");
    }
    let no_run = json!({"event": "run_finished", "status": "succeeded", "exit_code": 0,
                        "ts": "2026-12-01T06:31:21.123Z"});
    assert!(
        !violations(&no_run).is_empty(),
        "run_finished needs its run"
    );
}

#[test]
fn test_e2e_every_json_event_matches_the_schema() {
    let plan = "plan: events
target: { provider: local }
steps:
  host: { kind: instance }
  produce: { kind: run, on: host, run: 'echo \"rows=7\" >> \"$SORTIE_OUTPUT\"' }
  flaky:
    kind: run
    on: host
    retries: 1
    backoff: 50ms
    run: |
      if [ -e \"$SORTIE_HOME/tried\" ]; then exit 0; fi
      touch \"$SORTIE_HOME/tried\"; exit 1
  broken: { kind: run, on: host, needs: [produce, flaky], run: 'echo bad; exit 3' }
";
    let (t, _reaper) = sandbox("p.yaml", plan);
    let ran = run_cmd(
        plan_cmd(t.dir.path(), &["apply", "p.yaml", "--output", "json"]),
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    // `events` validates each line; checking here too keeps this test honest if that helper changes.
    let evs = events(&ran.stdout);
    let kinds: Vec<&str> = evs.iter().filter_map(|e| e["event"].as_str()).collect();
    for kind in [
        "run_started",
        "step_started",
        "step_output",
        "step_retry",
        "step_finished",
        "run_finished",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event\n{}", ran.show());
    }
    let run = evs[0]["run"].as_str().expect("run_started names the run");
    let mut previous = None;
    for e in &evs {
        check_event(e);
        assert_eq!(e["run"], run, "every event names the run: {e}");
        let ts = e["ts"].as_str().unwrap_or_else(|| panic!("no ts: {e}"));
        let at = humantime::parse_rfc3339(ts).unwrap_or_else(|err| panic!("ts {ts}: {err}"));
        assert!(previous.is_none_or(|p| p <= at), "ts went back: {e}");
        previous = Some(at);
    }
    let failed = evs
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "broken")
        .unwrap_or_else(|| panic!("no step_finished for broken\n{}", ran.show()));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("exit code 3")),
        "{failed}"
    );
    assert_eq!(
        evs.last().map(|e| &e["event"]),
        Some(&json!("run_finished"))
    );
}

#[test]
fn test_int_events_md_examples_match_the_schema() {
    let doc = std::fs::read_to_string(repo().join("docs/EVENTS.md")).expect("docs/EVENTS.md");
    let examples: Vec<Json> = doc
        .lines()
        .filter(|l| l.starts_with("{\"event\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for e in &examples {
        check_event(e);
    }
    let schema: Json = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/events.schema.json")).expect("schema"),
    )
    .expect("schema JSON");
    let kinds: Vec<&str> = schema["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .filter_map(|v| v["properties"]["event"]["const"].as_str())
        .collect();
    assert_eq!(kinds.len(), 11, "{kinds:?}");
    for kind in kinds {
        assert!(
            examples.iter().any(|e| e["event"] == kind),
            "docs/EVENTS.md has no example of {kind}"
        );
    }
}
