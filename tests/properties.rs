//! Property test: random DAGs compile, and the topological order respects every edge.

use proptest::prelude::*;
use sortie::compiler::compile;
use sortie::variables::Overrides;

/// A random DAG over `n` steps: edges only go from a lower to a higher index, so it is acyclic.
fn dag_strategy() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (2usize..30).prop_flat_map(|n| {
        let edges = proptest::collection::vec((0..n, 0..n), 0..(n * 2))
            .prop_map(|pairs| pairs.into_iter().filter(|(a, b)| a < b).collect::<Vec<_>>());
        (Just(n), edges)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn test_int_random_dags_compile_in_topological_order((n, edges) in dag_strategy(), shuffle in any::<u64>()) {
        // Declare steps in a shuffled order so the order in the file says nothing about dependencies.
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = shuffle;
        for i in (1..n).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let mut text = String::from("plan: prop\nsteps:\n  host: { kind: instance }\n");
        for &i in &order {
            let needs: Vec<String> = edges.iter().filter(|(_, b)| *b == i).map(|(a, _)| format!("s{a}")).collect();
            // Half the edges come from template references instead of `needs`.
            let (needs, refs): (Vec<_>, Vec<_>) = needs.into_iter().enumerate().partition(|(k, _)| k % 2 == 0);
            let needs: Vec<String> = needs.into_iter().map(|(_, s)| s).collect();
            let script: String = refs.iter().map(|(_, s)| format!("echo {{{{ steps.{s}.outputs.v }}}}; ")).collect();
            text.push_str(&format!("  s{i}: {{ kind: run, on: host, needs: [{}], run: 'true; {script}' }}\n", needs.join(", ")));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, &text).expect("write");
        let compiled = compile(&path, &Overrides::default()).map_err(|e| e.render()).expect("compiles");
        let plan = &compiled.plan;
        let position: Vec<usize> = {
            let mut p = vec![0; plan.steps.len()];
            for (rank, &i) in plan.dag.order().iter().enumerate() { p[i] = rank; }
            p
        };
        prop_assert_eq!(plan.dag.order().len(), n + 1);
        for (a, b) in edges {
            let ia = plan.index_of(&format!("s{a}")).expect("a");
            let ib = plan.index_of(&format!("s{b}")).expect("b");
            prop_assert!(position[ia] < position[ib], "s{} must come before s{}", a, b);
            let dep = format!("s{}", a);
            prop_assert!(plan.steps[ib].needs.contains(&dep));
        }
    }
}

/// Fragments that tend to break parsers: YAML structure, templates, anchors, odd scalars.
fn hostile_text() -> impl Strategy<Value = String> {
    let fragments = prop_oneof![
        Just("plan: p\n".to_string()),
        Just("steps:\n".to_string()),
        Just("  a: { kind: run, run: echo }\n".to_string()),
        Just("  h: { kind: instance }\n".to_string()),
        Just("    needs: [a, b]\n".to_string()),
        Just("{{ steps.a.outputs.x }}".to_string()),
        Just("{% if %}".to_string()),
        Just("&x [*x, *x]\n".to_string()),
        Just("*y\n".to_string()),
        Just("- - - [\n".to_string()),
        Just("\t".to_string()),
        Just("timeout: 99999999999999999999h\n".to_string()),
        Just("size: 1e400GiB\n".to_string()),
        Just("\u{feff}".to_string()),
        Just("'".to_string()),
        Just("\"\\u0000\"".to_string()),
        "[ -~]{0,20}".prop_map(|s| s),
    ];
    proptest::collection::vec(fragments, 0..25).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// No input, however malformed, makes the compiler panic: it either compiles or returns diagnostics.
    #[test]
    fn test_int_malformed_plans_never_panic(text in hostile_text(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in [("a.yaml", text.into_bytes()), ("b.yaml", bytes)] {
            let path = dir.path().join(name);
            std::fs::write(&path, &contents).expect("write");
            if let Err(invalid) = compile(&path, &Overrides::default()) {
                prop_assert!(!invalid.diagnostics.is_empty());
                let rendered = invalid.render();
                prop_assert!(rendered.starts_with("error: "), "{}", rendered);
            }
        }
    }
}
