//! Secret-named outputs are stored only as `<redacted>`. Within one apply the runner keeps the real values in
//! memory; a later apply has only the redacted form, and a step that needs one must fail clearly instead of
//! being handed the literal `<redacted>`.

use indexmap::IndexMap;

use crate::scrub::REDACTED;
use crate::state::is_secret_name;
use crate::template;

/// The first `steps.<id>.outputs.<key>` that one of the `(name, source)` templates uses and that is only known
/// in its redacted form, as that path.
pub fn unavailable(
    outputs: &IndexMap<String, IndexMap<String, String>>,
    sources: &[(String, String)],
) -> Option<(String, String)> {
    let missing: Vec<(&String, &String)> = outputs
        .iter()
        .flat_map(|(id, o)| {
            o.iter()
                .filter(|(k, v)| is_secret_name(k) && v.as_str() == REDACTED)
                .map(move |(k, _)| (id, k))
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    let env = template::environment();
    for (name, source) in sources {
        if !template::is_template(source) {
            continue;
        }
        let Ok(refs) = template::references(&env, name, source) else {
            continue;
        };
        for r in refs {
            let parts: Vec<&str> = r.0.split('.').collect();
            let [root, step, outputs, key, ..] = parts.as_slice() else {
                continue;
            };
            if *root != "steps" || *outputs != "outputs" {
                continue;
            }
            if let Some((id, k)) = missing
                .iter()
                .find(|(id, k)| (template::step_alias(id) == *step || id == step) && k == key)
            {
                return Some((id.to_string(), k.to_string()));
            }
        }
    }
    None
}

/// The error a step gets when it needs a secret output that is gone.
pub fn message(step: &str, source_step: &str, key: &str) -> String {
    format!(
        "step `{step}` needs the secret output `steps.{source_step}.outputs.{key}`, which an earlier apply produced; \
         secret-named outputs are never stored, so its value is gone (rerun `{source_step}` in this apply with \
         `--from {source_step}`, or pass the secret through the host's environment)"
    )
}
