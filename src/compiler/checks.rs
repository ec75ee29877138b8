//! Rules that hold across steps, checked once every step is typed.

use std::collections::HashMap;

use super::header::Header;
use crate::plan::{Step, StepKind};
use crate::template;
use crate::yaml;

impl super::Compiler {
    /// `None` when a step, or a rule across steps, has a problem: the graph is not built then.
    pub(super) fn check_steps(&mut self, steps: &[Step], header: &Header) -> Option<()> {
        self.files_need_s3(steps, header.target.as_ref(), header.state.as_ref());
        if !self.problems.is_empty() {
            return None;
        }
        self.duplicate_mounts(steps);
        self.problems.is_empty().then_some(())
    }

    /// Two volumes mounted at the same point of one instance would hide one another.
    fn duplicate_mounts(&mut self, steps: &[Step]) {
        let mut seen: HashMap<(&str, String), &str> = HashMap::new();
        for step in steps {
            let StepKind::Volume(v) = &step.kind else {
                continue;
            };
            if template::is_template(&v.mount) {
                continue;
            }
            let normal: Vec<&str> = v
                .mount
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect();
            let key = (v.attach_to.as_str(), normal.join("/"));
            if let Some(&first) = seen.get(&key) {
                self.error_help(
                    self.at(&format!("{}.mount", yaml::join_key("steps", &step.id))),
                    format!(
                        "volumes `{first}` and `{}` are both mounted at `{}` on instance `{}`",
                        step.id, v.mount, v.attach_to
                    ),
                    "give each volume of an instance its own mount point",
                );
            } else {
                seen.insert(key, &step.id);
            }
        }
    }
}
