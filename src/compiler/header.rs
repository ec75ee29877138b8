//! The plan-level fields: its name and description, where it runs (`target`), where its state lives (`state`),
//! how runs are operated (`operation`) and the step defaults. Templates among them may use `vars` only.

use std::time::Duration;

use indexmap::IndexMap;
use serde_json::Value as Json;

use super::valid_name;
use crate::plan::{Operation, StateLocation, Target};
use crate::plan_file::PlanFile;

const DEFAULT_BACKOFF: Duration = Duration::from_secs(5);

/// The plan-level fields; a `None` is a field that did not compile (its problem is reported).
pub(super) struct Header {
    pub name: String,
    pub description: Option<String>,
    pub target: Option<Target>,
    pub state: Option<StateLocation>,
    pub operation: Option<Operation>,
    pub defaults: Defaults,
}

/// What a step that does not say gets.
pub(super) struct Defaults {
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub backoff: Duration,
}

impl super::Compiler {
    pub(super) fn header(
        &mut self,
        raw: &PlanFile<serde::de::IgnoredAny>,
        vars: &IndexMap<String, Json>,
        vars_ctx: &minijinja::Value,
    ) -> Header {
        let name = raw.plan.clone();
        if !valid_name(&name) {
            self.error_help(
                self.at("plan"),
                format!("invalid plan name `{name}`"),
                "use letters, digits, `-` and `_` (it names state directories and tags)",
            );
        }
        let description = raw
            .description
            .as_deref()
            .and_then(|d| self.render_compile_time("description", d, vars_ctx));
        let target = self.target(raw, vars_ctx);
        let state = self.state(raw, vars_ctx);
        let operation = self.operation(raw, vars, vars_ctx);
        let defaults = raw.defaults.clone().unwrap_or_default();
        let timeout = self.duration("defaults.timeout", defaults.timeout.as_deref(), vars_ctx);
        let backoff = self.duration("defaults.backoff", defaults.backoff.as_deref(), vars_ctx);
        Header {
            name,
            description,
            target,
            state,
            operation,
            defaults: Defaults {
                timeout,
                retries: defaults.retries.unwrap_or(0),
                backoff: backoff.unwrap_or(DEFAULT_BACKOFF),
            },
        }
    }

    fn target(
        &mut self,
        raw: &PlanFile<serde::de::IgnoredAny>,
        ctx: &minijinja::Value,
    ) -> Option<Target> {
        let t = raw.target.clone().unwrap_or_default();
        let field = |name: &str,
                     value: &Option<String>,
                     this: &mut super::Compiler|
         -> Option<Option<String>> {
            match value {
                Some(v) => this
                    .render_compile_time(&format!("target.{name}"), v, ctx)
                    .map(Some),
                None => Some(None),
            }
        };
        let provider = field("provider", &t.provider, self)?;
        let region = field("region", &t.region, self)?;
        let endpoint_url = field("endpoint_url", &t.endpoint_url, self)?;
        let profile = field("profile", &t.profile, self)?;
        let root = field("root", &t.root, self)?;
        match provider.as_deref().unwrap_or("local") {
            "local" => Some(Target::Local {
                root: root.map_or_else(
                    || self.dir.join(".sortie").join("hosts"),
                    |r| self.dir.join(r),
                ),
            }),
            "aws" => Some(Target::Aws {
                region,
                endpoint_url,
                profile,
            }),
            other => {
                self.error_help(
                    self.at("target.provider"),
                    format!("unknown target provider `{other}`"),
                    "expected `local` or `aws`",
                );
                None
            }
        }
    }

    fn state(
        &mut self,
        raw: &PlanFile<serde::de::IgnoredAny>,
        ctx: &minijinja::Value,
    ) -> Option<StateLocation> {
        let Some(text) = &raw.state else {
            return Some(StateLocation::Dir(self.dir.join(".sortie").join("state")));
        };
        let text = self.render_compile_time("state", text, ctx)?;
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                self.error_help(
                    self.at("state"),
                    "the S3 state location has no bucket",
                    "write s3://BUCKET/PREFIX",
                );
                return None;
            }
            return Some(StateLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if text.contains("://") {
            self.error_help(
                self.at("state"),
                format!("unsupported state location `{text}`"),
                "use a directory or s3://BUCKET/PREFIX",
            );
            return None;
        }
        Some(StateLocation::Dir(self.dir.join(text)))
    }
}
