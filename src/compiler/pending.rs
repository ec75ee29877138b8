//! Reading each step as written: a valid id, a `kind`, keys that the kind takes, and an id that stays distinct in
//! templates (where dashes read as underscores). Typing the step comes after, in `step`.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::valid_name;
use crate::diagnostic::did_you_mean;
use crate::plan_file::{self, KindName, RawStep};
use crate::template;
use crate::yaml;

/// A step as read, before typing.
pub(super) struct Pending {
    pub id: String,
    pub raw: RawStep,
    pub json: Json,
    pub kind: KindName,
}

impl super::Compiler {
    /// The steps that can be typed, in plan order; the others are reported.
    pub(super) fn read_steps(&mut self, steps: Vec<(String, &yaml::Value)>) -> Vec<Pending> {
        let mut out = Vec::with_capacity(steps.len());
        let mut aliases: HashMap<String, String> = HashMap::with_capacity(steps.len());
        for (id, value) in steps {
            let Some(p) = self.read_step(id, value) else {
                continue;
            };
            let alias = template::step_alias(&p.id);
            if let Some(clash) = aliases.get(&alias) {
                self.error_help(
                    self.key_at(&yaml::join_key("steps", &p.id)),
                    format!(
                        "step ids `{clash}` and `{}` are the same in templates",
                        p.id
                    ),
                    "templates write dashes as underscores (`steps.prep_data`); rename one of them",
                );
                continue;
            }
            aliases.insert(alias, p.id.clone());
            out.push(p);
        }
        if out.is_empty() && self.problems.is_empty() {
            self.error_help(
                self.at("steps"),
                "the plan has no steps",
                "add at least one step under `steps:`",
            );
        }
        out
    }

    fn read_step(&mut self, id: String, value: &yaml::Value) -> Option<Pending> {
        let path = yaml::join_key("steps", &id);
        if !valid_name(&id) {
            self.error_help(
                self.key_at(&path),
                format!("invalid step id `{id}`"),
                "use letters, digits, `-` and `_`, at most 64 characters",
            );
            return None;
        }
        let json = yaml::to_json(value);
        let keys: Vec<String> = match value {
            yaml::Value::Mapping(m) => m.keys().map(yaml::scalar_text).collect(),
            _ => Vec::new(),
        };
        let raw = self.deserialize::<RawStep>(value, &path)?;
        let Some(kind) = raw.kind else {
            self.error_help(
                self.key_at(&path),
                format!("step `{id}` has no `kind`"),
                "add `kind:` with one of: instance, volume, run, teardown",
            );
            return None;
        };
        for key in &keys {
            self.check_step_key(&path, kind, key);
        }
        Some(Pending {
            id,
            raw,
            json,
            kind,
        })
    }

    /// A key of a step must be a step field, and one that its kind takes.
    fn check_step_key(&mut self, path: &str, kind: KindName, key: &str) {
        let allowed = plan_file::kind_fields(kind);
        // Positions are found only for keys that turn out to be wrong: finding them costs a second parse.
        let location = || self.key_at(&yaml::join_key(path, key));
        if !plan_file::STEP_FIELDS.contains(&key) {
            let message = format!("unknown key `{key}` in `{path}`");
            let help = match did_you_mean(key, plan_file::STEP_FIELDS.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "{} `{}` step takes: {}, {}",
                    if kind == KindName::Instance {
                        "an"
                    } else {
                        "a"
                    },
                    kind.as_str(),
                    plan_file::COMMON_FIELDS.join(", "),
                    allowed.join(", ")
                ),
            };
            self.error_help(location(), message, help);
            return;
        }
        if plan_file::COMMON_FIELDS.contains(&key) || allowed.contains(&key) {
            return;
        }
        let owner = [
            KindName::Instance,
            KindName::Volume,
            KindName::Run,
            KindName::Teardown,
        ]
        .into_iter()
        .find(|k| plan_file::kind_fields(*k).contains(&key))
        .map_or("another", KindName::as_str);
        self.error_help(
            location(),
            format!("`{key}` is not a field of a `{}` step", kind.as_str()),
            format!("`{key}` belongs to `{owner}` steps"),
        );
    }
}
