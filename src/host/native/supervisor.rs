//! The detached supervisor (`plan host-wrapper _supervise`, docs/HOST_PROTOCOL.md, "Supervisor"): plain
//! synchronous code, one process per attempt in its own session. It takes the step's lock, starts the step in
//! a session of its own, writes heartbeats, enforces the timeout, and records the end, `exit_code` last.

use crate::host::protocol::exit;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, Flock, FlockArg};

use super::beat::Beats;
use super::liveness::kill_group;
use super::settings::Settings;
use super::status_dir::{now, StatusDir};

/// One attempt under supervision.
struct Supervisor {
    dir: StatusDir,
    attempt: String,
    settings: Settings,
    beats: Beats,
}

/// Closes every descriptor above stderr this process inherited: the caller's pipes must see EOF when the
/// caller is done, however long the step runs.
fn close_inherited_fds() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // The directory listing's own descriptor is among them, already closed: EBADF is expected.
        let _ = nix::unistd::close(fd);
    }
}

/// Runs attempt `attempt` in `dir`; returns the supervisor's exit code (0: the attempt's end is recorded).
pub fn supervise(dir: &Path, attempt: &str, workdir: &Path, lockfile: Option<&Path>) -> i32 {
    let _ = nix::unistd::setsid();
    close_inherited_fds();
    let dir_ = StatusDir::new(dir);
    let _ = dir_.put("supervisor_pid", &std::process::id().to_string());
    // The launch checked the settings; they change only if someone runs `_supervise` by hand.
    let settings = match Settings::from_process() {
        Ok(s) => s,
        Err(message) => {
            return finish(
                &dir_,
                &mut Beats::new(attempt, None, None),
                exit::USAGE,
                &message,
            )
        }
    };
    let beats = Beats::new(
        attempt,
        Some(settings.progress.clone()),
        settings.metrics.clone(),
    );
    let mut sup = Supervisor {
        dir: dir_,
        attempt: attempt.to_string(),
        settings,
        beats,
    };
    let _ = sup
        .dir
        .put("supervisor_pid", &std::process::id().to_string());
    // Held until the step's main process ends; the step and its children hold the same lock through the
    // descriptor they inherit, so it lives until the last of them is gone.
    let lock = match lockfile {
        Some(file) => match take_lock(file, dir) {
            Ok(lock) => Some(lock),
            Err((code, message)) => return sup.end(code, &message),
        },
        None => None,
    };
    if sup.dir.has("cancelled") {
        return sup.end(exit::CANCELLED, "cancelled before start");
    }
    let rc = sup.run_step(workdir, lock.as_ref());
    drop(lock); // our hold on the lock ends before exit_code announces the end
    sup.end(rc, "")
}

/// Takes `flock -n` on the lock file and records its holder; the error is the attempt's code and message.
fn take_lock(file: &Path, dir: &Path) -> Result<std::fs::File, (i32, String)> {
    let opened = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .map_err(|_| (1, format!("cannot open lock file {}", file.display())))?;
    let holder = file.with_extension("holder");
    let lock = Flock::lock(opened, FlockArg::LockExclusiveNonblock).map_err(|_| {
        let text = std::fs::read_to_string(&holder).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_default()
                .to_string()
        };
        let name = file.file_stem().unwrap_or_default().to_string_lossy();
        let message = format!(
            "lock {name} is held by pid {} (step dir {}) since {}",
            field("pid="),
            field("step_dir="),
            field("since=")
        );
        (exit::BUSY, message)
    })?;
    let text = format!(
        "pid={}\nstep_dir={}\nsince={}",
        std::process::id(),
        dir.display(),
        now()
    );
    let _ = super::status_dir::put_file(&holder, &text);
    keep_without_unlock(lock)
        .map_err(|e| (1, format!("cannot keep lock file {}: {e}", file.display())))
}

/// The locked file as a plain descriptor. A dropped `Flock` unlocks (`LOCK_UN`), which would release the lock
/// of the step's children too; closing one of several descriptors of the locked file does not.
fn keep_without_unlock(lock: Flock<std::fs::File>) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let file = lock.try_clone()?;
    let raw = lock.as_raw_fd();
    std::mem::forget(lock);
    let _ = nix::unistd::close(raw);
    Ok(file)
}

/// The exit code a shell gives a child: its status, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

impl Supervisor {
    fn end(&mut self, code: i32, error: &str) -> i32 {
        finish(&self.dir, &mut self.beats, code, error)
    }

    /// `#!` scripts are made executable and run directly; any other runs as `sh script`.
    fn program(&self) -> Vec<PathBuf> {
        let script = self.dir.file("script");
        let head = std::fs::read(&script).unwrap_or_default();
        if head.starts_with(b"#!") {
            if let Ok(meta) = std::fs::metadata(&script) {
                let mut perms = meta.permissions();
                perms.set_mode(perms.mode() | 0o100);
                let _ = std::fs::set_permissions(&script, perms);
            }
            vec![script]
        } else {
            vec![PathBuf::from("sh"), script]
        }
    }

