//! `plan graph` in its three formats: deterministic, topological, levels shown.

use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const DIAMOND: &str = "plan: diamond
target: { provider: local }
steps:
  d: { kind: run, run: echo d, needs: [b, c], on: host }
  b: { kind: run, run: echo b, needs: [a], on: host }
  c: { kind: run, run: 'echo {{ steps.a.outputs.x }}', on: host }
  a: { kind: run, run: echo a, on: host }
  host: { kind: instance }
";

#[test]
fn test_e2e_graph_text_shows_levels_in_topological_order() {
    Test::new()
        .file("p.yaml", DIAMOND)
        .args(["graph", "p.yaml"])
        .stdout(
            "plan diamond: 5 steps, 4 levels
level 0
  host (instance)
level 1
  a (run) <- host
level 2
  b (run) <- a
  c (run) <- a
level 3
  d (run) <- b, c
",
        )
        .run();
}

#[test]
fn test_e2e_graph_dot() {
    Test::new()
        .file("p.yaml", DIAMOND)
        .args(["graph", "p.yaml", "--format", "dot"])
        .stdout(
            "digraph \"diamond\" {
  rankdir=LR;
  \"host\" [label=\"host\\n(instance)\"];
  \"a\" [label=\"a\\n(run)\"];
  \"b\" [label=\"b\\n(run)\"];
  \"c\" [label=\"c\\n(run)\"];
  \"d\" [label=\"d\\n(run)\"];
  \"host\" -> \"a\";
  \"a\" -> \"b\";
  \"a\" -> \"c\";
  \"b\" -> \"d\";
  \"c\" -> \"d\";
}
",
        )
        .run();
}

#[test]
fn test_e2e_graph_mermaid() {
    Test::new()
        .file("p.yaml", DIAMOND)
        .args(["graph", "p.yaml", "--format", "mermaid"])
        .stdout(
            "flowchart TD
  s4[\"host (instance)\"]
  s3[\"a (run)\"]
  s1[\"b (run)\"]
  s2[\"c (run)\"]
  s0[\"d (run)\"]
  s4 --> s3
  s3 --> s1
  s3 --> s2
  s1 --> s0
  s2 --> s0
",
        )
        .run();
}

#[test]
fn test_e2e_graph_is_deterministic() {
    let t = Test::new()
        .file("p.yaml", DIAMOND)
        .args(["graph", "p.yaml", "--format", "dot"]);
    let first = t.command().output_within(DEADLINE).expect("run").stdout;
    for _ in 0..5 {
        assert_eq!(
            t.command().output_within(DEADLINE).expect("run").stdout,
            first
        );
    }
}
