//! A step's status directory (docs/HOST_PROTOCOL.md, "Status directory"): its one-line files, written
//! atomically; the archive of an attempt; the state derived from what is there and what is alive.

use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::liveness::{alive, boot_id, group_alive};
use crate::error::{Error, Result};

pub use crate::host::protocol::ATTEMPT_FILES;

/// Epoch seconds.
pub fn now() -> u64 {
    crate::ttl::now_epoch()
}

/// The first line of a regular file, without its newline; empty when it is absent.
pub fn first_line(path: &Path) -> String {
    if !path.is_file() {
        return String::new();
    }
    let bytes = std::fs::read(path).unwrap_or_default();
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(line).into_owned()
}

/// Writes `value` and a newline to `path` through a temporary file and a rename: readers never see half.
pub fn put_file(path: &Path, value: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let fail = |e| Error::io(format!("cannot write {}", path.display()), e);
    let mut file = std::fs::File::create(&tmp).map_err(fail)?;
    file.write_all(format!("{value}\n").as_bytes())
        .map_err(fail)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The state of an attempt, as `status` prints it (the protocol's own type).
pub use crate::host::protocol::HostState as State;

/// One status directory.
#[derive(Debug, Clone)]
pub struct StatusDir {
    pub path: PathBuf,
}

impl StatusDir {
    pub fn new(path: impl Into<PathBuf>) -> StatusDir {
        StatusDir { path: path.into() }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `[ -f FILE ]`.
    pub fn has(&self, name: &str) -> bool {
        self.file(name).is_file()
    }

    /// The first line of a file of the directory (status values are single lines).
    pub fn val(&self, name: &str) -> String {
        first_line(&self.file(name))
    }

    pub fn put(&self, name: &str, value: &str) -> Result<()> {
        put_file(&self.file(name), value)
    }

    /// The boot that recorded the attempt is this one: pids from before a reboot name unrelated processes.
    pub fn same_boot(&self) -> bool {
        self.val("boot_id") == boot_id()
    }

    /// Some launch holds `.launch` (one that is starting a supervisor right now).
    fn launch_busy(&self) -> bool {
        let path = self.file(".launch");
        if !path.is_file() {
            return false;
        }
        match std::fs::File::open(&path) {
            Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
            Err(_) => true,
        }
    }

    /// The attempt's state. Liveness is sampled BEFORE `exit_code` is looked at: the supervisor writes
    /// `exit_code` and only then exits, so "nothing alive, no exit_code" seen in this order really is lost.
    /// `launching`: the caller itself holds `.launch`, which then says nothing.
    pub fn state(&self, launching: bool) -> State {
        if !self.has("attempt") {
            return State::Absent;
        }
        let mut live = false;
        if !self.has("exit_code") {
            let same_boot = self.same_boot();
            live = alive(&self.val("supervisor_pid"), same_boot)
                || group_alive(&self.val("pid"), same_boot)
                || (!launching && self.launch_busy());
        }
        if self.has("exit_code") {
            if self.has("timed_out") {
                State::TimedOut
            } else if self.has("cancelled") {
                State::Cancelled
            } else if self.val("exit_code") == "0" {
                State::Succeeded
            } else {
                State::Failed
            }
        } else if !live {
            State::Lost
        } else if self.has("pid") {
            State::Running
        } else {
            State::Starting
        }
    }

    /// Moves the current attempt's files to `attempts/N` (`attempts/N.2`, ... if a lost attempt N was
    /// restarted).
    pub fn archive(&self) -> Result<()> {
        let old = self.val("attempt");
        let attempts = self.file("attempts");
        let mut dest = attempts.join(&old);
        let mut k = 2;
        while dest.exists() {
            dest = attempts.join(format!("{old}.{k}"));
            k += 1;
        }
        let fail = |e| {
            Error::io(
                format!("cannot archive attempt {old} into {}", dest.display()),
                e,
            )
        };
        std::fs::create_dir_all(&dest).map_err(fail)?;
        for name in ATTEMPT_FILES {
            let from = self.file(name);
            if from.exists() {
                std::fs::rename(&from, dest.join(name)).map_err(fail)?;
            }
        }
        Ok(())
    }
}
