//! The library's error type. Each error knows its exit code (see DESIGN.md, "CLI").

use std::path::PathBuf;

use crate::compiler::Invalid;

/// Exit codes: what a pipeline can act on.
pub mod exit {
    pub const OK: i32 = 0;
    /// A step or the run failed.
    pub const FAILED: i32 = 1;
    /// The plan, a state file or the command line is invalid.
    pub const INVALID: i32 = 2;
    /// The run is locked by another apply.
    pub const LOCKED: i32 = 3;
    /// The run is still going (detached, interrupted, or `--wait` ran out).
    pub const RUNNING: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan did not compile; the diagnostics are rendered against their sources.
    #[error("{}", .0.render())]
    Invalid(Invalid),
    /// A bad flag or argument combination.
    #[error("error: {0}")]
    Usage(String),
    /// A state file that cannot be read as state. It is left untouched.
    #[error("error: the state file {} is unreadable: {reason}\n  = help: it was left untouched; restore it from a backup or start over with `plan apply --new`", path.display())]
    CorruptState { path: PathBuf, reason: String },
    /// Another process holds the run's lock.
    #[error("error: run {run} is locked by another apply: {holder}\n  = help: wait for it to finish; a directory lock ends with its process, and an S3 lock whose holder is gone is broken with `plan unlock {plan} --force`")]
    Locked {
        run: String,
        holder: String,
        plan: String,
    },
    /// Another apply is picking or creating a run of the plan.
    #[error("error: plan {name} is locked by another apply that is picking its run: {holder}\n  = help: it holds this lock only while it picks or creates its run; retry, or see it with `plan status {plan}`; an S3 lock whose holder is gone is broken with `plan unlock {plan} --force`")]
    PlanLocked {
        name: String,
        holder: String,
        plan: String,
    },
    /// A write lost a race with another writer; nothing was overwritten.
    #[error("error: the state of run {run} was changed by another writer (expected serial {expected}); nothing was overwritten\n  = help: run `plan status` to see the current state, then retry")]
    Conflict { run: String, expected: u64 },
    /// An I/O problem outside the plan's control.
    #[error("error: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The state directory cannot be used (full, read-only, not a directory): nothing half-written is left.
    #[error("error: cannot use the state directory {}: {source}\n  = help: free space or fix the path (the plan's `state:`), then run `plan apply` again to continue", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something a step's provider or executor reported.
    #[error("error: {0}")]
    Runtime(String),
    /// A required account check of `plan doctor` failed before `plan apply` created anything.
    #[error("error: {0}")]
    NotReady(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_)
            | Error::Usage(_)
            | Error::CorruptState { .. }
            | Error::StateDir { .. }
            | Error::NotReady(_) => exit::INVALID,
            Error::Locked { .. } | Error::PlanLocked { .. } => exit::LOCKED,
            Error::Conflict { .. } | Error::Io { .. } | Error::Runtime(_) => exit::FAILED,
        }
    }

    /// An I/O error on the state directory becomes `StateDir` naming `path`; others pass unchanged.
    pub fn in_state_dir(path: &std::path::Path) -> impl Fn(Error) -> Error + '_ {
        move |e| match e {
            Error::Io { source, .. } => Error::StateDir {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
