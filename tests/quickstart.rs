//! examples/quickstart.yaml end to end: the Mistral pipeline's steps, templates and programs (pipeline/) on the
//! local target, with the bundled corpus and model and the tiny trainer. The test directory mirrors the repo's
//! layout (examples/, templates/, pipeline/) because the plan ships `../pipeline` and uses `../templates`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::apply::{leftover_processes, plan_cmd, run_plan, status_json, Live, Reaper};
use crate::test_builder::{repo, Test};
use crate::test_builder::{Deadline as _, DEADLINE};

const MINUTE: Duration = Duration::from_secs(60);

pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let name = entry.file_name();
        if name == "__pycache__" || name == ".sortie" || name == ".pytest_cache" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

/// A test directory with the repo's examples/quickstart.yaml (edited by `edit`), templates/ and pipeline/.
fn quickstart(edit: impl Fn(String) -> String) -> (Test, Reaper, PathBuf) {
    let t = Test::new();
    let root = t.dir.path().to_path_buf();
    copy_tree(&repo().join("templates"), &root.join("templates"));
    copy_tree(&repo().join("pipeline"), &root.join("pipeline"));
    let source =
        std::fs::read_to_string(repo().join("examples/quickstart.yaml")).expect("quickstart");
    std::fs::create_dir_all(root.join("examples")).expect("mkdir");
    std::fs::write(root.join("examples/quickstart.yaml"), edit(source)).expect("write plan");
    let reaper = Reaper(root.clone());
    (t, reaper, root.join("examples"))
}

