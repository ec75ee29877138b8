//! Validate and compile generated plans of 100, 1,000 and 10,000 steps (file read, YAML, templates, DAG).
//!
//! Run: `cargo bench --bench compile`. Figures go to docs/BENCHMARKS.md.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sortie::compiler::compile;
use sortie::variables::Overrides;

/// A plan shaped like real ones: one host, and `n` run steps in layers of 10, each needing one step of the
/// layer before and referring to another's outputs through a template.
pub fn generated_plan(n: usize) -> String {
    let mut text = String::from(
        "plan: bench\nvars: { greeting: hello }\nsteps:\n  host: { kind: instance }\n",
    );
    for i in 0..n {
        text.push_str(&format!("  s{i}:\n    kind: run\n    on: host\n"));
        if i >= 10 {
            text.push_str(&format!("    needs: [s{}]\n", i - 10));
        }
        if i >= 20 {
            text.push_str(&format!(
                "    run: echo {{{{ vars.greeting }}}} {{{{ steps.s{}.outputs.v }}}}\n",
                i - 20
            ));
        } else {
            text.push_str("    run: echo {{ vars.greeting }}\n");
        }
    }
    text
}

fn bench_compile(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for n in [100usize, 1_000, 10_000] {
        let path = dir.path().join(format!("plan-{n}.yaml"));
        std::fs::write(&path, generated_plan(n)).expect("write plan");
        let path: &Path = &path;
        group.bench_with_input(BenchmarkId::from_parameter(n), path, |b, path| {
            // Dropping the result is left out: `plan validate` exits without freeing it.
            b.iter_with_large_drop(|| {
                compile(path, &Overrides::default())
                    .map_err(|e| e.render())
                    .expect("valid")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
