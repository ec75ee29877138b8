//! Every plan shipped in plans/ and examples/ validates.

use crate::test_builder::{repo, Test};

#[test]
fn test_e2e_every_shipped_plan_validates() {
    let mut checked = 0;
    for dir in ["plans", "examples"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let rel = path
                    .strip_prefix(repo())
                    .expect("in repo")
                    .to_string_lossy()
                    .to_string();
                let output = Test::new()
                    .current_dir(&repo())
                    .args(["validate", &rel])
                    .run();
                assert!(String::from_utf8_lossy(&output.stdout).contains("is valid"));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "expected at least two shipped plans, found {checked}"
    );
}

#[test]
fn test_e2e_mistral_plan_has_the_seed_pipeline_shape() {
    Test::new()
        .current_dir(&repo())
        .args(["graph", "plans/mistral-qlora.yaml"])
        .stdout(
            "plan mistral-qlora: 10 steps, 9 levels
level 0
  instance (instance)
level 1
  volume (volume) <- instance
level 2
  env (run) <- volume
level 3
  fetch-model (run) <- env
  prep-data (run) <- env
level 4
  preflight (run) <- fetch-model, prep-data
level 5
  train (run) <- preflight
level 6
  evaluate (run) <- train
level 7
  upload (run) <- evaluate
level 8
  teardown (teardown) <- upload
",
        )
        .run();
}
