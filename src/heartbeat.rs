//! The heartbeat document the host wrapper writes beside a step (docs/HOST_PROTOCOL.md, "Heartbeat"), read from
//! the host's status directory or from S3. It is untrusted: a document that does not parse is no heartbeat, and a
//! missing field is absent (the wrapper of an older sortie writes fewer of them).

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    pub attempt: Option<u32>,
    /// When the host wrote it (epoch seconds).
    pub ts: Option<f64>,
    pub pid: Option<u64>,
    /// The step's last progress line (`step 120/30969`).
    pub progress: String,
    pub metrics: String,
    /// Size of the step's log: a stall is a log that stopped growing.
    pub log_bytes: Option<u64>,
    /// The first progress of this attempt, and when it came: rate and ETA count only this attempt.
    pub first_progress: String,
    pub first_at: String,
    /// The attempt's last heartbeat: the step has ended.
    pub ended: bool,
    /// A spot interruption notice the host received (empty without one).
    pub spot_notice: String,
}

impl Heartbeat {
    pub fn parse(bytes: &[u8]) -> Option<Heartbeat> {
        serde_json::from_slice(bytes).ok()
    }

    /// Read from a status directory's `heartbeat.json`.
    pub fn read(path: &std::path::Path) -> Option<Heartbeat> {
        Heartbeat::parse(&std::fs::read(path).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_int_parses_what_the_wrapper_writes_and_tolerates_an_older_one() {
        let beat = Heartbeat::parse(
            br#"{"attempt":2,"ts":1700000000,"pid":42,"progress":"3/10","metrics":"loss=1","log_bytes":9,"first_progress":"1/10","first_at":"1699999990","ended":true,"spot_notice":""}"#,
        )
        .expect("parses");
        assert_eq!(beat.attempt, Some(2));
        assert_eq!(beat.ts, Some(1_700_000_000.0));
        assert_eq!(beat.log_bytes, Some(9));
        assert!(beat.ended);
        let old = Heartbeat::parse(br#"{"attempt":1,"ts":1,"log_bytes":3}"#).expect("parses");
        assert_eq!((old.ended, old.progress.as_str()), (false, ""));
        assert_eq!(Heartbeat::parse(b"{\"ts\":"), None);
        assert_eq!(Heartbeat::parse(br#"{"log_bytes":"many"}"#), None);
    }
}
