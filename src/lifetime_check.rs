//! `plan validate` warns when an instance would terminate itself (`max_lifetime`) before the steps that run on
//! it could finish: the longest path of step timeouts through those steps is longer than the lifetime.

use std::time::Duration;

use crate::diagnostic::{Diagnostic, Location};
use crate::plan::{Plan, StepKind};

/// One warning per instance whose `max_lifetime` is shorter than the longest chain of its steps' timeouts.
pub fn warnings(plan: &Plan, locate: impl Fn(&str) -> Location) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for step in &plan.steps {
        let StepKind::Instance(spec) = &step.kind else {
            continue;
        };
        let Some(lifetime) = spec.max_lifetime else {
            continue;
        };
        let (longest, path) = longest_path(plan, &step.id);
        if longest > lifetime {
            out.push(
                Diagnostic::warning(
                    &plan.file,
                    locate(&format!("steps.{}.max_lifetime", step.id)),
                    format!(
                        "instance `{}` terminates itself after {}, but the steps on it may need {} ({})",
                        step.id,
                        humantime::format_duration(lifetime),
                        humantime::format_duration(longest),
                        path.join(" → ")
                    ),
                )
                .with_help("raise `max_lifetime`, or lower the timeouts of the steps on the longest path"),
            );
        }
    }
    out
}

/// The longest sum of timeouts along dependency paths of run steps on `instance`, and that path (also the
/// hours of the cost estimate, `cost.rs`).
pub(crate) fn longest_path(plan: &Plan, instance: &str) -> (Duration, Vec<String>) {
    let on_it = |i: usize| matches!(&plan.steps[i].kind, StepKind::Run(r) if r.on == instance);
    let n = plan.steps.len();
    let mut total = vec![Duration::ZERO; n];
    let mut prev: Vec<Option<usize>> = vec![None; n];
    for &i in plan.dag.order() {
        prev[i] = plan
            .dag
            .dependencies(i)
            .into_iter()
            .max_by_key(|&d| total[d]);
        let before = prev[i].map_or(Duration::ZERO, |d| total[d]);
        let own = if on_it(i) {
            plan.steps[i].timeout.unwrap_or(Duration::ZERO)
        } else {
            Duration::ZERO
        };
        total[i] = before + own;
    }
    let Some(end) = (0..n).max_by_key(|&i| total[i]) else {
        return (Duration::ZERO, Vec::new());
    };
    let mut path = Vec::new();
    let mut at = Some(end);
    while let Some(i) = at {
        if on_it(i) {
            path.push(plan.steps[i].id.clone());
        }
        at = prev[i];
    }
    path.reverse();
    (total[end], path)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::compiler::compile;
    use crate::variables::Overrides;

    fn warnings_of(plan: &str) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, plan).expect("write");
        let compiled = compile(Path::new(&file), &Overrides::default()).expect("valid");
        compiled
            .warnings
            .iter()
            .map(|w| w.message.clone())
            .collect()
    }

    const PLAN: &str = "plan: p
target: { provider: local }
steps:
  host: { kind: instance, max_lifetime: LIFETIME }
  a: { kind: run, on: host, timeout: 2h, run: 'true' }
  b: { kind: run, on: host, timeout: 3h, run: 'true' }
  c: { kind: run, on: host, needs: [a, b], timeout: 20h, run: 'true' }
";

    #[test]
    fn warns_when_the_longest_path_outlives_the_instance() {
        let w = warnings_of(&PLAN.replace("LIFETIME", "22h"));
        assert_eq!(
            w,
            ["instance `host` terminates itself after 22h, but the steps on it may need 23h (b → c)"]
        );
        assert!(warnings_of(&PLAN.replace("LIFETIME", "23h")).is_empty());
    }
}
