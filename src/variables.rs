//! Variable resolution. Precedence, lowest first: the plan's `vars`, `--var-file`, `--var`, `SORTIE_VAR_<key>`.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::diagnostic::{did_you_mean, Diagnostic, Location};
use crate::source::Sources;
use crate::yaml;

/// Variable inputs from outside the plan.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub var_files: Vec<PathBuf>,
    /// `--var key=value`, in order.
    pub vars: Vec<(String, String)>,
    /// The process environment (tests pass their own).
    pub env: Vec<(String, String)>,
}

pub const ENV_PREFIX: &str = "SORTIE_VAR_";

impl Overrides {
    /// Overrides with the environment of this process.
    pub fn from_process(var_files: Vec<PathBuf>, vars: Vec<(String, String)>) -> Overrides {
        Overrides {
            var_files,
            vars,
            // vars_os: `std::env::vars` panics on any variable that is not UTF-8, even an unrelated one.
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
                .filter(|(k, _)| k.starts_with(ENV_PREFIX))
                .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
                .collect(),
        }
    }
}

/// Splits `key=value` from the command line.
pub fn parse_assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{text}` is not of the form key=value")),
    }
}

/// Resolves the final variables. Keys set from a file or `--var` must be declared in the plan.
pub fn resolve(
    plan_file: &Path,
    declared: &IndexMap<String, Json>,
    overrides: &Overrides,
    sources: &mut Sources,
    problems: &mut Vec<Diagnostic>,
) -> IndexMap<String, Json> {
    let mut r = Resolution {
        plan_file,
        declared,
        vars: declared.clone(),
        problems,
    };
    for file in &overrides.var_files {
        r.var_file(file, sources);
    }
    for (key, value) in &overrides.vars {
        r.set(
            key,
            Json::String(value.clone()),
            Path::new("--var"),
            Location::KeyPath(key.clone()),
        );
    }
    // The environment may be shared by several plans: undeclared SORTIE_VAR_* are ignored, not errors.
    for (name, value) in &overrides.env {
        if let Some(key) = name.strip_prefix(ENV_PREFIX) {
            if r.vars.contains_key(key) {
                r.vars.insert(key.to_string(), Json::String(value.clone()));
            }
        }
    }
    r.vars
}

/// The variables as resolved so far, and the problems found on the way.
struct Resolution<'a> {
    plan_file: &'a Path,
    declared: &'a IndexMap<String, Json>,
    vars: IndexMap<String, Json>,
    problems: &'a mut Vec<Diagnostic>,
}

impl Resolution<'_> {
    /// Sets a declared variable; an undeclared one is a problem at `origin`.
    fn set(&mut self, key: &str, value: Json, origin: &Path, location: Location) {
        if self.vars.contains_key(key) {
            self.vars.insert(key.to_string(), value);
            return;
        }
        let d = Diagnostic::new(
            origin,
            location,
            format!(
                "variable `{key}` is not declared in the plan's `vars` ({})",
                self.plan_file.display()
            ),
        );
        self.problems.push(
            match did_you_mean(key, self.declared.keys().map(String::as_str)) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help("declare it under `vars:` with a default"),
            },
        );
    }

    /// Sets every variable of a `--var-file`, a YAML mapping.
    fn var_file(&mut self, file: &Path, sources: &mut Sources) {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                self.problems.push(Diagnostic::new(
                    file,
                    Location::File,
                    format!("cannot read var file: {e}"),
                ));
                return;
            }
        };
        sources.insert(file, text.clone());
        let doc = match yaml::parse(&text) {
            Ok(doc) => doc,
            Err(e) => {
                self.problems.push(Diagnostic::new(
                    file,
                    e.span.map_or(Location::File, Location::Span),
                    e.message,
                ));
                return;
            }
        };
        let yaml::Value::Mapping(map) = &doc.value else {
            self.problems.push(Diagnostic::new(
                file,
                Location::File,
                "a var file must be a mapping of variable names to values",
            ));
            return;
        };
        for (k, v) in map {
            let key = yaml::scalar_text(k);
            let location = doc
                .spans
                .key(&yaml::join_key("", &key))
                .map_or(Location::File, Location::Span);
            self.set(&key, yaml::to_json(v), file, location);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_plan_file_cli_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("v.yaml");
        std::fs::write(&file, "a: from-file\nb: from-file\nc: from-file\n").expect("write");
        let declared: IndexMap<String, Json> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| (k.to_string(), Json::from("plan")))
            .collect();
        let overrides = Overrides {
            var_files: vec![file],
            vars: vec![("b".into(), "cli".into()), ("c".into(), "cli".into())],
            env: vec![
                ("SORTIE_VAR_c".into(), "env".into()),
                ("SORTIE_VAR_zzz".into(), "x".into()),
            ],
        };
        let mut problems = Vec::new();
        let vars = resolve(
            Path::new("p.yaml"),
            &declared,
            &overrides,
            &mut Sources::default(),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let got: Vec<_> = vars.values().filter_map(Json::as_str).collect();
        assert_eq!(got, ["from-file", "cli", "env", "plan"]);
    }

    #[test]
    fn undeclared_cli_var_is_an_error_with_suggestion() {
        let declared: IndexMap<String, Json> = [("region".to_string(), Json::from("x"))]
            .into_iter()
            .collect();
        let overrides = Overrides {
            vars: vec![("regon".into(), "y".into())],
            ..Overrides::default()
        };
        let mut problems = Vec::new();
        resolve(
            Path::new("p.yaml"),
            &declared,
            &overrides,
            &mut Sources::default(),
            &mut problems,
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].help.as_deref(), Some("did you mean `region`?"));
    }
}
