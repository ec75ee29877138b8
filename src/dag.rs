//! The step graph: petgraph DiGraph with an edge from each dependency to its dependent.
//!
//! The topological order is deterministic (ties broken by declaration order), and cycles are reported with
//! every member in order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use petgraph::algo::tarjan_scc;
use petgraph::algo::tred::{dag_to_toposorted_adjacency_list, dag_transitive_reduction_closure};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    /// Step indices in topological order.
    order: Vec<usize>,
    /// Level of each step: 0 without dependencies, else one more than its deepest dependency.
    levels: Vec<usize>,
}

/// A cycle: step indices, each depending on the next, the last on the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle(pub Vec<usize>);

impl Dag {
    /// Builds the graph of `count` steps with edges `(dependency, dependent)`.
    pub fn build(count: usize, edges: &[(usize, usize)]) -> Result<Dag, Vec<Cycle>> {
        let mut graph = DiGraph::<usize, ()>::with_capacity(count, edges.len());
        for i in 0..count {
            graph.add_node(i);
        }
        // Deduplicate with a set: petgraph's find_edge scans the adjacency list, which is quadratic for a hub
        // (the host every step runs on).
        let mut seen = std::collections::HashSet::with_capacity(edges.len());
        for &(from, to) in edges {
            if seen.insert((from, to)) {
                graph.add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
            }
        }
        // Kahn's algorithm with a min-heap: among ready steps, the one declared first goes first.
        let mut indegree: Vec<usize> = (0..count)
            .map(|i| {
                graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: BinaryHeap<Reverse<usize>> = (0..count)
            .filter(|&i| indegree[i] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(count);
        let mut levels = vec![0usize; count];
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for next in graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
                let n = next.index();
                levels[n] = levels[n].max(levels[i] + 1);
                indegree[n] -= 1;
                if indegree[n] == 0 {
                    ready.push(Reverse(n));
                }
            }
        }
        if order.len() < count {
            return Err(find_cycles(&graph));
        }
        Ok(Dag {
            graph,
            order,
            levels,
        })
    }

    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn level(&self, step: usize) -> usize {
        self.levels[step]
    }

    pub fn depth(&self) -> usize {
        self.levels.iter().max().map_or(0, |l| l + 1)
    }

    /// Direct dependencies of `step`, in declaration order.
    pub fn dependencies(&self, step: usize) -> Vec<usize> {
        self.neighbors(step, Direction::Incoming)
    }

    /// Direct dependents of `step`, in declaration order.
    pub fn dependents(&self, step: usize) -> Vec<usize> {
        self.neighbors(step, Direction::Outgoing)
    }

    fn neighbors(&self, step: usize, direction: Direction) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(step), direction)
            .map(|n| n.index())
            .collect();
        v.sort_unstable();
        v
    }

    /// `step` and everything that depends on it, transitively, in topological order.
    pub fn descendants(&self, step: usize) -> Vec<usize> {
        let mut marked = vec![false; self.levels.len()];
        marked[step] = true;
        for &i in &self.order {
            if marked[i] {
                for d in self
                    .graph
                    .neighbors_directed(NodeIndex::new(i), Direction::Outgoing)
                {
                    marked[d.index()] = true;
                }
            }
        }
        self.order.iter().copied().filter(|&i| marked[i]).collect()
    }

    /// For every step, its direct dependencies that are not also reachable through another dependency: what a
    /// reader needs to see (the transitive reduction, petgraph's `tred`), e.g. teardown's implicit edges collapse
    /// to one. Each list in declaration order.
    pub fn essential_dependencies(&self) -> Vec<Vec<usize>> {
        let topo: Vec<NodeIndex> = self.order.iter().map(|&i| NodeIndex::new(i)).collect();
        let (adjacency, _) = dag_to_toposorted_adjacency_list::<_, u32>(&self.graph, &topo);
        let (reduction, _) = dag_transitive_reduction_closure(&adjacency);
        let mut deps = vec![Vec::new(); self.order.len()];
        for edge in reduction.edge_indices() {
            if let Some((a, b)) = reduction.edge_endpoints(edge) {
                deps[self.order[b as usize]].push(self.order[a as usize]);
            }
        }
        for list in &mut deps {
            list.sort_unstable();
        }
        deps
    }

    /// Edges as (dependency, dependent), sorted.
    pub fn edges(&self) -> Vec<(usize, usize)> {
        let mut e: Vec<(usize, usize)> = self
            .graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
            .map(|(a, b)| (a.index(), b.index()))
            .collect();
        e.sort_unstable();
        e
    }
}

