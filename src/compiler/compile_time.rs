//! Values known when the plan is compiled: plan-level templates rendered with `vars` only, and the durations and
//! sizes written in the plan.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::template::{self, Reference};

impl super::Compiler {
    /// Renders a plan-level field now; it may use `vars` only.
    pub(super) fn render_compile_time(
        &mut self,
        path: &str,
        text: &str,
        ctx: &minijinja::Value,
    ) -> Option<String> {
        if !template::is_template(text) {
            return Some(text.to_string());
        }
        let refs = self.references(path, text)?;
        let mut ok = true;
        for r in &refs {
            if r.root() != "vars" {
                ok = false;
                self.error_help(
                    self.at(path),
                    format!(
                        "`{path}` is rendered when the plan is compiled, so it cannot use `{}`",
                        r.0
                    ),
                    "only `vars` are known at compile time",
                );
            }
        }
        if !ok {
            return None;
        }
        match template::render_str(&self.env, path, text, ctx) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(
                    self.at(path),
                    format!("cannot render `{path}`: {}", template::error_message(&e)),
                );
                None
            }
        }
    }

    /// Parses a template (reporting syntax errors at the YAML position) and checks its `vars` references.
    pub(super) fn references(&mut self, path: &str, text: &str) -> Option<BTreeSet<Reference>> {
        match template::references(&self.env, path, text) {
            Ok(refs) => Some(refs),
            Err(e) => {
                self.error(
                    self.at(path),
                    format!(
                        "template error in `{path}`: {}",
                        template::error_message(&e)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        text: Option<&str>,
        ctx: &minijinja::Value,
    ) -> Option<Duration> {
        let text = self.render_compile_time(path, text?, ctx)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(self.at(path), format!("`{path}` must be longer than zero"));
                None
            }
            Err(e) => {
                self.error_help(
                    self.at(path),
                    format!("invalid duration `{text}` for `{path}`: {e}"),
                    "write a duration such as `90s`, `15m`, `20h` or `1h 30m`",
                );
                None
            }
        }
    }

    pub(super) fn size(
        &mut self,
        path: &str,
        text: Option<&str>,
        ctx: &minijinja::Value,
    ) -> Option<u64> {
        let text = self.render_compile_time(path, text?, ctx)?;
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => Some(size.as_u64()),
            Ok(_) => {
                self.error(self.at(path), format!("`{path}` must be larger than zero"));
                None
            }
            Err(e) => {
                self.error_help(
                    self.at(path),
                    format!("invalid size `{text}` for `{path}`: {e}"),
                    "write a size such as `300GiB` or `100 GB`",
                );
                None
            }
        }
    }
}
