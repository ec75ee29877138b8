//! The first phase: read the plan file and parse it into a YAML document whose every node has a position.

use crate::diagnostic::{Diagnostic, Location};
use crate::{loader, yaml};

impl super::Compiler {
    /// The parsed plan, a mapping; its spans become the compiler's. `None` when nothing more can be checked.
    pub(super) fn document(&mut self) -> Option<yaml::Value> {
        let text = match loader::read_text(&self.file, "plan file") {
            Ok(text) => text,
            Err(d) => {
                self.problems.push(d);
                return None;
            }
        };
        self.sources.insert(&self.file, text.clone());
        let doc = match yaml::parse(&text) {
            Ok(doc) => doc,
            Err(e) => {
                let d = Diagnostic::new(
                    &self.file,
                    e.span.map_or(Location::File, Location::Span),
                    e.message,
                );
                self.problems.push(match e.help {
                    Some(h) => d.with_help(h),
                    None => d,
                });
                return None;
            }
        };
        let yaml::Document { value, spans } = doc;
        self.spans = spans;
        if !matches!(value, yaml::Value::Mapping(_)) {
            self.error_help(
                self.at(""),
                "a plan must be a YAML mapping",
                "start with `plan: NAME` and `steps:`; see examples/quickstart.yaml",
            );
            return None;
        }
        Some(value)
    }
}

/// The `steps` mapping's entries in order, each id with its value (none when `steps` is not a mapping).
pub(super) fn step_values(plan: &yaml::Value) -> Vec<(String, &yaml::Value)> {
    plan.get("steps")
        .and_then(yaml::Value::as_mapping)
        .map(|m| m.iter().map(|(k, v)| (yaml::scalar_text(k), v)).collect())
        .unwrap_or_default()
}
