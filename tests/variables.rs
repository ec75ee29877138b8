//! Variable precedence through the real binary: plan < --var-file < --var < SORTIE_VAR_<key>.

use crate::test_builder::Test;

const PLAN: &str = "plan: vars
description: 'region={{ vars.region }} size={{ vars.size }} zone={{ vars.zone }}'
vars: { region: plan, size: plan, zone: plan }
steps:
  host: { kind: instance }
";

#[test]
fn test_e2e_variable_precedence() {
    // The description is rendered at compile time; a bad var shows up in `validate`.
    Test::new()
        .file("p.yaml", PLAN)
        .file("v.yaml", "region: file\nsize: file\nzone: file\n")
        .args([
            "validate",
            "p.yaml",
            "--var-file",
            "v.yaml",
            "--var",
            "size=cli",
            "--var",
            "zone=cli",
        ])
        .env("SORTIE_VAR_zone", "env")
        .stdout("p.yaml: plan `vars` is valid (1 steps, 1 levels, target local)\n")
        .run();
}

#[test]
fn test_e2e_undeclared_cli_variable_is_an_error() {
    Test::new()
        .file("p.yaml", PLAN)
        .args(["validate", "p.yaml", "--var", "regon=x"])
        .status(2)
        .stderr("error: variable `regon` is not declared in the plan's `vars` (p.yaml)\n  --> --var: regon\n   = help: did you mean `region`?\n")
        .run();
}

#[test]
fn test_e2e_malformed_var_flag() {
    let output = Test::new()
        .file("p.yaml", PLAN)
        .args(["validate", "p.yaml", "--var", "novalue"])
        .status(2)
        .run();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("`novalue` is not of the form key=value")
    );
}

#[test]
fn test_e2e_var_file_errors_name_the_file() {
    Test::new()
        .file("p.yaml", PLAN)
        .file("v.yaml", "region: [unclosed\n")
        .args(["validate", "p.yaml", "--var-file", "v.yaml"])
        .status(2)
        .stderr(
            "error: invalid YAML: while parsing a flow sequence, expected ',' or ']'
 --> v.yaml:2:1
  |
2 | 
  | ^
",
        )
        .run();
}
