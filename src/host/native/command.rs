//! `plan host-wrapper launch|run|status|wait|cancel ...`: the host protocol's command line, with wrapper.sh's
//! arguments, `key=value` output and exit codes (docs/HOST_PROTOCOL.md, "Exit codes of the wrapper process").

use crate::host::protocol::exit;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control::{cancel, wait, wait_pace};
use super::launch::{launch, LaunchRequest, Launched};
use super::liveness::is_uint;
use super::report::Report;
use super::status_dir::StatusDir;
use super::supervisor::{exec_step, supervise};

const USAGE: &str =
    "usage: plan host-wrapper launch|run DIR ATTEMPT SCRIPT | status DIR | wait DIR [POLL] | \
                     cancel DIR [GRACE]";

fn die(code: i32, message: &str) -> i32 {
    eprintln!("sortie-wrapper: {message}");
    code
}

fn usage() -> i32 {
    die(exit::USAGE, USAGE)
}

fn print(report: &Report) {
    // A caller that closed our stdout gets nothing; the exit code still tells.
    let _ = std::io::stdout().write_all(report.render().as_bytes());
}

/// Runs one host-wrapper command; returns the process exit code.
pub fn main(args: &[OsString]) -> i32 {
    let Some((cmd, rest)) = args.split_first() else {
        return usage();
    };
    let text: Vec<String> = rest
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let path = |i: usize| PathBuf::from(&rest[i]);
    match (cmd.to_str().unwrap_or_default(), rest.len()) {
        ("launch", 3) if is_uint(&text[1]) => cmd_launch(&path(0), &text[1], &path(2), true),
        ("run", 3) if is_uint(&text[1]) => match cmd_launch(&path(0), &text[1], &path(2), false) {
            0 => cmd_wait(&path(0), "1"),
            code => code,
        },
        ("status", 1) => {
            print(&Report::read(&StatusDir::new(path(0)), false));
            0
        }
        ("wait", 1) => cmd_wait(&path(0), "1"),
        ("wait", 2) => cmd_wait(&path(0), &text[1]),
        ("cancel", 1) => cmd_cancel(&path(0), 10),
        ("cancel", 2) if is_uint(&text[1]) => match text[1].parse() {
            Ok(grace) => cmd_cancel(&path(0), grace),
            Err(_) => usage(),
        },
        ("_supervise", 4) => {
            let lockfile = (!rest[3].is_empty()).then(|| Path::new(&rest[3]));
            supervise(&path(0), &text[1], &path(2), lockfile)
        }
        ("_exec", n) if n >= 3 => exec_step(&path(0), &path(1), &rest[2..]),
        _ => usage(),
    }
}

/// `launch`; `show`: print the status (`run` prints only the final one).
fn cmd_launch(dir: &Path, attempt: &str, script: &Path, show: bool) -> i32 {
    let req = LaunchRequest {
        dir: dir.to_path_buf(),
        attempt: attempt.to_string(),
        script: script.to_path_buf(),
        env: Vec::new(),
        cwd: None,
    };
    // This process exits at once: the supervisor it starts is reparented, nobody needs to reap it here.
    let spawn = |mut cmd: std::process::Command| cmd.spawn().map(drop);
    match launch(&req, &spawn) {
        Ok(Launched::Status(report)) => {
            if show {
                print(&report);
            }
            0
        }
        Ok(Launched::Refused {
            code,
            message,
            status,
        }) => {
            if let Some(report) = status.filter(|_| show) {
                print(&report);
            }
            die(code, &message)
        }
        Err(e) => die(1, &e.to_string()),
    }
}

fn cmd_wait(dir: &Path, every: &str) -> i32 {
    let Some((pause, k)) = wait_pace(every) else {
        return usage();
    };
    let (report, code) = wait(dir, pause, k);
    print(&report);
    code
}

fn cmd_cancel(dir: &Path, grace: u64) -> i32 {
    match cancel(dir, Duration::from_secs(grace)) {
        Ok(report) => {
            print(&report);
            0
        }
        Err(e) => die(1, &e.to_string()),
    }
}
