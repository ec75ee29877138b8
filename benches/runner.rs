//! Runner figures that are measured in-process (docs/BENCHMARKS.md):
//! - re-entry into a 1,000-step run with 999 steps succeeded: compile the plan, load the state, take the lock and
//!   decide what to run — everything `plan apply` does before it starts the first new step;
//! - checkpoint write latency of the directory store (temp file, fsync, rename, directory fsync), p50 and p99.
//!
//! Run: `cargo bench --bench runner` (`-- quick` for the small sizes, `-- reentry` for re-entry only).

use std::time::{Duration, Instant};

use indexmap::IndexMap;
use sortie::compiler::compile;
use sortie::run::walker::{decide, Decision};
use sortie::state::dir_store::DirStore;
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

fn compile_chain(
    dir: &std::path::Path,
    name: &str,
    n: usize,
) -> (std::path::PathBuf, sortie::plan::Plan) {
    // n - 1 steps in a chain after the host.
    let mut text = format!("plan: {name}\nsteps:\n  host: {{ kind: instance }}\n");
    for i in 1..n {
        let needs = if i > 1 {
            format!("needs: [s{}], ", i - 1)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "  s{i}: {{ kind: run, {needs}run: 'echo {i}' }}\n"
        ));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, &text).expect("write");
    let plan = compile(&path, &Overrides::default())
        .map_err(|e| e.render())
        .expect("valid")
        .plan;
    (path, plan)
}

/// Re-entry into an n-step run with all but the last step succeeded: compile, lock, load, decide, until the
/// first new step is chosen. Also reports the part after compilation (lock, load, decide).
fn reentry(dir: &std::path::Path, n: usize, samples: usize) {
    let name = format!("reentry{n}");
    let (path, plan) = compile_chain(dir, &name, n);
    let store = DirStore::new(dir.join(format!("state-{name}")), &plan.name);
    let mut seed = run_state(&plan, n - 1);
    store.lock("run-1", &path).expect("lock");
    store.save(&mut seed).expect("seed state");
    let last = format!("s{}", n - 1);
    let (mut whole, mut after_compile) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let start = Instant::now();
        let plan = compile(&path, &Overrides::default())
            .map_err(|e| e.render())
            .expect("valid")
            .plan;
        let compiled = Instant::now();
        let _lock = store.lock("run-1", &path).expect("lock");
        let loaded = store.load("run-1").expect("load").expect("state");
        let decisions = decide(&plan, &loaded, None);
        let first = plan
            .dag
            .order()
            .iter()
            .find(|&&i| decisions[i].0 != Decision::Skip)
            .copied();
        whole.push(start.elapsed());
        after_compile.push(compiled.elapsed());
        assert_eq!(
            first.map(|i| plan.steps[i].id.as_str()),
            Some(last.as_str())
        );
        // Dropped outside the timing, as `plan` exits without freeing them.
        std::mem::forget(plan);
        std::mem::forget(loaded);
    }
    whole.sort();
    after_compile.sort();
    println!(
        "re-entry, {n} steps / {} succeeded, until the first new step is chosen: p50 {:?}  p99 {:?}  \
         (of which lock+load+decide p50 {:?}; n={samples})",
        n - 1,
        percentile(&whole, 0.5),
        percentile(&whole, 0.99),
        percentile(&after_compile, 0.5),
    );
}

/// Checkpoint latency of the directory store for an n-step state: the whole document (temp, fsync, rename,
/// directory fsync), and a journal append (one changed step, fsync).
fn checkpoints(dir: &std::path::Path, n: usize, writes: usize) {
    let name = format!("ckpt{n}");
    let (path, plan) = compile_chain(dir, &name, n);
    let store = DirStore::new(dir.join(format!("state-{name}")), &plan.name);
    let mut run = run_state(&plan, n / 2);
    let _lock = store.lock("run-1", &path).expect("lock");
    let ids: Vec<String> = plan.steps.iter().map(|s| s.id.clone()).collect();
    let time = |journal: bool, run: &mut RunState| {
        let mut samples = Vec::new();
        for i in 0..writes {
            run.step_mut(&ids[i % n]).attempt += 1;
            let start = Instant::now();
            if journal {
                match store.append(run).expect("append") {
                    sortie::state::journal::Appended::Yes => {}
                    _ => panic!("the journal did not take the checkpoint"),
                }
            } else {
                store.save(run).expect("save");
            }
            samples.push(start.elapsed());
        }
        samples.sort();
        samples
    };
    let whole = time(false, &mut run);
    store.begin_journal(&run).expect("journal");
    let appended = time(true, &mut run);
    println!(
        "checkpoint, directory store, {n}-step state: whole document p50 {:?} p99 {:?}; journal append p50 {:?} \
         p99 {:?}  (n={writes})",
        percentile(&whole, 0.5),
        percentile(&whole, 0.99),
        percentile(&appended, 0.5),
        percentile(&appended, 0.99),
    );
}

fn main() {
    // `cargo bench --bench runner -- quick`: the small sizes only; `-- reentry`: the re-entry figures only.
    let quick = std::env::args().any(|a| a == "quick");
    let reentry_only = std::env::args().any(|a| a == "reentry");
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes: &[usize] = if quick { &[1000] } else { &[1000, 10_000] };
    for &n in sizes {
        reentry(dir.path(), n, if n > 1000 { 5 } else { 20 });
    }
    if reentry_only {
        return;
    }
    let sizes: &[usize] = if quick { &[200] } else { &[200, 2000, 10_000] };
    for &n in sizes {
        checkpoints(dir.path(), n, if n > 2000 { 30 } else { 200 });
    }
}
