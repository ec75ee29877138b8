//! The local target: a host is a sandbox directory with its own SORTIE_HOME; a volume is a directory in it,
//! reachable at its mount path inside the sandbox; a `run` step is a process group under the native supervisor
//! (`crate::host::native`, the host protocol without a shell).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::host::native::{self, LaunchRequest, Launched};
use crate::host::protocol::HostState;
use indexmap::IndexMap;

/// The host wrapper (docs/HOST_PROTOCOL.md), shipped inside the binary for EC2 hosts; the local target runs
/// the same protocol natively (`crate::host::native`).
pub const WRAPPER: &str = include_str!("wrapper.sh");

/// One sandbox host.
#[derive(Debug, Clone)]
pub struct LocalHost {
    pub home: PathBuf,
}

/// What the wrapper's `status` command reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    pub state: HostState,
    pub attempt: Option<u32>,
    pub exit_code: Option<i32>,
    pub progress: Option<String>,
    pub error: Option<String>,
    pub heartbeat_at: Option<u64>,
    /// The size of the step's log on the host when the status was read.
    pub log_bytes: Option<u64>,
    /// The spot interruption notice the host got (IMDS `spot/instance-action`), if any.
    pub spot_notice: Option<String>,
}

impl HostStatus {
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// What a `run` step's launch needs besides the script.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub lock: Option<String>,
    pub progress: Option<String>,
    pub metrics: Option<String>,
    pub heartbeat_interval: Option<Duration>,
}

impl LaunchSpec {
    /// The step's environment plus the wrapper's settings (docs/HOST_PROTOCOL.md). `interval` is the default
    /// heartbeat interval in seconds for the target.
    pub fn wrapper_env(&self, interval: u64) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        if let Some(t) = self.timeout {
            env.push(("SORTIE_TIMEOUT".into(), t.as_secs().max(1).to_string()));
        }
        if let Some(lock) = &self.lock {
            env.push(("SORTIE_LOCK".into(), lock.clone()));
        }
        if let Some(p) = &self.progress {
            env.push(("SORTIE_PROGRESS".into(), p.clone()));
        }
        if let Some(m) = &self.metrics {
            env.push(("SORTIE_METRICS".into(), m.clone()));
        }
        let interval = self
            .heartbeat_interval
            .map_or(interval, |d| d.as_secs().max(1));
        env.push(("SORTIE_HEARTBEAT_INTERVAL".into(), interval.to_string()));
        env
    }
}

impl LocalHost {
    /// The sandbox of `step` in `run`, under `root`.
    pub fn at(root: &Path, run: &str, step: &str) -> LocalHost {
        LocalHost {
            home: absolute(&root.join(format!("{run}-{step}"))),
        }
    }

    /// Creates the sandbox (idempotent: an existing one is adopted).
    pub fn create(&self) -> Result<()> {
        let dir = self.home.join(".sortie");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create host {}", self.home.display()), e))
    }

    pub fn exists(&self) -> bool {
        self.home.join(".sortie").is_dir()
    }

    pub fn status_dir(&self, step: &str) -> PathBuf {
        self.home.join(".sortie").join("steps").join(step)
    }

    pub fn log_path(&self, step: &str) -> PathBuf {
        self.status_dir(step).join("output.log")
    }

    /// Starts attempt `attempt` of `step` (the protocol refuses duplicates, so a repeat is harmless). The
    /// native supervisor (`crate::host::native`) is started directly: no shell process.
    pub async fn launch(
        &self,
        step: &str,
        attempt: u32,
        script: &str,
        spec: &LaunchSpec,
    ) -> Result<HostStatus> {
        let dir = self.status_dir(step);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let script_path = self
            .home
            .join(".sortie")
            .join(format!("{step}.{attempt}.script"));
        crate::state::store::write_atomic(&script_path, script.as_bytes())?;
        let mut env = spec.wrapper_env(5);
        env.push(("SORTIE_KILL_GRACE".into(), "5".into()));
        // A process of the host: found (and reaped) by what looks for the host's processes.
        env.push(("SORTIE_HOME".into(), self.home.to_string_lossy().into()));
        let req = LaunchRequest {
            dir,
            attempt: attempt.to_string(),
            script: script_path,
            env,
            cwd: Some(self.home.clone()),
        };
        // The supervisor is our child: tokio reaps it in the background once it exits (no zombie per step).
        let spawn =
            |cmd: std::process::Command| tokio::process::Command::from(cmd).spawn().map(drop);
        let launched = blocking(move || native::launch(&req, &spawn)).await??;
        match launched {
            Launched::Status(report) => Ok(parse_status(&report.render())),
            Launched::Refused { code, message, .. } => Err(Error::runtime(format!(
                "the host wrapper refused to launch step `{step}` (exit {code}): sortie-wrapper: {message}"
            ))),
        }
    }

    /// The step's status, read from its status directory in this process.
    pub async fn status(&self, step: &str) -> Result<HostStatus> {
        Ok(parse_status(
            &native::status(&self.status_dir(step)).render(),
        ))
    }

