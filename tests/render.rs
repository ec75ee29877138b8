//! `plan render FILE STEP`: a run step's script as its host receives it.

use std::path::Path;
use std::time::Duration;

use crate::apply::{run_cmd, run_plan, sandbox, state_files, status_json};

const MINUTE: Duration = Duration::from_secs(60);

/// `train` uses an output of `fetch` (with a space and a quote in it), a `--var`, the run and the host;
/// `deploy` uses a secret-named output, which state never holds.
const PLAN: &str = r#"plan: render
target: { provider: local }
vars: { greeting: hello }
steps:
  host: { kind: instance }
  fetch:
    kind: run
    on: host
    run: |
      echo "model_dir=/data/it's a dir" >> "$SORTIE_OUTPUT"
      echo "api_token=tok-3a9f1c77e2" >> "$SORTIE_OUTPUT"
  train:
    kind: run
    on: host
    run: |
      echo {{ steps.fetch.outputs.model_dir }}
      echo "{{ vars.greeting }} from run {{ run.id }} attempt {{ run.attempt }} on {{ host.name }}"
  deploy:
    kind: run
    on: host
    needs: [train]
    run: test {{ steps.fetch.outputs.api_token }} = tok-3a9f1c77e2
"#;

fn render(dir: &Path, args: &[&str]) -> crate::apply::Ran {
    let mut all = vec!["render", "p.yaml"];
    all.extend(args);
    run_plan(dir, &all, MINUTE)
}

#[test]
fn test_e2e_render_matches_the_script_the_host_received() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let applied = run_plan(
        dir,
        &["apply", "p.yaml", "--var", "greeting=hi there"],
        MINUTE,
    );
    assert_eq!(applied.code, Some(0), "{}", applied.show());
    let run = status_json(dir, "p.yaml", None)["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let received = std::fs::read(
        dir.join(".sortie/hosts")
            .join(format!("{run}-host"))
            .join(".sortie/steps/train/script"),
    )
    .expect("the host keeps the script it ran");

    for args in [
        vec!["train", "--var", "greeting=hi there"],
        vec!["train", "--var", "greeting=hi there", "--run", &run],
    ] {
        let ran = render(dir, &args);
        assert_eq!(ran.code, Some(0), "{}", ran.show());
        assert_eq!(
            ran.stdout.as_bytes(),
            received.as_slice(),
            "render differs from what the host ran\n{}",
            ran.show()
        );
        assert!(ran.stderr.contains(&run), "{}", ran.show());
    }
    let text = String::from_utf8_lossy(&received);
    for part in ["echo '/data/it'\\''s a dir'", "\"hi there from run ", &run] {
        assert!(text.contains(part), "no {part:?} in\n{text}");
    }
    assert!(!text.contains("not produced yet"), "{text}");

    // The host got the secret within the apply; render only has state, which holds `<redacted>`.
    let deploy = render(dir, &["deploy"]);
    assert_eq!(deploy.code, Some(0), "{}", deploy.show());
    assert_eq!(deploy.stdout, "test '<redacted>' = tok-3a9f1c77e2");
}

#[test]
fn test_e2e_render_before_any_run_shows_escaped_placeholders() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let ran = render(dir, &["train"]);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let want = "echo '<output of fetch.model_dir: not produced yet>'\n\
                echo \"hello from run <run id: no run yet> attempt 1 on <host name: no run yet>\"";
    assert_eq!(ran.stdout, want, "{}", ran.show());
    assert!(ran.stderr.contains("no runs yet"), "{}", ran.show());
    assert!(
        state_files(dir, "render").is_empty(),
        "render started a run"
    );

    // The placeholders are quoted like any value: the script is valid shell, and the shell reads each one as a
    // single word (unquoted, `<` would be a redirection).
    let script = dir.join("rendered.sh");
    std::fs::write(&script, &ran.stdout).expect("write");
    let mut sh = std::process::Command::new("sh");
    sh.arg(&script).current_dir(dir);
    let out = run_cmd(sh, MINUTE);
    assert_eq!(out.code, Some(0), "{}", out.show());
    assert_eq!(
        out.stdout,
        "<output of fetch.model_dir: not produced yet>\n\
         hello from run <run id: no run yet> attempt 1 on <host name: no run yet>\n"
    );
}

#[test]
fn test_e2e_render_refuses_steps_without_a_script() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    for (step, says) in [
        ("nope", "p.yaml: plan `render` has no step `nope`"),
        (
            "host",
            "p.yaml: step `host` is of kind `instance`; only `run` steps have a script to render",
        ),
    ] {
        let ran = render(dir, &[step]);
        assert_eq!(ran.code, Some(2), "{}", ran.show());
        assert!(ran.stdout.is_empty(), "{}", ran.show());
        assert!(ran.stderr.contains(says), "{}", ran.show());
        assert!(
            ran.stderr
                .contains("= help: its run steps are: fetch, train, deploy"),
            "{}",
            ran.show()
        );
    }
    let ran = render(dir, &["train", "--run", "20260101-000000-000-aa"]);
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains("p.yaml: plan `render` has no run `20260101-000000-000-aa`"),
        "{}",
        ran.show()
    );
}
