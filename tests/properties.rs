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
