//! The host protocol's vocabulary (docs/HOST_PROTOCOL.md), shared by every implementation and every reader: the
//! shell wrapper's `status` output, the native supervisor (native/) and the SSM host all speak it. It also names
//! the files a status directory holds: a `files:` destination may not take one of their names.

/// Files that belong to one attempt; archived together when a new attempt starts (wrapper.sh's list, so a
/// directory one implementation wrote is archived whole by the other).
pub const ATTEMPT_FILES: &[&str] = &[
    "attempt",
    "script",
    "wrapper.sh",
    "boot_id",
    "supervisor_pid",
    "supervisor.log",
    "pid",
    "started_at",
    "output.log",
    "outputs",
    "heartbeat.json",
    "heartbeat.json.tmp",
    "error",
    "timed_out",
    "cancelled",
    "finished_at",
    "exit_code",
    "log_sent",
    "log-tail",
    "log-tail.tmp",
    "spot_notice",
];

/// What else the protocol keeps in a status directory: past attempts, and its own working files.
pub const PROTOCOL_FILES: &[&str] = &["attempts", ".launch", ".script.new", ".wrapper.new"];

/// The state of a step's current attempt on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostState {
    /// No attempt was ever launched in this status directory.
    #[default]
    Absent,
    /// Launched; the script has no pid yet.
    Starting,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Nothing of the attempt is alive and it recorded no exit code (the host rebooted, or a kill -9 of its
    /// supervisor and group).
    Lost,
}

impl HostState {
    const ALL: [HostState; 8] = [
        HostState::Absent,
        HostState::Starting,
        HostState::Running,
        HostState::Succeeded,
        HostState::Failed,
        HostState::TimedOut,
        HostState::Cancelled,
        HostState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Absent => "absent",
            HostState::Starting => "starting",
            HostState::Running => "running",
            HostState::Succeeded => "succeeded",
            HostState::Failed => "failed",
            HostState::TimedOut => "timed_out",
            HostState::Cancelled => "cancelled",
            HostState::Lost => "lost",
        }
    }

    /// The protocol's spelling; anything else (an older or damaged wrapper) is `None`.
    pub fn parse(text: &str) -> Option<HostState> {
        HostState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The attempt recorded its end (an exit code): it will not change again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            HostState::Succeeded | HostState::Failed | HostState::TimedOut | HostState::Cancelled
        )
    }

    /// Something of the attempt is alive: it must be cancelled before another attempt starts.
    pub fn is_live(self) -> bool {
        matches!(self, HostState::Starting | HostState::Running)
    }
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exit codes of the protocol's commands (and of an attempt, for the ones an attempt records).
pub mod exit {
    /// Bad arguments or environment; nothing was written.
    pub const USAGE: i32 = 64;
    /// `launch` of an attempt older than the recorded one.
    pub const OLDER_ATTEMPT: i32 = 65;
    /// A tool the wrapper needs (flock, setsid) is missing.
    pub const UNAVAILABLE: i32 = 69;
    /// Busy: the step's `lock` is held by another step, or the previous attempt is still running.
    pub const BUSY: i32 = 75;
    /// The attempt hit its timeout (recorded exit code).
    pub const TIMED_OUT: i32 = 124;
    /// `wait`: the attempt is lost (or absent).
    pub const LOST: i32 = 125;
    /// `wait`: the host got a spot interruption notice.
    pub const SPOT_NOTICE: i32 = 126;
    /// The attempt was cancelled (recorded exit code: 128 + SIGTERM).
    pub const CANCELLED: i32 = 143;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_classify() {
        for s in HostState::ALL {
            assert_eq!(HostState::parse(s.as_str()), Some(s));
            assert!(!(s.is_finished() && s.is_live()), "{s}");
        }
        assert_eq!(HostState::parse("exploded"), None);
        assert!(HostState::TimedOut.is_finished());
        assert!(!HostState::Lost.is_finished() && !HostState::Lost.is_live());
    }
}
