//! The shell scripts an SSM host is sent: the launch (wrapper, script and environment, inline or fetched from
//! S3), and the wait, status and cancel commands; and how a wait command's output splits back into status,
//! outputs and log. Paths are under `${SORTIE_HOST_ROOT:-}` (empty on AWS; docs/TEST_ENDPOINT.md).

use std::fmt::Write as _;
use std::time::Duration;

use indexmap::IndexMap;

use crate::host::local::{parse_status, HostStatus, WRAPPER};
use crate::host::ssm::{Delivery, SsmHost, Staged};

/// What separates a wait command's status, outputs and log in its stdout.
const OUTPUTS_MARK: &str = "===SORTIE-OUTPUTS===";
const LOG_MARK: &str = "===SORTIE-LOG===";
/// A host where nothing was launched yet (the apply died before the launch command) has no wrapper: every step
/// on it is absent.
const NO_WRAPPER_YET: &str = "[ -f \"$H/wrapper.sh\" ] || { echo state=absent; exit 0; }\n";

/// Shell-quotes one value.
pub(crate) fn q(value: &str) -> String {
    shlex::try_quote(value).map_or_else(|_| "''".to_string(), |c| c.into_owned())
}

/// The host's sortie directory and a step's status directory, as shell expressions.
const HOME: &str = "\"${SORTIE_HOST_ROOT:-}/var/lib/sortie\"";

pub(crate) fn step_dir(step: &str) -> String {
    format!(
        "\"${{SORTIE_HOST_ROOT:-}}/var/lib/sortie/steps\"/{}",
        q(step)
    )
}

/// Shell lines that write `bytes` to `path` (a shell expression) without any quoting hazard.
fn write_file(out: &mut String, path: &str, bytes: &[u8]) {
    let encoded = crate::target::aws::base64(bytes);
    // A temp name per shell ($$): two steps launched at once on one host both write wrapper.sh.
    let _ = writeln!(
        out,
        "printf '%s' '{encoded}' | base64 -d > {path}.$$.tmp && mv -f {path}.$$.tmp {path}"
    );
}

impl SsmHost {
    /// The command that installs the wrapper and the script, then starts `attempt` of `step` (the wrapper
    /// refuses duplicates, so sending it twice is harmless).
    pub fn launch_script(
        &self,
        step: &str,
        attempt: u32,
        script: &str,
        env: &[(String, String)],
        staged: &Staged,
        files: Option<&Delivery>,
    ) -> String {
        let mut s = String::from("set -eu\n");
        let _ = writeln!(s, "H={HOME}; mkdir -p \"$H/steps\" \"$H/scripts\"");
        write_file(&mut s, "\"$H/wrapper.sh\"", WRAPPER.as_bytes());
        let script_path = format!("\"$H/scripts\"/{}", q(&format!("{step}.{attempt}")));
        let env_path = format!("\"$H/scripts\"/{}", q(&format!("{step}.{attempt}.env")));
        // The rendered script may hold secrets: 0600 (a subshell, so the step keeps the host's umask).
        s.push_str("(umask 077\n");
        match &staged.script_url {
            Some(url) => {
                let _ = writeln!(
                    s,
                    "curl -fsS --retry 5 --retry-delay 1 -o {script_path} {}",
                    q(url)
                );
            }
            None => write_file(&mut s, &script_path, script.as_bytes()),
        }
        if let Some(url) = &staged.env_url {
            let _ = writeln!(
                s,
                "curl -fsS --retry 5 --retry-delay 1 -o {env_path} {}",
                q(url)
            );
        }
        s.push_str(")\n");
        if let Some(files) = files {
            files.script(&mut s, step, attempt);
        }
        if staged.env_url.is_some() {
            let _ = writeln!(s, ". {env_path}; rm -f {env_path}");
        } else {
            s.push_str(&env_exports(env));
        }
        let _ = writeln!(s, "export SORTIE_HOME=\"$H\"");
        let _ = writeln!(
            s,
            "sh \"$H/wrapper.sh\" launch {} {attempt} {script_path}",
            step_dir(step)
        );
        s
    }

    /// The command that waits for `step` on the host, then prints its outputs and its log (the full stdout is
    /// kept in S3 by SSM, which is where `plan logs` reads the log).
    pub fn wait_script(step: &str) -> String {
        let d = step_dir(step);
        format!(
            "H={HOME}\n{NO_WRAPPER_YET}sh \"$H/wrapper.sh\" wait {d} 5\nrc=$?\necho {OUTPUTS_MARK}\ncat {d}/outputs 2>/dev/null\necho {LOG_MARK}\ncat {d}/output.log 2>/dev/null\nexit $rc\n"
        )
    }

    pub fn status_script(step: &str) -> String {
        format!(
            "H={HOME}\n{NO_WRAPPER_YET}sh \"$H/wrapper.sh\" status {}\n",
            step_dir(step)
        )
    }

    pub fn cancel_script(step: &str, grace: Duration) -> String {
        format!(
            "H={HOME}\n{NO_WRAPPER_YET}sh \"$H/wrapper.sh\" cancel {} {}\n",
            step_dir(step),
            grace.as_secs()
        )
    }
}

/// `export K='v'` lines for the step's environment.
pub(super) fn env_exports(env: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in env {
        let _ = writeln!(s, "export {k}={}", q(v));
    }
    s
}

/// Splits a wait command's stdout into the wrapper's status, the step's outputs and its log.
pub fn split_wait_output(stdout: &str) -> (HostStatus, IndexMap<String, String>, String) {
    let (head, rest) = stdout.split_once(OUTPUTS_MARK).unwrap_or((stdout, ""));
    let (outputs, log) = rest.split_once(LOG_MARK).unwrap_or((rest, ""));
    let outputs = outputs
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    (
        parse_status(head),
        outputs,
        log.trim_start_matches('\n').to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_output_splits_into_status_outputs_and_log() {
        let out = format!("state=succeeded\nattempt=1\nexit_code=0\n{OUTPUTS_MARK}\na=1\nb=x=y\n{LOG_MARK}\nhello\n");
        let (status, outputs, log) = split_wait_output(&out);
        assert_eq!(status.state, crate::host::protocol::HostState::Succeeded);
        assert_eq!(outputs.get("b").map(String::as_str), Some("x=y"));
        assert_eq!(log, "hello\n");
    }
}
