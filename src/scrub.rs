//! Scrubs secrets by value from every string sortie persists or emits: the values of secret-named variables and
//! outputs, and text shaped like a well-known credential (AWS access key ids, Hugging Face tokens, PEM private
//! keys). It is applied where strings leave memory (state save, events, status, served logs, S3 writes), so a
//! failing step that prints a secret does not put it into state, events or logs.

use std::borrow::Cow;
use std::sync::{OnceLock, RwLock};

use serde_json::Value as Json;

pub const REDACTED: &str = "<redacted>";

/// Shorter values are not scrubbed: replacing every `ab` in a log would destroy it and protect little.
const MIN_SECRET_LEN: usize = 4;

#[derive(Debug, Default, Clone)]
pub struct Scrubber {
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<String>,
}

/// Credential shapes; a PEM block runs to its END line, or to the end of the text when cut off.
fn shapes() -> &'static regex_lite::Regex {
    static RE: OnceLock<regex_lite::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex_lite::Regex::new(
            r"(?:AKIA|ASIA)[A-Z0-9]{16}|hf_[A-Za-z0-9]{20,}|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
        )
        .expect("the credential pattern compiles")
    })
}

impl Scrubber {
    /// Adds a secret value (too-short values are ignored).
    pub fn add(&mut self, value: &str) {
        let value = value.trim();
        if value.chars().count() < MIN_SECRET_LEN || self.values.iter().any(|v| v == value) {
            return;
        }
        self.values.push(value.to_string());
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        // regex-lite is slow on long text: only text with a credential's prefix goes through it.
        let maybe_shape = ["AKIA", "ASIA", "hf_", "-----BEGIN "]
            .iter()
            .any(|p| text.contains(p));
        let mut out = match maybe_shape {
            true => match shapes().replace_all(text, REDACTED) {
                Cow::Borrowed(_) => Cow::Borrowed(text),
                Cow::Owned(s) => Cow::Owned(s),
            },
            false => Cow::Borrowed(text),
        };
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), REDACTED));
            }
        }
        out
    }

    /// Every string in a JSON document, keys included.
    pub fn json(&self, value: &mut Json) {
        match value {
            Json::String(s) => {
                if let Cow::Owned(clean) = self.text(s) {
                    *s = clean;
                }
            }
            Json::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            Json::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.json(&mut v);
                    map.insert(self.text(&k).into_owned(), v);
                }
            }
            _ => {}
        }
    }

    /// Any serializable value, scrubbed and read back as its own type.
    pub fn value<T: serde::Serialize + serde::de::DeserializeOwned>(&self, value: &T) -> Option<T> {
        let mut json = serde_json::to_value(value).ok()?;
        self.json(&mut json);
        serde_json::from_value(json).ok()
    }
}

fn global() -> &'static RwLock<Scrubber> {
    // Process-wide: secrets become known as an apply goes (a step's secret output), and every place a string
    // leaves memory must see all of them without each caller threading a scrubber through.
    static GLOBAL: OnceLock<RwLock<Scrubber>> = OnceLock::new();
    GLOBAL.get_or_init(|| RwLock::new(Scrubber::default()))
}

/// Registers a secret value for the rest of the process.
pub fn add_secret(value: &str) {
    if let Ok(mut s) = global().write() {
        s.add(value);
    }
}

/// Registers the values of secret-named variables (strings, numbers, and the strings inside lists and maps).
pub fn add_secret_vars(vars: &indexmap::IndexMap<String, Json>) {
    fn walk(v: &Json) {
        match v {
            Json::String(s) => add_secret(s),
            Json::Number(n) => add_secret(&n.to_string()),
            Json::Array(items) => items.iter().for_each(walk),
            Json::Object(map) => map.values().for_each(walk),
            _ => {}
        }
    }
    vars.iter()
        .filter(|(k, _)| crate::state::is_secret_name(k))
        .for_each(|(_, v)| walk(v));
}

/// A snapshot of the process's scrubber.
pub fn current() -> Scrubber {
    global().read().map(|s| s.clone()).unwrap_or_default()
}

