//! `launch` (docs/HOST_PROTOCOL.md, "`launch`"): under the `.launch` flock, decide from the recorded attempt
//! whether to start one, archive the previous attempt, and start the detached supervisor (`plan` re-executed).

use crate::host::protocol::exit;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::liveness::{boot_id, is_uint};
use super::report::Report;
use super::settings::Settings;
use super::status_dir::{State, StatusDir};
use crate::error::{Error, Result};

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub dir: PathBuf,
    pub attempt: String,
    pub script: PathBuf,
    /// Set for the supervisor (and so the step) on top of this process's environment; read before it.
    pub env: Vec<(String, String)>,
    /// Where relative paths are resolved and the supervisor starts (this process's cwd when `None`).
    pub cwd: Option<PathBuf>,
}

/// The outcome of a launch: the status to print, or a refusal with its exit code (and the status, when the
/// wrapper prints one beside its message).
#[derive(Debug, Clone)]
pub enum Launched {
    Status(Report),
    Refused {
        code: i32,
        message: String,
        status: Option<Report>,
    },
}

fn refuse(code: i32, message: impl Into<String>) -> Launched {
    Launched::Refused {
        code,
        message: message.into(),
        status: None,
    }
}

/// Starts a command without waiting for it; the caller decides who reaps it.
pub type Spawn<'a> = &'a dyn Fn(Command) -> std::io::Result<()>;

/// Holds `.launch` for at most 30 s of waiting, so two racing launches start at most one supervisor.
fn hold_launch(dir: &StatusDir) -> Option<Flock<std::fs::File>> {
    let path = dir.file(".launch");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .ok()?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// The paths of a checked request: the status dir, the workdir, the lock file. The error is exit 64's message.
struct Resolved {
    dir: StatusDir,
    workdir: PathBuf,
    lockfile: Option<PathBuf>,
}

fn resolve(req: &LaunchRequest, settings: &Settings) -> std::result::Result<Resolved, String> {
    let base = match &req.cwd {
        Some(cwd) => cwd.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    let dir = base.join(&req.dir);
    let dir = std::fs::create_dir_all(&dir)
        .and_then(|()| dir.canonicalize())
        .map_err(|_| format!("cannot create status dir: {}", req.dir.display()))?;
    let workdir = settings
        .workdir
        .as_ref()
        .map_or(dir.clone(), |w| base.join(w));
    let workdir = workdir
        .canonicalize()
        .ok()
        .filter(|w| w.is_dir())
        .ok_or_else(|| format!("no such workdir: {}", workdir.display()))?;
    let lockfile = match &settings.lock {
        None => None,
        Some(name) => {
            let ld = settings
                .lock_dir
                .as_ref()
                .map_or_else(|| dir.join("../../locks"), |l| base.join(l));
            let ld = std::fs::create_dir_all(&ld)
                .and_then(|()| ld.canonicalize())
                .map_err(|_| format!("bad lock dir: {}", ld.display()))?;
            Some(ld.join(format!("{name}.lock")))
        }
    };
    Ok(Resolved {
        dir: StatusDir::new(dir),
        workdir,
        lockfile,
    })
}

/// Starts attempt `req.attempt` unless the recorded attempt says otherwise (see the table in the protocol).
pub fn launch(req: &LaunchRequest, spawn: Spawn<'_>) -> Result<Launched> {
    if !is_uint(&req.attempt) {
        return Ok(refuse(
            exit::USAGE,
            format!("not an attempt number: {}", req.attempt),
        ));
    }
    let script = req
        .cwd
        .as_deref()
        .unwrap_or(Path::new(""))
        .join(&req.script);
    if !script.is_file() || std::fs::File::open(&script).is_err() {
        return Ok(refuse(
            exit::USAGE,
            format!("cannot read script: {}", req.script.display()),
        ));
    }
    let lookup = |name: &str| {
        req.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let settings = match Settings::read(&lookup) {
        Ok(s) => s,
        Err(message) => return Ok(refuse(exit::USAGE, message)),
    };
    let paths = match resolve(req, &settings) {
        Ok(p) => p,
        Err(message) => return Ok(refuse(exit::USAGE, message)),
    };
    let d = &paths.dir;
    let Some(hold) = hold_launch(d) else {
        return Ok(refuse(
            exit::BUSY,
            format!("another launch holds {}", d.file(".launch").display()),
        ));
    };
    match decide(d, &req.attempt, settings.restart_lost) {
        Decision::Start => {}
        Decision::Answer => {
            drop(hold);
            return Ok(Launched::Status(Report::read(d, false)));
        }
        Decision::Refuse(code, message) => {
            drop(hold);
            return Ok(Launched::Refused {
                code,
                message,
                status: Some(Report::read(d, false)),
            });
        }
    }
    start(req, &script, &paths, spawn)?;
    drop(hold);
    Ok(Launched::Status(Report::read(d, false)))
}

/// What `launch` does with the recorded attempt.
enum Decision {
    Start,
    /// Nothing: print the status.
    Answer,
    /// Refused with this exit code and message (and the status).
    Refuse(i32, String),
}

fn decide(d: &StatusDir, attempt: &str, restart_lost: bool) -> Decision {
    let cur = d.val("attempt");
    if cur == attempt {
        let restart = d.state(true) == State::Lost && restart_lost;
        return if restart {
            Decision::Start
        } else {
            Decision::Answer
        };
    }
    if cur.is_empty() {
        return Decision::Start;
    }
    let older = match (cur.parse::<u64>(), attempt.parse::<u64>()) {
        (Ok(c), Ok(a)) => c >= a,
        _ => true,
    };
    if older {
        let message = format!("attempt {attempt} is older than recorded attempt {cur}");
        return Decision::Refuse(exit::OLDER_ATTEMPT, message);
    }
    match d.state(true) {
        st @ (State::Starting | State::Running) => Decision::Refuse(
            exit::BUSY,
            format!(
                "attempt {cur} is still {}; cancel it before starting attempt {attempt}",
                st.as_str()
            ),
        ),
        _ => Decision::Start,
    }
}

/// Archives the previous attempt, records the new one, starts its supervisor and waits (at most 10 s) for the
/// step's `pid` or an `exit_code`.
fn start(req: &LaunchRequest, script: &Path, paths: &Resolved, spawn: Spawn<'_>) -> Result<()> {
    let d = &paths.dir;
    // Copied before archiving: the script may well be a file of the attempt being archived.
    let fresh = d.file(".script.new");
    std::fs::copy(script, &fresh)
        .map_err(|e| Error::io(format!("cannot copy {}", script.display()), e))?;
    if !d.val("attempt").is_empty() {
        d.archive()?;
    }
    std::fs::rename(&fresh, d.file("script"))
        .map_err(|e| Error::io(format!("cannot install {}", d.file("script").display()), e))?;
    d.put("boot_id", &boot_id())?;
    d.put("attempt", &req.attempt)?;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(d.file("supervisor.log"))
        .map_err(|e| Error::io("cannot open supervisor.log", e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("cannot open supervisor.log", e))?;
    let mut cmd = Command::new(super::plan_exe());
    cmd.args(["host-wrapper", "_supervise"])
        .arg(&d.path)
        .arg(&req.attempt)
        .arg(&paths.workdir)
        .arg(paths.lockfile.as_deref().unwrap_or(Path::new("")))
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    spawn(cmd).map_err(|e| Error::io("cannot start the step's supervisor", e))?;
    let end = Instant::now() + Duration::from_secs(10);
    // Two stat calls per look: looking every millisecond costs nothing beside a step's start (two execs).
    while !d.has("pid") && !d.has("exit_code") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}
