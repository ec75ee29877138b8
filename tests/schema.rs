//! `plan schema` and `plan completions`.

use crate::test_builder::{repo, Test};

#[test]
fn test_e2e_schema_describes_the_plan_format() {
    let output = Test::new().args(["schema"]).run();
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).expect("schema is JSON");
    assert_eq!(schema["title"], "sortie plan");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(required, ["plan", "steps"]);
    assert_eq!(schema["additionalProperties"], false);
    let step = &schema["$defs"]["RawStep"];
    assert_eq!(step["additionalProperties"], false);
    for field in [
        "kind",
        "needs",
        "when",
        "timeout",
        "retries",
        "env",
        "on",
        "detach",
        "lock",
        "heartbeat",
        "script",
        "run",
    ] {
        assert!(
            step["properties"].get(field).is_some(),
            "schema lacks step field {field}"
        );
    }
}

#[test]
fn test_e2e_checked_in_schema_is_current() {
    let output = Test::new().args(["schema"]).run();
    let checked_in = std::fs::read_to_string(repo().join("docs/plan.schema.json"))
        .expect("docs/plan.schema.json");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        checked_in,
        "docs/plan.schema.json is stale: run `plan schema > docs/plan.schema.json`"
    );
}

#[test]
fn test_e2e_checked_in_events_schema_is_current() {
    let output = Test::new().args(["schema", "--events"]).run();
    let printed = String::from_utf8_lossy(&output.stdout);
    let schema: serde_json::Value = serde_json::from_str(&printed).expect("schema is JSON");
    assert_eq!(schema["title"], "sortie event");
    assert_eq!(schema["required"], serde_json::json!(["ts"]));
    let checked_in = std::fs::read_to_string(repo().join("docs/events.schema.json"))
        .expect("docs/events.schema.json");
    assert_eq!(
        printed, checked_in,
        "docs/events.schema.json is stale: run `plan schema --events > docs/events.schema.json`"
    );
}

#[test]
fn test_e2e_completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = Test::new().args(["completions", shell]).run();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.contains("validate") && text.contains("graph"),
            "{shell} completions lack subcommands"
        );
    }
    Test::new().args(["completions", "tcsh"]).status(2).run();
}
