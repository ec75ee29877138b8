//! Where a step's work can be found again after a crash: stored in state before anything is created or launched,
//! and read back on re-entry, by `plan status` and by `plan logs`.
//!
//! Stored tagged by `kind` (`{"kind": "ssm_run", "host": "i-…", "wait_command": "…"}`). Runs written before the
//! tag held a plain string map (`{"host": "i-…"}`); [`read`] still accepts those, told apart by their keys.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Handle {
    /// Nothing to find again (not started, or a teardown).
    #[default]
    None,
    /// A local instance: its sandbox.
    LocalSandbox { home: String },
    /// A local volume: its directory.
    LocalVolume { dir: String },
    /// A run step on a local host: the attempt's status directory.
    LocalRun { status_dir: String },
    /// An AWS create call: the idempotency token its resources are tagged with.
    Token { token: String },
    /// A run step on an SSM host: the instance, and the command that waits for the step there (once sent).
    SsmRun {
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_command: Option<String>,
    },
}

impl Handle {
    pub fn is_none(&self) -> bool {
        *self == Handle::None
    }

    /// The local status directory of a run step, if it ran on a local host.
    pub fn status_dir(&self) -> Option<&str> {
        match self {
            Handle::LocalRun { status_dir } => Some(status_dir),
            _ => None,
        }
    }

    /// The instance a run step ran on, if it ran on an SSM host.
    pub fn ssm_host(&self) -> Option<&str> {
        match self {
            Handle::SsmRun { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The SSM command that waits for the step, once sent.
    pub fn wait_command(&self) -> Option<&str> {
        match self {
            Handle::SsmRun { wait_command, .. } => wait_command.as_deref(),
            _ => None,
        }
    }

    /// A handle as runs before the tag stored it: a string map, told apart by its keys.
    fn legacy(map: &IndexMap<String, String>) -> Result<Handle, String> {
        let get = |k: &str| map.get(k).cloned();
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        Ok(match keys.as_slice() {
            [] => Handle::None,
            ["home"] => Handle::LocalSandbox {
                home: get("home").unwrap_or_default(),
            },
            ["dir"] => Handle::LocalVolume {
                dir: get("dir").unwrap_or_default(),
            },
            ["status_dir"] => Handle::LocalRun {
                status_dir: get("status_dir").unwrap_or_default(),
            },
            ["token"] => Handle::Token {
                token: get("token").unwrap_or_default(),
            },
            ["host"] | ["host", "wait_command"] => Handle::SsmRun {
                host: get("host").unwrap_or_default(),
                wait_command: get("wait_command"),
            },
            _ => return Err(format!("unknown handle with keys {keys:?}")),
        })
    }
}

/// `deserialize_with` for `StepState::handle`: the tagged form, or the string map of older runs. State comes from
/// S3 or a CI artifact, so anything else is an error (exit 2 at the state file), never a guess.
pub fn read<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Handle, D::Error> {
    use serde::de::Error as _;
    let value = serde_json::Value::deserialize(d)?;
    if value.get("kind").is_some() {
        return Handle::deserialize(value).map_err(D::Error::custom);
    }
    let map: IndexMap<String, String> =
        serde_json::from_value(value).map_err(|e| D::Error::custom(format!("handle: {e}")))?;
    Handle::legacy(&map).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct Doc {
        #[serde(deserialize_with = "read")]
        handle: Handle,
    }

    fn parse(text: &str) -> Result<Handle, String> {
        serde_json::from_str::<Doc>(text)
            .map(|d| d.handle)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tagged_handles_round_trip() {
        for h in [
            Handle::None,
            Handle::LocalRun {
                status_dir: "/s".into(),
            },
            Handle::SsmRun {
                host: "i-1".into(),
                wait_command: Some("c-1".into()),
            },
            Handle::SsmRun {
                host: "i-1".into(),
                wait_command: None,
            },
        ] {
            let text = serde_json::to_string(&Doc { handle: h.clone() }).expect("serializes");
            assert_eq!(parse(&text).expect("reads"), h, "{text}");
        }
    }

    #[test]
    fn older_string_maps_still_read() {
        assert_eq!(parse(r#"{"handle": {}}"#).expect("reads"), Handle::None);
        assert_eq!(
            parse(r#"{"handle": {"host": "i-9", "wait_command": "c"}}"#).expect("reads"),
            Handle::SsmRun {
                host: "i-9".into(),
                wait_command: Some("c".into())
            }
        );
        assert_eq!(
            parse(r#"{"handle": {"status_dir": "/x"}}"#)
                .expect("reads")
                .status_dir(),
            Some("/x")
        );
        assert_eq!(
            parse(r#"{"handle": {"token": "t"}}"#).expect("reads"),
            Handle::Token { token: "t".into() }
        );
    }

    #[test]
    fn unknown_or_malformed_handles_are_refused() {
        assert!(parse(r#"{"handle": {"pid": "1"}}"#)
            .expect_err("refused")
            .contains("unknown handle"));
        assert!(parse(r#"{"handle": {"kind": "rocket"}}"#).is_err());
        assert!(parse(r#"{"handle": {"kind": "local_run"}}"#).is_err());
        assert!(parse(r#"{"handle": {"kind": "token", "token": "t", "x": 1}}"#).is_err());
        assert!(parse(r#"{"handle": ["status_dir"]}"#).is_err());
    }
}
