//! Writing `heartbeat.json` (docs/HOST_PROTOCOL.md, "Heartbeat"; read back by `crate::heartbeat`): the last
//! progress match and metrics line in the log's last 256 KiB, the attempt's first progress, the log's size.

use std::io::{Read, Seek, SeekFrom};

use regex_lite::Regex;

use super::status_dir::{now, StatusDir};
use crate::error::Result;

/// Only the log's tail is scanned, so a 20-hour log costs the same as a short one.
const TAIL_BYTES: u64 = 262_144;
/// `metrics` is cut at this many bytes.
const METRICS_BYTES: usize = 1000;

/// The heartbeats of one attempt: what the previous ones found is kept here.
pub struct Beats {
    attempt: String,
    progress_re: Option<Regex>,
    metrics_re: Option<Regex>,
    progress: String,
    first_progress: String,
    first_at: String,
}

/// A JSON string body: only printable ASCII survives (no control characters, no invalid UTF-8), then `\` and
/// `"` are escaped, as the wrapper does.
fn json_str(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().filter(|b| (0x20..=0x7e).contains(*b)) {
        if b == b'\\' || b == b'"' {
            out.push('\\');
        }
        out.push(char::from(b));
    }
    out
}

/// The log's last 256 KiB with NULs dropped and `\r` as a line end (tqdm), and the log's size.
fn log_tail(dir: &StatusDir) -> (Vec<u8>, u64) {
    let Ok(mut file) = std::fs::File::open(dir.file("output.log")) else {
        return (Vec::new(), 0);
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(size.saturating_sub(TAIL_BYTES)))
        .is_ok()
    {
        let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
    }
    bytes.retain(|&b| b != 0);
    for b in &mut bytes {
        if *b == b'\r' {
            *b = b'\n';
        }
    }
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    (bytes, size)
}

impl Beats {
    pub fn new(attempt: &str, progress_re: Option<Regex>, metrics_re: Option<Regex>) -> Beats {
        Beats {
            attempt: attempt.to_string(),
            progress_re,
            metrics_re,
            progress: String::new(),
            first_progress: String::new(),
            first_at: String::new(),
        }
    }

    /// The last non-empty match of the progress regex (`grep -o | tail -n 1`) and the last line the metrics
    /// regex matches (`grep | tail -n 1`), cut at 1000 bytes. Lines are matched one by one, as grep does.
    fn scan(&self, tail: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
        let mut progress = None;
        let mut metrics = Vec::new();
        for line in tail.split(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(line);
            let found = self
                .progress_re
                .as_ref()
                .and_then(|re| re.find_iter(&text).filter(|m| !m.is_empty()).last());
            if let Some(m) = found {
                progress = Some(m.as_str().as_bytes().to_vec());
            }
            if self
                .metrics_re
                .as_ref()
                .is_some_and(|re| re.is_match(&text))
            {
                metrics = line[..line.len().min(METRICS_BYTES)].to_vec();
            }
        }
        (progress, metrics)
    }

    /// Writes `heartbeat.json` (through a temporary file and a rename). `ended`: the attempt's last one.
    pub fn write(&mut self, dir: &StatusDir, ended: bool) -> Result<()> {
        let (tail, size) = log_tail(dir);
        let (progress, metrics) = self.scan(&tail);
        if let Some(p) = progress {
            self.progress = json_str(&p);
        }
        if self.first_progress.is_empty() && !self.progress.is_empty() {
            self.first_progress = self.progress.clone();
            self.first_at = now().to_string();
        }
        let pid = dir.val("pid");
        let pid = if super::liveness::is_uint(&pid) {
            pid
        } else {
            "null".to_string()
        };
        let text = format!(
            "{{\"attempt\":{},\"ts\":{},\"pid\":{pid},\"progress\":\"{}\",\"metrics\":\"{}\",\"log_bytes\":{size},\
             \"first_progress\":\"{}\",\"first_at\":\"{}\",\"ended\":{ended},\"spot_notice\":\"{}\"}}",
            self.attempt,
            now(),
            self.progress,
            json_str(&metrics),
            self.first_progress,
            self.first_at,
            json_str(dir.val("spot_notice").as_bytes()),
        );
        dir.put("heartbeat.json", &text)
    }
}

#[cfg(test)]
mod tests {
    use super::{json_str, Beats};
    use crate::heartbeat::Heartbeat;
    use crate::host::native::status_dir::StatusDir;

    #[test]
    fn test_int_heartbeat_keeps_the_last_match_and_parses_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = StatusDir::new(tmp.path());
        dir.put("pid", "4242").expect("pid");
        let log = b"step 1/10\rstep 2/10 \"q\" \\ x\x01\nloss=0.5 lr=1\n\0tail\xff line\n\n";
        std::fs::write(dir.file("output.log"), log).expect("log");
        let re = |t: &str| regex_lite::Regex::new(t).expect("regex");
        let mut beats = Beats::new("3", Some(re("[0-9]+/[0-9]+")), Some(re("^loss")));
        beats.write(&dir, false).expect("write");
        let beat = Heartbeat::read(&dir.file("heartbeat.json")).expect("valid JSON");
        assert_eq!(beat.attempt, Some(3));
        assert_eq!(beat.pid, Some(4242));
        assert_eq!(
            (beat.progress.as_str(), beat.metrics.as_str()),
            ("2/10", "loss=0.5 lr=1")
        );
        assert_eq!(beat.first_progress, "2/10");
        assert_eq!(beat.log_bytes, Some(log.len() as u64));
        assert!(!beat.ended);
        // A log with no match keeps the previous progress; the first stays the first.
        std::fs::write(dir.file("output.log"), b"evaluating\n").expect("log");
        beats.write(&dir, true).expect("write");
        let beat = Heartbeat::read(&dir.file("heartbeat.json")).expect("valid JSON");
        assert_eq!((beat.progress.as_str(), beat.ended), ("2/10", true));
        assert_eq!(beat.metrics, "");
        assert_eq!(json_str(b"a\"b\\c\td\xc3\xa9"), "a\\\"b\\\\cd");
    }
}
