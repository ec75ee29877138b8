//! SSM's size limit on a Run Command, and how a launch stays under it.
//!
//! AWS: "The content of the document must not exceed 64KB. This quota also includes the content specified for
//! input parameters at runtime." (Systems Manager API reference, CreateDocument, `Content`); SendCommand answers
//! `MaxDocumentSizeExceeded` above it. A launch command carries the wrapper (about 21 KB in base64) beside the
//! script, so a script of 30-odd KB is already too big inline: the launch is measured as it will be sent, and what
//! does not fit travels through S3 (docs/HOST_PROTOCOL.md).

/// SSM's limit: the document's content plus the run-time parameters.
pub const DOCUMENT_LIMIT: usize = 64 * 1024;

/// What sortie lets the parameters take. AWS-RunShellScript's own content (about 1 KB of JSON) counts against the
/// limit too, and AWS does not say how it measures the parameters: 4 KiB is left for both.
pub const PARAMETERS_BUDGET: usize = DOCUMENT_LIMIT - 4 * 1024;

/// The size of an AWS-RunShellScript command's run-time parameters, as the JSON of the SendCommand request.
pub fn parameters_size(script: &str, execution_timeout_secs: u64) -> usize {
    serde_json::json!({
        "commands": [script],
        "executionTimeout": [execution_timeout_secs.to_string()],
    })
    .to_string()
    .len()
}

/// Whether a command fits the budget.
pub fn fits(script: &str, execution_timeout_secs: u64) -> bool {
    parameters_size(script, execution_timeout_secs) <= PARAMETERS_BUDGET
}

/// How much of a launch travels through S3 instead of inside the command, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Staging {
    /// Only what must (a secret, or nothing).
    AsNeeded,
    /// The script, too.
    Script,
    /// The script and the environment.
    ScriptAndEnv,
}

impl Staging {
    /// The next step up, if any.
    pub fn more(self) -> Option<Staging> {
        match self {
            Staging::AsNeeded => Some(Staging::Script),
            Staging::Script => Some(Staging::ScriptAndEnv),
            Staging::ScriptAndEnv => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_int_json_escapes_count_against_the_budget() {
        let plain = parameters_size("abcd", 300);
        // Each newline and quote is two bytes in the request.
        assert_eq!(parameters_size("a\nb\"", 300), plain + 2);
        assert!(fits(&"x".repeat(PARAMETERS_BUDGET - 100), 300));
        assert!(!fits(&"x".repeat(PARAMETERS_BUDGET), 300));
        assert!(!fits(&"\n".repeat(PARAMETERS_BUDGET / 2 + 1), 300));
    }

    #[test]
    fn test_int_staging_grows_to_everything_then_stops() {
        assert_eq!(Staging::AsNeeded.more(), Some(Staging::Script));
        assert_eq!(Staging::Script.more(), Some(Staging::ScriptAndEnv));
        assert_eq!(Staging::ScriptAndEnv.more(), None);
    }
}