    pub async fn cancel(&self, step: &str, grace: Duration) -> Result<HostStatus> {
        let dir = self.status_dir(step);
        let report = blocking(move || native::cancel(&dir, grace)).await??;
        Ok(parse_status(&report.render()))
    }

    /// The recorded result of `attempt`, read straight from the status directory (no process spawned): `None`
    /// while it has not finished. `exit_code` is the last file the wrapper writes, so its presence is the end.
    pub fn finished(&self, step: &str, attempt: u32) -> Option<HostStatus> {
        let dir = self.status_dir(step);
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|t| t.trim().to_string())
        };
        if read("attempt")?.parse::<u32>().ok()? != attempt {
            return None;
        }
        let code: i32 = read("exit_code")?.parse().ok()?;
        let state = if dir.join("timed_out").exists() {
            HostState::TimedOut
        } else if dir.join("cancelled").exists() {
            HostState::Cancelled
        } else if code == 0 {
            HostState::Succeeded
        } else {
            HostState::Failed
        };
        let progress = crate::heartbeat::Heartbeat::read(&dir.join("heartbeat.json"))
            .map(|h| h.progress)
            .filter(|p| !p.is_empty());
        Some(HostStatus {
            state,
            attempt: Some(attempt),
            exit_code: Some(code),
            progress,
            error: read("error").filter(|e| !e.is_empty()),
            heartbeat_at: None,
            log_bytes: None,
            spot_notice: None,
        })
    }

    /// The `key=value` lines the step wrote to `$SORTIE_OUTPUT`, and a problem per line that is not UTF-8
    /// (decoded per line: one bad byte must not lose the other outputs).
    pub fn outputs(&self, step: &str) -> (IndexMap<String, String>, Vec<String>) {
        let bytes = std::fs::read(self.status_dir(step).join("outputs")).unwrap_or_default();
        let mut outputs = IndexMap::new();
        let mut problems = Vec::new();
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let Ok(line) = std::str::from_utf8(line) else {
                problems.push(format!(
                    "line {} of $SORTIE_OUTPUT is not UTF-8 and was skipped: {}",
                    n + 1,
                    String::from_utf8_lossy(line)
                ));
                continue;
            };
            if let Some((k, v)) = line.split_once('=') {
                if !k.trim().is_empty() {
                    outputs.insert(k.trim().to_string(), v.to_string());
                }
            }
        }
        (outputs, problems)
    }

    /// Cancels every step still running in the sandbox, then deletes it.
    pub async fn destroy(&self) -> Result<()> {
        crate::ttl::stop_local(&self.home);
        if let Ok(entries) = std::fs::read_dir(self.home.join(".sortie").join("steps")) {
            for e in entries.flatten() {
                let step = e.file_name().to_string_lossy().to_string();
                if let Ok(st) = self.status(&step).await {
                    if st.state.is_live() {
                        self.cancel(&step, Duration::from_secs(2)).await?;
                    }
                }
            }
        }
        match std::fs::remove_dir_all(&self.home) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("cannot delete host {}", self.home.display()),
                e,
            )),
        }
    }
}

/// A local volume: a directory in the host's sandbox, linked at its mount path inside the sandbox.
pub struct LocalVolume {
    pub dir: PathBuf,
    pub mount_path: PathBuf,
}

impl LocalVolume {
    pub fn at(host: &LocalHost, step: &str, mount: &str) -> LocalVolume {
        LocalVolume {
            dir: host.home.join("volumes").join(step),
            mount_path: host.home.join(mount.trim_start_matches('/')),
        }
    }

    pub fn create(&self) -> Result<()> {
        let fail = |e| Error::io(format!("cannot create volume {}", self.dir.display()), e);
        std::fs::create_dir_all(&self.dir).map_err(fail)?;
        if let Some(parent) = self.mount_path.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        if std::fs::read_link(&self.mount_path).ok().as_deref() != Some(self.dir.as_path()) {
            let _ = std::fs::remove_file(&self.mount_path);
            std::os::unix::fs::symlink(&self.dir, &self.mount_path).map_err(fail)?;
        }
        Ok(())
    }

    pub fn destroy(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.mount_path);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("cannot delete volume {}", self.dir.display()),
                e,
            )),
        }
    }
}

pub fn parse_status(text: &str) -> HostStatus {
    let mut s = HostStatus::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k {
            // A word this reader does not know must not pass for a live state.
            "state" => s.state = HostState::parse(v).unwrap_or(HostState::Lost),
            "attempt" => s.attempt = v.parse().ok(),
            "exit_code" => s.exit_code = v.parse().ok(),
            "progress" if !v.is_empty() => s.progress = Some(v.to_string()),
            "error" if !v.is_empty() => s.error = Some(v.to_string()),
            "heartbeat_at" => s.heartbeat_at = v.parse().ok(),
            "log_bytes" => s.log_bytes = v.parse().ok(),
            "spot_notice" if !v.is_empty() => s.spot_notice = Some(v.to_string()),
            _ => {}
        }
    }
    s
}

/// Runs blocking protocol work (its waits sleep) off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::runtime(format!("the host protocol's task failed: {e}")))
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |d| d.join(path))
    }
}
