//! Every plan under tests/fixtures/invalid/ fails `plan validate` with exit code 2 and exactly the stderr in
//! its `.stderr` file. `BLESS=1 cargo test` rewrites the expectations (review the diff before committing).

use std::path::Path;

use crate::test_builder::{repo, Test};
use crate::test_builder::{Deadline as _, DEADLINE};

fn check_fixture(dir: &Path, name: &str) -> Result<(), String> {
    let output = Test::new()
        .current_dir(dir)
        .args(["validate", name])
        .command()
        .output_within(DEADLINE)
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let expected_path = dir.join(name).with_extension("stderr");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected_path, &stderr).map_err(|e| e.to_string())?;
    }
    let expected = std::fs::read_to_string(&expected_path)
        .map_err(|e| format!("{name}: no .stderr file: {e}"))?;
    if output.status.code() != Some(2) {
        return Err(format!(
            "{name}: exit {:?}, expected 2\n{stderr}",
            output.status.code()
        ));
    }
    if !output.stdout.is_empty() {
        return Err(format!("{name}: unexpected stdout"));
    }
    if stderr != expected {
        return Err(format!(
            "{name}: stderr differs\n--- expected\n{expected}--- actual\n{stderr}"
        ));
    }
    if stderr.contains("panicked") {
        return Err(format!("{name}: panicked"));
    }
    Ok(())
}

#[test]
fn test_e2e_invalid_plans_report_exact_errors() {
    let dir = repo().join("tests/fixtures/invalid");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 40, "only {} invalid fixtures", names.len());
    let failures: Vec<String> = names
        .iter()
        .filter_map(|n| check_fixture(&dir, n).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

#[test]
fn test_e2e_huge_file_is_refused() {
    let mut text = String::from("plan: huge\nsteps:\n");
    while text.len() < 5 * 1024 * 1024 {
        text.push_str(
            "  # padding padding padding padding padding padding padding padding padding\n",
        );
    }
    Test::new()
        .file("huge.yaml", text)
        .args(["validate", "huge.yaml"])
        .status(2)
        .stderr(
            "error: the plan file is larger than 4 MiB; this cannot be a plan\n  --> huge.yaml\n",
        )
        .run();
}

#[test]
fn test_e2e_missing_file() {
    Test::new()
        .args(["validate", "nope.yaml"])
        .status(2)
        .stderr("error: cannot read plan file: No such file or directory (os error 2)\n  --> nope.yaml\n")
        .run();
}

#[test]
fn test_e2e_very_deep_nesting_does_not_crash() {
    let depth = 100_000;
    let text = format!(
        "plan: deep\nsteps: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let output = Test::new()
        .file("deep.yaml", text)
        .args(["validate", "deep.yaml"])
        .status(2)
        .run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: YAML is nested deeper than 64 levels\n"),
        "{stderr}"
    );
}

#[test]
fn test_e2e_bad_flag_exits_2() {
    let output = Test::new()
        .args(["validate", "--frobnicate", "x.yaml"])
        .status(2)
        .run();
    assert!(String::from_utf8_lossy(&output.stderr).contains("--frobnicate"));
}