    /// Starts the step through `plan host-wrapper _exec` (which enters its own session, writes `pid` and
    /// execs the script), then watches it until its main process ends. Returns the code to record.
    fn run_step(&mut self, workdir: &Path, lock: Option<&std::fs::File>) -> i32 {
        let d = &self.dir;
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(d.file("output.log"));
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(d.file("outputs"));
        let _ = d.put("started_at", &now().to_string());
        let started = Instant::now();
        let Ok(log) = opened.and_then(|l| Ok((l.try_clone()?, l))) else {
            let _ = d.put("error", "cannot open output.log");
            return 1;
        };
        if let Some(lock) = lock {
            // The step inherits the lock's descriptor (std opens every file close-on-exec).
            let _ = fcntl(lock, FcntlArg::F_SETFD(FdFlag::empty()));
        }
        let mut cmd = Command::new(super::self_exe());
        cmd.args(["host-wrapper", "_exec"])
            .arg(d.file("pid"))
            .arg(workdir)
            .args(self.program())
            .env("SORTIE_OUTPUT", d.file("outputs"))
            .env("SORTIE_STEP_DIR", &d.path)
            .env("SORTIE_ATTEMPT", &self.attempt)
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = d.put("error", &format!("cannot start the step: {e}"));
                return 127;
            }
        };
        let pid = child.id();
        let ended = waiter(child);
        let status = self.watch(&ended, pid, started);
        let rc = status.map_or(1, exit_code);
        if self.dir.has("timed_out") {
            exit::TIMED_OUT
        } else {
            rc
        }
    }

    /// Heartbeats every interval and the timeout, until the step's main process ends.
    fn watch(
        &mut self,
        ended: &Receiver<ExitStatus>,
        child: u32,
        started: Instant,
    ) -> Option<ExitStatus> {
        // The first heartbeat names the pid: wait for it (or for the end).
        while !self.dir.has("pid") {
            match ended.recv_timeout(Duration::from_millis(5)) {
                Ok(status) => return Some(status),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        let interval = Duration::from_secs(self.settings.heartbeat_interval.max(1));
        let deadline = (self.settings.timeout > 0)
            .then(|| started + Duration::from_secs(self.settings.timeout));
        let mut next_beat = Instant::now();
        loop {
            let t = Instant::now();
            if t >= next_beat {
                let _ = self.beats.write(&self.dir, false);
                next_beat = t + interval;
            }
            if deadline.is_some_and(|d| t >= d) && !self.dir.has("timed_out") {
                let _ = self.dir.put("timed_out", &now().to_string());
                let pg = Some(self.dir.val("pid"))
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| child.to_string());
                let grace = Duration::from_secs(self.settings.kill_grace);
                kill_group(&pg, grace, self.dir.same_boot());
            }
            let mut wake = next_beat;
            if let Some(d) = deadline.filter(|_| !self.dir.has("timed_out")) {
                wake = wake.min(d);
            }
            match ended.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(status) => return Some(status),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// Records the end: `error` (if any), `finished_at`, the last heartbeat (`"ended":true`: on AWS it tells the
/// orchestrator to look now), then `exit_code`, written last. Returns the supervisor's exit code.
fn finish(dir: &StatusDir, beats: &mut Beats, code: i32, error: &str) -> i32 {
    if !error.is_empty() {
        let _ = dir.put("error", error);
    }
    let _ = dir.put("finished_at", &now().to_string());
    let _ = beats.write(dir, true);
    match dir.put("exit_code", &code.to_string()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sortie-wrapper: {e}");
            1
        }
    }
}

/// A thread that waits for the step's main process and sends its status: the main loop sleeps until the end
/// or its next heartbeat, whichever comes first, instead of polling.
fn waiter(mut child: Child) -> Receiver<ExitStatus> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("step-wait".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
    if let Err(e) = spawned {
        eprintln!("sortie-wrapper: cannot start the waiting thread: {e}");
    }
    rx
}

/// `plan host-wrapper _exec PID_FILE WORKDIR PROGRAM ARGS...`: the step's first process. It enters its own
/// session (pid = pgid = sid), records its pid, and becomes the script. Returns only on failure.
pub fn exec_step(pid_file: &Path, workdir: &Path, program: &[std::ffi::OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let _ = nix::unistd::setsid();
    if let Err(e) = super::status_dir::put_file(pid_file, &std::process::id().to_string()) {
        eprintln!("sortie-wrapper: {e}");
        return 1;
    }
    if let Err(e) = std::env::set_current_dir(workdir) {
        eprintln!("sortie-wrapper: cannot cd to {}: {e}", workdir.display());
        return 2;
    }
    let Some((first, rest)) = program.split_first() else {
        return 64;
    };
    let err = Command::new(first).args(rest).exec();
    eprintln!(
        "sortie-wrapper: cannot execute {}: {err}",
        first.to_string_lossy()
    );
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
