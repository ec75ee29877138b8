//! The compile-time phase of `files:` on a run step: every source exists, is inside the limits and holds only
//! files and directories; every destination is a safe host path; the content digest joins the step's digest.

use indexmap::IndexMap;

use crate::plan::{StateLocation, Step, StepKind, Target};
use crate::run::step_files::{self, Limits, Shipment};
use crate::{template, yaml};

impl super::Compiler {
    /// Checks a step's `files:`; returns the shipments and their content digest (`None` when there are none).
    pub(super) fn step_files(
        &mut self,
        id: &str,
        path: &str,
        files: Option<&IndexMap<String, String>>,
    ) -> (Vec<Shipment>, Option<String>) {
        let Some(files) = files.filter(|f| !f.is_empty()) else {
            return (Vec::new(), None);
        };
        let base = format!("{path}.files");
        let before = self.problems.len();
        let mut scanned: Vec<(Shipment, Vec<step_files::Entry>)> = Vec::new();
        for (name, dest) in files {
            if let Some(found) = self.one_file(id, &base, name, dest, &scanned) {
                scanned.push(found);
            }
        }
        self.check_totals(id, &base, &scanned);
        if self.problems.len() > before {
            return (Vec::new(), None);
        }
        match step_files::digest(&scanned) {
            Ok(digest) => (scanned.into_iter().map(|(s, _)| s).collect(), Some(digest)),
            Err(e) => {
                self.error(
                    self.key_at(&base),
                    format!("cannot read the files of step `{id}`: {e}"),
                );
                (Vec::new(), None)
            }
        }
    }

    /// Checks one `SOURCE: DESTINATION` pair against the ones before it; scans the source.
    fn one_file(
        &mut self,
        id: &str,
        base: &str,
        name: &str,
        dest: &str,
        scanned: &[(Shipment, Vec<step_files::Entry>)],
    ) -> Option<(Shipment, Vec<step_files::Entry>)> {
        let key = yaml::join_key(base, name);
        if template::is_template(name) || template::is_template(dest) {
            self.error_help(
                self.key_at(&key),
                format!("`files` of step `{id}` are not templates"),
                "write the source and the destination as plain paths",
            );
            return None;
        }
        let dest = match step_files::check_dest(dest) {
            Ok(d) => d,
            Err(why) => {
                self.error_help(
                    self.at(&key),
                    format!("step `{id}` ships `{name}` to `{dest}`, which {why}"),
                    "a destination is relative to the step's working directory, or absolute on the host",
                );
                return None;
            }
        };
        if let Some((other, _)) = scanned
            .iter()
            .find(|(s, _)| step_files::overlaps(&s.dest, &dest))
        {
            let message = format!(
                "step `{id}` ships `{name}` to `{dest}`, which overlaps `{}` (from `{}`)",
                other.dest, other.name
            );
            self.error(self.at(&key), message);
            return None;
        }
        if std::path::Path::new(name).is_absolute() {
            self.error_help(
                self.key_at(&key),
                format!("step `{id}` ships `{name}`, an absolute path"),
                "sources are relative to the plan file, so the plan works from any checkout",
            );
            return None;
        }
        let source = self.dir.join(name);
        match step_files::scan(&source, &Limits::default()) {
            Ok(entries) => Some((
                Shipment {
                    name: name.to_string(),
                    source,
                    dest,
                },
                entries,
            )),
            Err(why) => {
                self.error_help(
                    self.key_at(&key),
                    format!(
                        "step `{id}` ships `{name}`{}, which {why}",
                        shown(&source, name)
                    ),
                    "sources are files or directories relative to the plan file",
                );
                None
            }
        }
    }

    /// On aws, files travel through the run's S3 prefix, which exists only when state is in S3.
    pub(super) fn files_need_s3(
        &mut self,
        steps: &[Step],
        target: Option<&Target>,
        state: Option<&StateLocation>,
    ) {
        if !matches!(target, Some(Target::Aws { .. }))
            || !matches!(state, Some(StateLocation::Dir(_)))
        {
            return;
        }
        for step in steps {
            if matches!(&step.kind, StepKind::Run(r) if !r.files.is_empty()) {
                self.error_help(
                    self.key_at(&format!("{}.files", yaml::join_key("steps", &step.id))),
                    format!(
                        "step `{}` ships files to an aws host, which needs the run's state in S3",
                        step.id
                    ),
                    "set `state: s3://BUCKET/PREFIX`: the files travel through the run's S3 prefix",
                );
            }
        }
    }

    /// The limits hold for a step's files together, not only for each source.
    fn check_totals(
        &mut self,
        id: &str,
        base: &str,
        scanned: &[(Shipment, Vec<step_files::Entry>)],
    ) {
        let entries = || scanned.iter().flat_map(|(_, e)| e);
        let bytes: u64 = entries().map(|e| e.size).sum();
        let count = entries().filter(|e| !e.dir).count();
        if bytes > step_files::MAX_BYTES {
            self.error(
                self.key_at(base),
                format!(
                    "the files of step `{id}` are {} in all",
                    step_files::over_size(bytes, step_files::MAX_BYTES)
                ),
            );
        } else if count > step_files::MAX_FILES {
            self.error(
                self.key_at(base),
                format!(
                    "the files of step `{id}` are {count} in all; a step ships at most {}",
                    step_files::MAX_FILES
                ),
            );
        }
    }
}

/// The source's path, when it says more than the name as written (a plan outside the current directory).
fn shown(source: &std::path::Path, name: &str) -> String {
    if source == std::path::Path::new(name) {
        String::new()
    } else {
        format!(" ({})", source.display())
    }
}
