//! A run step's files on the aws target: the archive the host fetches and the shell lines that check it and put
//! it in place (docs/HOST_PROTOCOL.md, "A step's files"). Staging in S3 is `SsmHost::stage` (ssm_staging.rs),
//! shared with big scripts.

use std::fmt::Write as _;

use crate::host::ssm_scripts::{q, step_dir};

/// What the host prints when the archive is not the one sortie staged; sortie then deletes the staged object.
pub const SHA_MISMATCH: &str = "does not match its sha256";

/// A step's files packed for the host: the tar.gz (member `i` is shipment `i`) and, per member, its destination.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub archive: Vec<u8>,
    /// Normalised destinations (`step_files::check_dest`): relative to the step's working directory, or absolute.
    pub dests: Vec<String>,
}

/// A bundle staged in S3, as the launch command fetches it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: String,
    pub sha256: String,
    pub dests: Vec<String>,
}

/// Puts member `$1` of archive `$F` at `$2`: extracted beside it, then renamed in, so a crash never leaves a
/// half tree at the destination.
const PLACE: &str = r#"sortie_place() {
	p=$(dirname "$2"); mkdir -p "$p"; t=$(mktemp -d "$p/.sortie-files.XXXXXX")
	tar -xzmf "$F" -C "$t" "$1"
	rm -rf "$2.sortie-old"; if [ -e "$2" ] || [ -L "$2" ]; then mv -f "$2" "$2.sortie-old"; fi
	mv "$t/$1" "$2"; rm -rf "$t" "$2.sortie-old"
}
"#;

impl Delivery {
    /// Shell lines that download the archive, check its sha256 and put each member in place, once per attempt
    /// (a repeated launch of a running attempt must not replace the files under it).
    pub(crate) fn script(&self, out: &mut String, step: &str, attempt: u32) {
        let d = step_dir(step);
        let _ = writeln!(out, "D={d}; mkdir -p \"$D\"");
        let _ = writeln!(
            out,
            "if [ \"$(cat \"$D/attempt\" 2>/dev/null || :)\" != {attempt} ]; then"
        );
        out.push_str(PLACE);
        let _ = writeln!(out, "F=\"$H/files.$$.tar.gz\"");
        let _ = writeln!(
            out,
            "curl -fsS --retry 5 --retry-delay 1 -o \"$F\" {} || {{ echo {} >&2; exit 1; }}",
            q(&self.url),
            q(&format!(
                "sortie: cannot download the files of step `{step}`"
            ))
        );
        let _ = writeln!(
            out,
            "printf '%s  %s\\n' {} \"$F\" | sha256sum -c --status || {{ rm -f \"$F\"; echo {} >&2; exit 1; }}",
            self.sha256,
            q(&format!(
                "sortie: the files archive of step `{step}` {SHA_MISMATCH} {}: corrupted or replaced in S3",
                self.sha256
            ))
        );
        for (i, dest) in self.dests.iter().enumerate() {
            let target = match dest.strip_prefix('/') {
                Some(abs) => format!("\"${{SORTIE_HOST_ROOT:-}}\"/{}", q(abs)),
                None => format!("\"$D\"/{}", q(dest)),
            };
            let _ = writeln!(out, "sortie_place {i} {target}");
        }
        out.push_str("rm -f \"$F\"\nfi\n");
    }
}
