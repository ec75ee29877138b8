//! `plan status` of a running detached step: progress k/N, percent, this attempt's rate and ETA, and the last
//! metrics, from the heartbeat (the table and `live` in JSON), while no apply is running.

use std::time::{Duration, Instant};

use crate::apply::{plan_cmd, run_cmd, sandbox, status_json};

const MINUTE: Duration = Duration::from_secs(60);

const PLAN: &str = "plan: live
target: { provider: local }
steps:
  host: { kind: instance }
  train:
    kind: run
    on: host
    detach: true
    heartbeat: { interval: 1s, progress: \"step [0-9]+/[0-9]+\", metrics: \"loss=\" }
    run: |
      i=0
      while [ $i -lt 1000 ]; do
        i=$((i + 1))
        echo \"step $i/1000 loss=0.$((1000 - i))\"
        sleep 0.05
      done
";

#[test]
fn test_e2e_status_shows_progress_rate_eta_and_metrics_of_a_detached_step() {
    let (t, _reaper) = sandbox("p.yaml", PLAN);
    let dir = t.dir.path();
    let ran = run_cmd(plan_cmd(dir, &["apply", "p.yaml", "--no-wait"]), MINUTE);
    assert_eq!(ran.code, Some(4), "{}", ran.show());
    // Two heartbeats with progress apart: then there is a rate.
    let end = Instant::now() + Duration::from_secs(30);
    let live = loop {
        let status = status_json(dir, "p.yaml", None);
        let live = status["live"]["train"].clone();
        if live["eta_secs"].is_u64() || Instant::now() > end {
            break live;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(live["total"], 1000, "{live:#}");
    let done = live["done"].as_u64().expect("done");
    assert!((1..1000).contains(&done), "{live:#}");
    // 20 steps a second at most (sleep 0.05): the rate is below that, and the ETA follows from it.
    let rate = live["rate"].as_f64().expect("rate");
    assert!(rate > 0.0 && rate <= 21.0, "{live:#}");
    let eta = live["eta_secs"].as_u64().expect("eta");
    let expected = (1000 - done) as f64 / rate;
    assert!((eta as f64 - expected).abs() <= 1.0, "{live:#}");
    assert!(
        live["metrics"]
            .as_str()
            .expect("metrics")
            .starts_with("loss=0."),
        "{live:#}"
    );

    let table = run_cmd(plan_cmd(dir, &["status", "p.yaml"]), MINUTE);
    assert_eq!(table.code, Some(0), "{}", table.show());
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("train"))
        .expect("train row");
    assert!(row.contains("/1000 (") && row.contains("%)"), "{row}");
    assert!(row.contains("/s ETA ") && row.contains("loss=0."), "{row}");

    let ran = run_cmd(plan_cmd(dir, &["destroy", "p.yaml"]), MINUTE);
    assert_eq!(ran.code, Some(0), "{}", ran.show());
}
