//! The last phase: the dependency graph. References and `needs` give edges; each teardown adds its own (it runs
//! after every step that is not downstream of it); a cycle is reported at the reference that closes it.

use std::collections::HashMap;

use crate::dag::Dag;
use crate::plan::{Step, StepKind};
use crate::yaml;

/// `(dependency, dependent, key path of the reference)`, by step index.
pub(super) type Edge = (usize, usize, String);

impl super::Compiler {
    /// The DAG of the steps, and each step's `needs` filled in from it.
    pub(super) fn graph(
        &mut self,
        ids: &[String],
        steps: &mut [Step],
        mut edges: Vec<Edge>,
    ) -> Option<Dag> {
        self.implicit_teardown_edges(steps, &mut edges);
        let dag = self.dag(ids, &edges)?;
        for (i, step) in steps.iter_mut().enumerate() {
            step.needs = dag
                .dependencies(i)
                .into_iter()
                .map(|d| ids[d].clone())
                .collect();
        }
        Some(dag)
    }

    /// A teardown runs after every step that is not downstream of it, so it never pulls a host from under one.
    fn implicit_teardown_edges(&self, steps: &[Step], edges: &mut Vec<Edge>) {
        let n = steps.len();
        let mut adjacency: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (a, b, _) in edges.iter() {
            adjacency[*a].push(*b);
        }
        let mut extra = Vec::new();
        for (t, step) in steps.iter().enumerate() {
            if !matches!(step.kind, StepKind::Teardown(_)) {
                continue;
            }
            let mut downstream = vec![false; n];
            let mut stack = vec![t];
            while let Some(i) = stack.pop() {
                for &j in &adjacency[i] {
                    if !downstream[j] {
                        downstream[j] = true;
                        stack.push(j);
                    }
                }
            }
            for (i, other) in steps.iter().enumerate() {
                if i != t && !downstream[i] && !matches!(other.kind, StepKind::Teardown(_)) {
                    extra.push((i, t, format!("steps.{}", step.id)));
                }
            }
        }
        edges.extend(extra);
    }

    fn dag(&mut self, ids: &[String], edges: &[Edge]) -> Option<Dag> {
        let pairs: Vec<(usize, usize)> = edges.iter().map(|(a, b, _)| (*a, *b)).collect();
        match Dag::build(ids.len(), &pairs) {
            Ok(dag) => Some(dag),
            Err(cycles) => {
                let origins: HashMap<(usize, usize), &str> = edges
                    .iter()
                    .map(|(a, b, o)| ((*a, *b), o.as_str()))
                    .collect();
                for cycle in cycles {
                    let members = &cycle.0;
                    let mut names: Vec<&str> = members.iter().map(|&i| ids[i].as_str()).collect();
                    names.push(ids[members[0]].as_str());
                    // Point at the reference from the first member to the second.
                    let first = members[0];
                    let second = members.get(1).copied().unwrap_or(first);
                    let origin = origins.get(&(second, first)).copied().unwrap_or_default();
                    let location = if origin.is_empty() {
                        self.key_at(&yaml::join_key("steps", &ids[first]))
                    } else {
                        self.at(origin)
                    };
                    self.error_help(
                        location,
                        format!("steps form a cycle: {}", names.join(" -> ")),
                        "each step needs the next one; remove one of these dependencies",
                    );
                }
                None
            }
        }
    }
}
