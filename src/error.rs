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

/// Each variant's `Display` is its message alone: no `error:` prefix and no help. `help()` gives the advice
/// apart, and `render()` puts the two together for a terminal; JSON output and stored step errors carry them as
/// separate fields.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan did not compile; the diagnostics are rendered against their sources.
    #[error("{}", .0.render())]
    Invalid(Invalid),
    /// A bad flag or argument combination.
    #[error("{0}")]
    Usage(String),
    /// A state file that cannot be read as state. It is left untouched.
    #[error("the state file {} is unreadable: {reason}", path.display())]
    CorruptState { path: PathBuf, reason: String },
    /// Another process holds the run's lock.
    #[error("run {run} is locked by another apply: {holder}")]
    Locked {
        run: String,
        holder: String,
        plan: String,
    },
    /// Another apply is picking or creating a run of the plan.
    #[error("plan {name} is locked by another apply that is picking its run: {holder}")]
    PlanLocked {
        name: String,
        holder: String,
        plan: String,
    },
    /// A write lost a race with another writer; nothing was overwritten.
    #[error("the state of run {run} was changed by another writer (expected serial {expected}); nothing was overwritten")]
    Conflict { run: String, expected: u64 },
    /// An I/O problem outside the plan's control.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The state directory cannot be used (full, read-only, not a directory): nothing half-written is left.
    #[error("cannot use the state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something a step's provider or executor reported, with advice when there is some.
    #[error("{message}")]
    Runtime {
        message: String,
        help: Option<String>,
    },
    /// An AWS API call that failed (aws_error.rs).
    #[error(transparent)]
    Aws(#[from] crate::target::aws::error::AwsError),
    /// A required account check of `plan doctor` failed before `plan apply` created anything.
    #[error("{0}")]
    NotReady(String),
    /// Another error, with advice (`with_help` on a variant that has no place of its own for it).
    #[error("{error}")]
    Helped { error: Box<Error>, help: String },
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
            Error::Conflict { .. } | Error::Io { .. } | Error::Runtime { .. } | Error::Aws(_) => {
                exit::FAILED
            }
            Error::Helped { error, .. } => error.exit_code(),
        }
    }

    /// What to do about it, apart from the message.
    pub fn help(&self) -> Option<String> {
        match self {
            Error::CorruptState { .. } => Some(
                "it was left untouched; restore it from a backup or start over with `plan apply --new`".into(),
            ),
            Error::Locked { plan, .. } => Some(format!(
                "wait for it to finish; a directory lock ends with its process, and an S3 lock whose holder is \
                 gone is broken with `plan unlock {plan} --force`"
            )),
            Error::PlanLocked { plan, .. } => Some(format!(
                "it holds this lock only while it picks or creates its run; retry, or see it with `plan status \
                 {plan}`; an S3 lock whose holder is gone is broken with `plan unlock {plan} --force`"
            )),
            Error::Conflict { .. } => {
                Some("run `plan status` to see the current state, then retry".into())
            }
            Error::StateDir { .. } => Some(
                "free space or fix the path (the plan's `state:`), then run `plan apply` again to continue".into(),
            ),
            Error::Runtime { help, .. } => help.clone(),
            Error::Aws(e) => e.help(),
            Error::Helped { help, .. } => Some(help.clone()),
            Error::Invalid(_) | Error::Usage(_) | Error::Io { .. } | Error::NotReady(_) => None,
        }
    }

    /// For a terminal: `error: MESSAGE` and, when there is advice, `  = help: HELP` below it.
    pub fn render(&self) -> String {
        if let Error::Invalid(_) = self {
            return self.to_string(); // diagnostics render their own `error:` lines
        }
        match self.help() {
            Some(help) => format!("error: {self}\n  = help: {help}"),
            None => format!("error: {self}"),
        }
    }

    /// A runtime error with no advice.
    pub fn runtime(message: impl Into<String>) -> Error {
        Error::Runtime {
            message: message.into(),
            help: None,
        }
    }

    /// The same error with `help` as its advice.
    pub fn with_help(self, help: impl Into<String>) -> Error {
        match self {
            Error::Runtime { message, .. } => Error::Runtime {
                message,
                help: Some(help.into()),
            },
            Error::Aws(e) => Error::Aws(e.with_help(help)),
            other => Error::Helped {
                error: Box::new(other),
                help: help.into(),
            },
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
