//! The `SORTIE_*` settings of a launch (docs/HOST_PROTOCOL.md, "Environment read by `launch` / `run`"), checked
//! before anything is written: a bad value is a usage error (exit 64) and leaves no half-made attempt.

use regex_lite::Regex;

use super::liveness::is_uint;

/// The default `SORTIE_PROGRESS`.
pub const DEFAULT_PROGRESS: &str = "[0-9]+/[0-9]+";

/// Checked settings. An empty variable counts as unset, as `${VAR:-default}` does in the wrapper.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lock: Option<String>,
    pub lock_dir: Option<String>,
    pub timeout: u64,
    pub kill_grace: u64,
    pub heartbeat_interval: u64,
    pub progress: Regex,
    pub metrics: Option<Regex>,
    pub workdir: Option<String>,
    pub restart_lost: bool,
}

impl Settings {
    /// Reads and checks the settings; `lookup` gives a variable's value. The error is the message of exit 64.
    pub fn read(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let lock = get("SORTIE_LOCK");
        if let Some(name) = &lock {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(format!("invalid lock name: {name}"));
            }
        }
        let number = |name: &str, default: u64| -> Result<u64, String> {
            let text = get(name).unwrap_or_else(|| default.to_string());
            let bad = || format!("{name} must be a whole number of seconds: {text}");
            if !is_uint(&text) {
                return Err(bad());
            }
            text.parse::<u64>().map_err(|_| bad())
        };
        let regex = |name: &str, text: &str| -> Result<Regex, String> {
            Regex::new(text).map_err(|_| format!("{name}: bad regex: {text}"))
        };
        // The AWS-only parts: a spot host's interruption notice is asked of EC2's instance metadata. The native
        // supervisor runs local steps only, so it refuses the request instead of silently not watching.
        if get("SORTIE_SPOT").as_deref() == Some("1") {
            return Err(
                "SORTIE_SPOT=1 is not supported by the native supervisor (use wrapper.sh)".into(),
            );
        }
        Ok(Settings {
            timeout: number("SORTIE_TIMEOUT", 0)?,
            kill_grace: number("SORTIE_KILL_GRACE", 10)?,
            heartbeat_interval: number("SORTIE_HEARTBEAT_INTERVAL", 30)?,
            progress: regex(
                "SORTIE_PROGRESS",
                &get("SORTIE_PROGRESS").unwrap_or_else(|| DEFAULT_PROGRESS.into()),
            )?,
            metrics: get("SORTIE_METRICS")
                .map(|m| regex("SORTIE_METRICS", &m))
                .transpose()?,
            lock,
            lock_dir: get("SORTIE_LOCK_DIR"),
            workdir: get("SORTIE_WORKDIR"),
            restart_lost: lookup("SORTIE_RESTART_LOST").as_deref() == Some("1"),
        })
    }

    /// The settings of this process's environment.
    pub fn from_process() -> Result<Settings, String> {
        Settings::read(&|name| std::env::var(name).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::Settings;

    fn read(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::read(&|name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn test_int_defaults_and_every_refusal() {
        let s = read(&[("SORTIE_TIMEOUT", "")]).expect("defaults");
        assert_eq!((s.timeout, s.kill_grace, s.heartbeat_interval), (0, 10, 30));
        assert!(s.progress.is_match("step 3/10") && s.metrics.is_none() && s.lock.is_none());
        for (name, value, says) in [
            ("SORTIE_LOCK", "../x", "invalid lock name"),
            ("SORTIE_TIMEOUT", "1h", "whole number"),
            ("SORTIE_KILL_GRACE", "-1", "whole number"),
            ("SORTIE_HEARTBEAT_INTERVAL", "0.5", "whole number"),
            ("SORTIE_PROGRESS", "(", "bad regex"),
            ("SORTIE_METRICS", "[", "bad regex"),
            ("SORTIE_SPOT", "1", "not supported"),
        ] {
            let err = read(&[(name, value)]).expect_err(name);
            assert!(err.contains(says), "{name}: {err}");
        }
        let s = read(&[("SORTIE_LOCK", "train-1.a_b"), ("SORTIE_RESTART_LOST", "1")]).expect("ok");
        assert_eq!(s.lock.as_deref(), Some("train-1.a_b"));
        assert!(s.restart_lost);
    }
}
