//! A finished SSM command invocation, as GetCommandInvocation tells it.

use std::fmt::Write as _;

/// A finished command invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command_id: String,
    /// Success, Failed, TimedOut, Cancelled.
    pub status: String,
    pub details: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    pub fn succeeded(&self) -> bool {
        self.status == "Success"
    }

    /// One line saying how the command ended, for errors. The SSM agent appends "failed to run commands: exit
    /// status N" to stderr, which says less than the line before it.
    pub fn describe(&self) -> String {
        let tail = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("failed to run commands"))
            .unwrap_or("")
            .trim();
        let mut s = format!(
            "SSM command {} {} ({}, exit {})",
            self.command_id, self.status, self.details, self.code
        );
        if !tail.is_empty() {
            let _ = write!(s, ": {tail}");
        }
        s
    }
}