pub fn text(text: &str) -> String {
    current().text(text).into_owned()
}

/// Scrubs a log line by line as it streams; a PEM block spans lines, so that state is carried between them.
pub struct LineScrubber {
    scrubber: Scrubber,
    in_key: bool,
}

impl LineScrubber {
    pub fn new() -> LineScrubber {
        LineScrubber {
            scrubber: current(),
            in_key: false,
        }
    }

    /// One line (with its newline, if any), as bytes; a line that is not UTF-8 is shown lossily.
    pub fn line(&mut self, line: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(line);
        let is_end = text.contains("-----END ") && text.contains("PRIVATE KEY-----");
        let begins = text.contains("-----BEGIN ") && text.contains("PRIVATE KEY-----") && !is_end;
        if self.in_key || begins {
            self.in_key = !is_end;
            let newline = if text.ends_with('\n') { "\n" } else { "" };
            return format!("{REDACTED}{newline}").into_bytes();
        }
        match self.scrubber.text(&text) {
            // Nothing to hide: the bytes as they were, even when they are not UTF-8.
            Cow::Borrowed(_) => line.to_vec(),
            clean => clean.into_owned().into_bytes(),
        }
    }
}

impl Default for LineScrubber {
    fn default() -> Self {
        LineScrubber::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_shapes_are_scrubbed() {
        let mut s = Scrubber::default();
        s.add("hunter2-secret");
        s.add("ab");
        let text =
            "pw=hunter2-secret key=AKIAABCDEFGHIJKLMNOP tok=hf_abcdefghijklmnopqrstuvwxyz ab";
        assert_eq!(
            s.text(text),
            "pw=<redacted> key=<redacted> tok=<redacted> ab"
        );
        let pem = "a\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nb";
        assert_eq!(s.text(pem), "a\n<redacted>\nb");
    }

    #[test]
    fn json_keys_and_values_are_scrubbed() {
        let mut s = Scrubber::default();
        s.add("s3cr3t-value");
        let mut doc = serde_json::json!({"e": ["x s3cr3t-value y"], "s3cr3t-value": 1});
        s.json(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"e": ["x <redacted> y"], "<redacted>": 1})
        );
    }

    #[test]
    fn every_event_survives_scrubbing() {
        use crate::event::Event;
        let s = Scrubber::default();
        let step = || "a".to_string();
        let events = [
            Event::RunStarted {
                run: step(),
                plan: step(),
                steps: 1,
                resumed: false,
            },
            Event::StepFailover {
                step: step(),
                instance_type: step(),
                availability_zone: None,
                subnet: Some(step()),
                market: step(),
                code: step(),
                message: step(),
            },
            Event::HostReplaced {
                step: step(),
                instance_id: step(),
                reason: step(),
                rerun: vec![step()],
            },
            Event::StepRetry {
                step: step(),
                attempt: 2,
                delay_secs: 0.5,
                error: step(),
            },
            Event::StepFinished {
                step: step(),
                status: step(),
                attempt: 1,
                duration_secs: 1.0,
                error: None,
                help: Some(step()),
            },
            Event::RunFinished {
                run: step(),
                status: step(),
                exit_code: 1,
            },
        ];
        for e in &events {
            assert!(s.value(e).is_some(), "{e:?}");
        }
    }

    #[test]
    fn a_key_block_is_scrubbed_across_lines() {
        let mut l = LineScrubber {
            scrubber: Scrubber::default(),
            in_key: false,
        };
        let lines = [
            "ok\n",
            "-----BEGIN PRIVATE KEY-----\n",
            "MIIEvQ\n",
            "-----END PRIVATE KEY-----\n",
            "after\n",
        ];
        let out: Vec<String> = lines
            .iter()
            .map(|x| String::from_utf8(l.line(x.as_bytes())).expect("utf8"))
            .collect();
        assert_eq!(
            out,
            [
                "ok\n",
                "<redacted>\n",
                "<redacted>\n",
                "<redacted>\n",
                "after\n"
            ]
        );
    }
}
