//! What `status` prints: eleven `key=value` lines in a fixed order (docs/HOST_PROTOCOL.md, "`status`").

use super::status_dir::{State, StatusDir};
use crate::heartbeat::Heartbeat;

/// One status report. A missing value is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub state: State,
    pub attempt: String,
    pub pid: String,
    pub exit_code: String,
    pub started_at: String,
    pub finished_at: String,
    pub heartbeat_at: String,
    pub progress: String,
    pub error: String,
    pub log_bytes: String,
    pub spot_notice: String,
}

/// Newlines joined with spaces, trailing spaces dropped (`tr '\n' ' ' | sed 's/ *$//'`).
fn one_line(text: &str) -> String {
    text.replace('\n', " ").trim_end_matches(' ').to_string()
}

impl Report {
    /// Reads the report of `dir`; `launching` as for [`StatusDir::state`].
    pub fn read(dir: &StatusDir, launching: bool) -> Report {
        let state = dir.state(launching);
        let beat = dir
            .has("heartbeat.json")
            .then(|| Heartbeat::read(&dir.file("heartbeat.json")))
            .flatten();
        let heartbeat_at = beat
            .as_ref()
            .and_then(|b| b.ts)
            .filter(|ts| ts.is_finite() && *ts >= 0.0)
            .map_or_else(String::new, |ts| format!("{}", ts.trunc() as u64));
        let error = if dir.has("error") {
            let bytes = std::fs::read(dir.file("error")).unwrap_or_default();
            one_line(&String::from_utf8_lossy(&bytes))
        } else {
            String::new()
        };
        let log_bytes = std::fs::metadata(dir.file("output.log"))
            .ok()
            .filter(|m| m.is_file())
            .map_or_else(String::new, |m| m.len().to_string());
        Report {
            state,
            attempt: dir.val("attempt"),
            pid: dir.val("pid"),
            exit_code: dir.val("exit_code"),
            started_at: dir.val("started_at"),
            finished_at: dir.val("finished_at"),
            heartbeat_at,
            progress: beat.map(|b| b.progress).unwrap_or_default(),
            error,
            log_bytes,
            spot_notice: one_line(&dir.val("spot_notice")),
        }
    }

    /// The lines `status` prints.
    pub fn render(&self) -> String {
        format!(
            "state={}\nattempt={}\npid={}\nexit_code={}\nstarted_at={}\nfinished_at={}\nheartbeat_at={}\n\
             progress={}\nerror={}\nlog_bytes={}\nspot_notice={}\n",
            self.state.as_str(),
            self.attempt,
            self.pid,
            self.exit_code,
            self.started_at,
            self.finished_at,
            self.heartbeat_at,
            self.progress,
            self.error,
            self.log_bytes,
            self.spot_notice
        )
    }
}