fn output<'a>(status: &'a Json, step: &str, key: &str) -> &'a str {
    status["steps"][step]["outputs"][key]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn test_e2e_quickstart_trains_the_tiny_model_and_uploads_it_with_a_manifest() {
    let (_t, _reaper, dir) = quickstart(|s| s);
    let ran = run_plan(&dir, &["apply", "quickstart.yaml"], MINUTE);
    assert_eq!(
        ran.code,
        Some(0),
        "plan apply quickstart.yaml:\n{}",
        ran.show()
    );
    let status = status_json(&dir, "quickstart.yaml", None);
    let run = status["run_id"].as_str().expect("run_id").to_string();
    assert_eq!(status["status"], "succeeded");
    for (id, step) in status["steps"].as_object().expect("steps") {
        assert_eq!(step["status"], "succeeded", "step {id}: {step}");
    }
    // The bundled corpus exercises every rule: policy groups all yield rows, invalid records are counted.
    let train: u64 = output(&status, "prep-data", "train_count")
        .parse()
        .expect("train_count");
    let val: u64 = output(&status, "prep-data", "val_count")
        .parse()
        .expect("val_count");
    assert_eq!(val, (train + val) / 5, "val = floor(0.2 n)");
    assert!(
        output(&status, "prep-data", "rejected_count")
            .parse::<u64>()
            .expect("rejected")
            > 0
    );
    assert_eq!(output(&status, "train", "final_step"), "40");
    assert_eq!(output(&status, "train", "resumed_from_step"), "0");
    assert!(
        output(&status, "preflight", "preflight_checks")
            .parse::<u64>()
            .expect("checks")
            >= 35
    );

    // The bucket stand-in (.sortie/bucket beside the plan) holds the trained model and its manifest.
    let artifacts = dir.join(".sortie/bucket/quickstart-finetuned").join(&run);
    let manifest: Json = serde_json::from_str(
        &std::fs::read_to_string(artifacts.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    let files = manifest["files"].as_array().expect("manifest.files");
    assert!(!files.is_empty(), "{manifest}");
    for f in files {
        let path = f["path"].as_str().expect("path");
        let bytes = std::fs::read(artifacts.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(f["size"].as_u64(), Some(bytes.len() as u64), "{path}");
        assert!(
            !path.contains("optimizer"),
            "optimizer state outside checkpoints/: {path}"
        );
    }
    assert!(
        artifacts.join("checkpoints/checkpoint-40").is_dir(),
        "checkpoints are synced to the bucket"
    );
    assert!(
        std::fs::read_dir(dir.join(".sortie/hosts")).map_or(true, |mut d| d.next().is_none()),
        "hosts left after teardown"
    );
    assert!(leftover_processes(&dir, Duration::from_secs(5)).is_empty());
}

/// kill -9 of apply and of the trainer mid-train, then `plan apply` again: the next attempt resumes from the
/// newest checkpoint and the step counter continues.
#[test]
fn test_e2e_quickstart_resumes_training_from_the_last_checkpoint_after_kill_9() {
    let (_t, _reaper, dir) = quickstart(|s| {
        s.replace(
            "    script: ../templates/train_qlora.sh.j2",
            "    env: { TINY_TRAIN_STEP_SECONDS: \"0.1\" }\n    script: ../templates/train_qlora.sh.j2",
        )
    });
    let mut live = Live::start({
        let mut c = plan_cmd(&dir, &["apply", "quickstart.yaml", "--output", "json"]);
        c.env_remove("TINY_TRAIN_STEP_SECONDS");
        c
    });
    let bucket = dir.join(".sortie/bucket/quickstart-finetuned");
    let checkpoint = || {
        std::fs::read_dir(&bucket)
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| {
                run.path()
                    .join("checkpoints/checkpoint-20/.complete")
                    .exists()
            })
    };
    live.expect_event(
        MINUTE,
        |e| e["event"] == "step_started" && e["step"] == "train",
        checkpoint,
    );
    let lines = live.kill9();
    let run = crate::apply::run_id(&lines);
    let status_dir = dir
        .join(".sortie/hosts")
        .join(format!("{run}-instance"))
        .join(".sortie/steps/train");
    let pid = std::fs::read_to_string(status_dir.join("pid")).expect("trainer pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .output_within(DEADLINE)
        .expect("kill")
        .status;
    assert!(killed.success());
    let deadline = Instant::now() + MINUTE;
    while !status_dir.join("exit_code").exists() {
        assert!(
            Instant::now() < deadline,
            "the wrapper never recorded the killed trainer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let ran = run_plan(&dir, &["apply", "quickstart.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "second apply:\n{}", ran.show());
    let status = status_json(&dir, "quickstart.yaml", None);
    assert_eq!(
        status["run_id"],
        run.as_str(),
        "the second apply continued the same run"
    );
    let resumed: u64 = output(&status, "train", "resumed_from_step")
        .parse()
        .expect("resumed");
    assert!(
        resumed >= 20,
        "resumed_from_step = {resumed}\n{}",
        ran.show()
    );
    assert_eq!(output(&status, "train", "final_step"), "40");
    assert_eq!(status["steps"]["train"]["attempt"], 2);
}

/// Every template, rendered by the real renderer for a real run, passes shellcheck.
#[test]
fn test_e2e_every_rendered_pipeline_script_passes_shellcheck() {
    // Without its teardown the run keeps its host, and each step's rendered script in its status directory.
    let (_t, _reaper, dir) = quickstart(|s| {
        let teardown = "  teardown:\n    kind: teardown\n    needs: [upload]\n    when: always\n";
        assert!(
            s.contains(teardown),
            "the quickstart's teardown changed; update this test"
        );
        s.replace(teardown, "")
    });
    let ran = run_plan(&dir, &["apply", "quickstart.yaml"], MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let hosts: Vec<PathBuf> = std::fs::read_dir(dir.join(".sortie/hosts"))
        .expect("hosts")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let mut checked = Vec::new();
    for step in std::fs::read_dir(hosts[0].join(".sortie/steps"))
        .expect("steps")
        .flatten()
    {
        let script = step.path().join("script");
        let out = std::process::Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style"])
            .arg(&script)
            .output_within(DEADLINE)
            .expect("shellcheck is installed by scripts/setup-test-env");
        assert!(
            out.status.success(),
            "{}:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        checked.push(step.file_name().to_string_lossy().into_owned());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "env",
            "evaluate",
            "fetch-model",
            "preflight",
            "prep-data",
            "train",
            "upload"
        ],
        "every pipeline step's script was checked"
    );
    // The host processes are stopped by the reaper; the host directory goes with the test directory.
}