/// One simple cycle per strongly connected component, starting at its first-declared member and
/// following, at each member, its first-declared dependency inside the component.
fn find_cycles(graph: &DiGraph<usize, ()>) -> Vec<Cycle> {
    let mut cycles = Vec::new();
    for component in tarjan_scc(graph) {
        let self_loop =
            component.len() == 1 && graph.find_edge(component[0], component[0]).is_some();
        if component.len() < 2 && !self_loop {
            continue;
        }
        let inside = |n: NodeIndex| component.contains(&n);
        let Some(&start) = component.iter().min_by_key(|n| n.index()) else {
            continue;
        };
        // Walk dependencies (incoming edges) so the cycle reads "a needs b needs c needs a".
        let mut path = vec![start];
        let mut seen = vec![start];
        let mut current = start;
        loop {
            let mut deps: Vec<NodeIndex> = graph
                .neighbors_directed(current, Direction::Incoming)
                .filter(|n| inside(*n))
                .collect();
            deps.sort_unstable_by_key(|n| n.index());
            let next = deps
                .iter()
                .find(|n| **n == start)
                .or_else(|| deps.iter().find(|n| !seen.contains(n)));
            match next {
                Some(&n) if n == start => break,
                Some(&n) => {
                    path.push(n);
                    seen.push(n);
                    current = n;
                }
                None => break,
            }
        }
        cycles.push(Cycle(path.into_iter().map(|n| n.index()).collect()));
    }
    cycles.sort_by_key(|c| c.0.first().copied());
    cycles
}

/// Output formats of `plan graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

/// Renders the DAG. `names[i]` is step i's id and `kinds[i]` its kind.
pub fn render(
    dag: &Dag,
    plan: &str,
    names: &[&str],
    kinds: &[&str],
    format: GraphFormat,
) -> String {
    let mut out = String::new();
    match format {
        GraphFormat::Text => {
            let _ = writeln!(
                out,
                "plan {plan}: {} steps, {} levels",
                names.len(),
                dag.depth()
            );
            let mut level = usize::MAX;
            let essential = dag.essential_dependencies();
            let mut by_level: Vec<usize> = dag.order().to_vec();
            by_level.sort_by_key(|&i| (dag.level(i), dag.order().iter().position(|&o| o == i)));
            for i in by_level {
                if dag.level(i) != level {
                    level = dag.level(i);
                    let _ = writeln!(out, "level {level}");
                }
                let deps: Vec<&str> = essential[i].iter().map(|&d| names[d]).collect();
                let _ = write!(out, "  {} ({})", names[i], kinds[i]);
                if !deps.is_empty() {
                    let _ = write!(out, " <- {}", deps.join(", "));
                }
                out.push('\n');
            }
        }
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph {plan:?} {{");
            let _ = writeln!(out, "  rankdir=LR;");
            for &i in dag.order() {
                let _ = writeln!(
                    out,
                    "  {:?} [label={:?}];",
                    names[i],
                    format!("{}\n({})", names[i], kinds[i])
                );
            }
            for (a, b) in sorted_edges(dag) {
                let _ = writeln!(out, "  {:?} -> {:?};", names[a], names[b]);
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart TD\n");
            for &i in dag.order() {
                let _ = writeln!(
                    out,
                    "  s{i}[\"{} ({})\"]",
                    names[i].replace('"', "#quot;"),
                    kinds[i]
                );
            }
            for (a, b) in sorted_edges(dag) {
                let _ = writeln!(out, "  s{a} --> s{b}");
            }
        }
    }
    out
}

/// Essential edges in topological order of their source, then of their target: stable across runs.
fn sorted_edges(dag: &Dag) -> Vec<(usize, usize)> {
    let rank: Vec<usize> = {
        let mut r = vec![0; dag.order().len()];
        for (pos, &i) in dag.order().iter().enumerate() {
            r[i] = pos;
        }
        r
    };
    let essential = dag.essential_dependencies();
    let mut edges: Vec<(usize, usize)> = dag
        .order()
        .iter()
        .flat_map(|&b| essential[b].iter().map(move |&a| (a, b)))
        .collect();
    edges.sort_by_key(|&(a, b)| (rank[a], rank[b]));
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_declaration_among_ready() {
        let dag = Dag::build(4, &[(2, 0), (3, 1)]).expect("acyclic");
        assert_eq!(dag.order(), &[2, 0, 3, 1]);
        assert_eq!(dag.level(0), 1);
        assert_eq!(dag.descendants(3), vec![3, 1]);
    }

    #[test]
    fn reports_cycle_members_in_order() {
        // 0 needs 1, 1 needs 2, 2 needs 0: edges are (dependency, dependent).
        let cycles = Dag::build(4, &[(1, 0), (2, 1), (0, 2), (0, 3)]).expect_err("cycle");
        assert_eq!(cycles, vec![Cycle(vec![0, 1, 2])]);
    }

    #[test]
    fn reports_self_loop() {
        let cycles = Dag::build(1, &[(0, 0)]).expect_err("cycle");
        assert_eq!(cycles, vec![Cycle(vec![0])]);
    }
}
