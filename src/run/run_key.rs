//! Run keys: a run named by what it is for (a commit, a schedule's date). Applying a key again continues its
//! run, or reports it when it has succeeded, so a retried CI job never trains twice. The index
//! `keys/<sha256 of the key>.json` beside the runs maps each key to its run; it is written under the plan's lock
//! and before the run's first state, so a crash between the two leaves a key whose run is created next time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::state::store::Store;
use crate::template;

/// Longer keys are refused: a key is shown in tables and messages, and a digest names its index.
pub const MAX_LEN: usize = 256;

/// The body of `keys/<digest>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct KeyDoc {
    key: String,
    run: String,
}

fn doc_name(key: &str) -> String {
    let hex = crate::run::step_files::hex(&Sha256::digest(key.as_bytes()));
    format!("keys/{hex}.json")
}

/// The key of this apply: `--run-key`, else the plan's `run_key` rendered with its vars and this process's
/// environment. None: the apply picks its run as usual (the latest unfinished one, or a new one).
pub fn resolve(plan: &Plan, flag: Option<&str>) -> Result<Option<String>> {
    let (key, origin) = match (flag, &plan.operation.run_key) {
        (Some(k), _) => (k.to_string(), "--run-key".to_string()),
        (None, Some(t)) => (
            render(plan, t)?,
            format!("`run_key` in {}", plan.file.display()),
        ),
        (None, None) => return Ok(None),
    };
    let problem = if key.trim().is_empty() {
        Some("is empty".to_string())
    } else if key.chars().count() > MAX_LEN {
        Some(format!("is longer than {MAX_LEN} characters"))
    } else if key.chars().any(char::is_control) {
        Some("holds a control character (a newline?)".to_string())
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::Usage(format!("the run key from {origin} {p}"))
            .with_help("a run key names one run: a commit SHA, a date, a ticket")),
        None => Ok(Some(key)),
    }
}

/// Renders `run_key:` with `vars` and `env`. An `env.NAME` that is not set is an error, not an empty key: two
/// jobs would share the run of "".
fn render(plan: &Plan, text: &str) -> Result<String> {
    let env = template::environment();
    let refs = template::references(&env, "run_key", text).map_err(|e| {
        Error::Usage(format!(
            "{}: run_key: {}",
            plan.file.display(),
            template::error_message(&e)
        ))
    })?;
    let mut environment = BTreeMap::new();
    for r in refs.iter().filter(|r| r.root() == "env") {
        let Some(name) = r.member() else { continue };
        match std::env::var(name) {
            Ok(v) => {
                environment.insert(name.to_string(), v);
            }
            Err(_) => {
                return Err(Error::Usage(format!("{}: run_key uses `env.{name}`, which is not set (or not UTF-8) in this environment", plan.file.display())).with_help(format!("set {name}, or name the run with `--run-key KEY`")))
            }
        }
    }
    let ctx = template::value(serde_json::json!({ "vars": plan.vars, "env": environment }));
    template::render_str(&env, "run_key", text, &ctx).map_err(|e| {
        Error::Usage(format!(
            "{}: cannot render run_key: {}",
            plan.file.display(),
            template::error_message(&e)
        ))
    })
}

/// The run a key names, if any. The index is untrusted (it may come from a shared bucket): it must name this
/// key and a run id of the generated format.
pub async fn lookup(store: &Store, key: &str) -> Result<Option<String>> {
    let name = doc_name(key);
    let Some(bytes) = store.read_doc(&name).await? else {
        return Ok(None);
    };
    let corrupt = |reason: String| Error::CorruptState {
        path: PathBuf::from(&name),
        reason: format!("run-key index: {reason}"),
    };
    let doc: KeyDoc = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if doc.key != key {
        return Err(corrupt(format!("it names the key `{}`", doc.key)));
    }
    if !crate::state::is_run_id(&doc.run) {
        return Err(corrupt(format!("`{}` is not a run id", doc.run)));
    }
    Ok(Some(doc.run))
}

/// Records that `key` names `run`. The caller holds the plan's lock.
pub async fn record(store: &Store, key: &str, run: &str) -> Result<()> {
    let doc = KeyDoc {
        key: key.to_string(),
        run: run.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&doc)
        .map_err(|e| Error::runtime(format!("cannot encode the run-key index: {e}")))?;
    store.write_doc(&doc_name(key), &bytes).await
}

#[cfg(test)]
mod tests {
    use super::doc_name;

    #[test]
    fn test_int_index_names_do_not_depend_on_what_the_key_holds() {
        let a = doc_name("../../etc/passwd");
        assert!(
            a.starts_with("keys/") && a.ends_with(".json") && a.len() == 5 + 64 + 5,
            "{a}"
        );
        assert_ne!(doc_name("a"), doc_name("b"));
    }
}
