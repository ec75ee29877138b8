//! Runner figures that are measured in-process (docs/BENCHMARKS.md):
//! - re-entry into a 1,000-step run with 999 steps succeeded: compile the plan, load the state, take the lock and
//!   decide what to run — everything `plan apply` does before it starts the first new step;
//! - checkpoint write latency of the directory store (temp file, fsync, rename, directory fsync), p50 and p99.
//!
//! Run: `cargo bench --bench runner`.

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use sortie::compiler::compile;
use sortie::dir_store::DirStore;
use sortie::runner::{decide, Decision};
use sortie::state::{self, RunState, RunStatus, StepState, StepStatus};
use sortie::variables::Overrides;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run_state(plan: &sortie::plan::Plan, succeeded: usize) -> RunState {
    let steps: IndexMap<String, StepState> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut st = StepState::pending();
            if i < succeeded {
                st.status = StepStatus::Succeeded;
                st.attempt = 1;
                st.digest = Some(state::digest(&s.definition));
                st.outputs.insert("v".into(), i.to_string());
            }
            (s.id.clone(), st)
        })
        .collect();
    RunState {
        version: state::STATE_VERSION,
        lineage: "bench".into(),
        serial: 0,
        plan: plan.name.clone(),
        run_id: "run-1".into(),
        plan_digest: "bench".into(),
        target: "local".into(),
        status: RunStatus::Interrupted,
        started_at: 0.0,
        finished_at: None,
        vars: IndexMap::new(),
        steps,
        plan_file: None,
        run_key: None,
        changed: Default::default(),
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 999 steps in a chain after the host, so the last one is the only step left to run.
    let mut text = String::from("plan: reentry\nsteps:\n  host: { kind: instance }\n");
    for i in 1..1000 {
        let needs = if i > 1 {
            format!("needs: [s{}], ", i - 1)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "  s{i}: {{ kind: run, {needs}run: 'echo {i}' }}\n"
        ));
    }
    let path = dir.path().join("reentry.yaml");
    std::fs::write(&path, &text).expect("write");
    let plan = compile(&path, &Overrides::default())
        .map_err(|e| e.render())
        .expect("valid")
        .plan;
    let store = DirStore::new(dir.path().join("state"), &plan.name);
    let mut seed = run_state(&plan, 999);
    store.lock("run-1", &path).expect("lock");
    store.save(&mut seed).expect("seed state");

    let mut samples = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let plan = compile(&path, &Overrides::default())
            .map_err(|e| e.render())
            .expect("valid")
            .plan;
        let _lock = store.lock("run-1", &path).expect("lock");
        let loaded = store.load("run-1").expect("load").expect("state");
        let decisions = decide(&plan, &loaded, None);
        let first = plan
            .dag
            .order()
            .iter()
            .find(|&&i| decisions[i].0 != Decision::Skip)
            .copied();
        samples.push(start.elapsed());
        assert_eq!(first.map(|i| plan.steps[i].id.as_str()), Some("s999"));
    }
    samples.sort();
    println!(
        "re-entry, 1000 steps / 999 succeeded, until the first new step is chosen: p50 {:?}  p99 {:?}  (n={})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.len()
    );

    for n in [8usize, 200] {
        let mut text = String::from("plan: ckpt\nsteps:\n  host: { kind: instance }\n");
        for i in 1..n {
            text.push_str(&format!("  s{i}: {{ kind: run, run: 'true' }}\n"));
        }
        let path = dir.path().join(format!("ckpt{n}.yaml"));
        std::fs::write(&path, &text).expect("write");
        let plan = compile(&path, &Overrides::default())
            .map_err(|e| e.render())
            .expect("valid")
            .plan;
        let store = DirStore::new(dir.path().join(format!("state{n}")), &plan.name);
        let mut run = run_state(&plan, n / 2);
        let _lock = store.lock("run-1", &path).expect("lock");
        let mut samples = Vec::new();
        for i in 0..300 {
            run.steps[i % n].attempt += 1;
            let start = Instant::now();
            store.save(&mut run).expect("save");
            samples.push(start.elapsed());
        }
        samples.sort();
        println!(
            "checkpoint write, directory store, {n}-step state: p50 {:?}  p99 {:?}  (n={})",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.len()
        );
    }
}
