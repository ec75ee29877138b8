//! Deserializing a part of the plan into its serde model, with every unknown key and ill-typed value reported at
//! its position (and a "did you mean" where a known key is near).

use serde::de::DeserializeOwned;

use crate::diagnostic::{did_you_mean, Location, Span};
use crate::plan_file;
use crate::yaml;

impl super::Compiler {
    /// Deserializes `value` (found at `path`), reporting unknown keys and type errors as diagnostics.
    pub(super) fn deserialize<T: DeserializeOwned>(
        &mut self,
        value: &yaml::Value,
        path: &str,
    ) -> Option<T> {
        let mut unknown: Vec<Vec<String>> = Vec::new();
        let result: Result<T, _> = {
            let mut record = |p: serde_ignored::Path<'_>| unknown.push(ignored_segments(&p));
            serde_ignored::deserialize(value, &mut record)
        };
        for segments in unknown {
            self.unknown_key(path, &segments);
        }
        match result {
            Ok(v) => Some(v),
            // Only a value that does not fit pays for tracking its key path: deserialize it again.
            Err(_) => {
                let Err(e) = serde_path_to_error::deserialize::<_, T>(value) else {
                    return None;
                };
                let mut full = path.to_string();
                for segment in e.path().iter() {
                    full = match segment {
                        serde_path_to_error::Segment::Seq { index } => format!("{full}[{index}]"),
                        serde_path_to_error::Segment::Map { key } => yaml::join_key(&full, key),
                        serde_path_to_error::Segment::Enum { variant } => {
                            yaml::join_key(&full, variant)
                        }
                        serde_path_to_error::Segment::Unknown => full,
                    };
                }
                let inner = e.into_inner().to_string();
                let inner = inner
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let shown = if full.is_empty() {
                    "the plan".to_string()
                } else {
                    format!("`{full}`")
                };
                if inner.starts_with("missing field") {
                    let location = if full.is_empty() {
                        Location::Span(Span {
                            line: 1,
                            column: 1,
                            len: 1,
                        })
                    } else {
                        self.key_at(&full)
                    };
                    self.error(location, format!("{inner} in {shown}"));
                } else {
                    // A key that is not a string (`42:` as a step id) is reported on its own line, not the map's.
                    let location = literal_in(&inner)
                        .and_then(|lit| self.spans.key(&yaml::join_key(&full, lit)))
                        .map_or_else(|| self.at(&full), Location::Span);
                    self.error(location, format!("invalid value for {shown}: {inner}"));
                }
                None
            }
        }
    }

    fn unknown_key(&mut self, base: &str, segments: &[String]) {
        let Some((key, parents)) = segments.split_last() else {
            return;
        };
        let mut parent = base.to_string();
        for s in parents {
            parent = yaml::join_key(&parent, s);
        }
        let full = yaml::join_key(&parent, key);
        let candidates: &[&str] = match (base, parents.first().map(String::as_str), parents.len()) {
            ("", None, _) => plan_file::TOP_FIELDS,
            // The plan-level pass skips over every step (IgnoredAny); steps are checked one by one.
            ("", Some("steps"), _) => return,
            ("", Some("target"), 1) => plan_file::TARGET_FIELDS,
            ("", Some("defaults"), 1) => plan_file::DEFAULTS_FIELDS,
            ("", Some("notify"), 1) => plan_file::NOTIFY_FIELDS,
            // A step's own keys are checked in `read_steps`, which knows its kind.
            (b, None, _) if b.starts_with("steps.") => return,
            (b, Some("heartbeat"), 1) if b.starts_with("steps.") => plan_file::HEARTBEAT_FIELDS,
            _ => &[],
        };
        let message = if parent.is_empty() {
            format!("unknown key `{key}` at the top of the plan")
        } else {
            format!("unknown key `{key}` in `{parent}`")
        };
        let location = self.key_at(&full);
        match did_you_mean(key, candidates.iter().copied()) {
            Some(s) => self.error_help(location, message, format!("did you mean `{s}`?")),
            None if !candidates.is_empty() => self.error_help(
                location,
                message,
                format!("expected one of: {}", candidates.join(", ")),
            ),
            None => self.error(location, message),
        }
    }
}

fn ignored_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    let mut segments = Vec::new();
    let mut p = path;
    loop {
        match p {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                segments.push(format!("[{index}]"));
                p = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                segments.push(key.clone());
                p = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => p = parent,
        }
    }
    segments.reverse();
    segments
}

/// The literal serde quotes in "invalid type: integer `42`, expected ...": the offending key or value.
fn literal_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("invalid type: ")?;
    let start = rest.find('`')? + 1;
    let len = rest[start..].find('`')?;
    Some(&rest[start..start + len])
}
