//! The host protocol (docs/HOST_PROTOCOL.md) in Rust, for the local target: `plan` supervises a local step
//! itself, with the status directory, states and exit codes of `src/host/wrapper.sh`, which stays the
//! implementation for EC2 hosts. `plan host-wrapper ...` (hidden) is its command line; the detached
//! supervisor is `plan` re-executed, one plain synchronous process per attempt.

mod beat;
pub mod command;
mod control;
mod launch;
mod liveness;
mod report;
mod settings;
mod status_dir;
mod supervisor;

use std::path::PathBuf;

pub use control::cancel;
pub use launch::{launch, LaunchRequest, Launched};
pub use report::Report;
pub use status_dir::StatusDir;

/// The `plan` binary that runs supervisors: `SORTIE_PLAN_EXE` if set, else this executable, except in a
/// test binary of the library (`target/debug/deps/sortie-*`), where it is the `plan` built beside it.
pub fn plan_exe() -> PathBuf {
    if let Some(exe) = std::env::var_os("SORTIE_PLAN_EXE").filter(|e| !e.is_empty()) {
        return exe.into();
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("plan"));
    if exe.file_name().is_some_and(|n| n == "plan") {
        return exe;
    }
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("plan"))
        .filter(|plan| plan.is_file())
        .unwrap_or(exe)
}

/// This process's own executable, for the step's first process: the image of the running supervisor even if
/// the file was replaced since (a newer build never changes a running attempt).
fn self_exe() -> PathBuf {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        proc_exe
    } else {
        plan_exe()
    }
}

/// The report of a status directory, as `status` prints it.
pub fn status(dir: &std::path::Path) -> Report {
    Report::read(&StatusDir::new(dir), false)
}
