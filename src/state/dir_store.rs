//! The directory state store: `<dir>/<plan>/<run>/state.json`, written atomically (temp file,
//! fsync, rename), guarded by a flock on `<dir>/<plan>/<run>/lock` whose holder is described in `lock.json`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::state::journal::{self, Appended, Cursor};
use crate::state::RunState;

const STATE_FILE: &str = "state.json";
/// Who holds the plan's lock (beside the run directories; not a run: it has no state.json).
const PLAN_LOCK_HOLDER: &str = ".plan-lock.json";

pub struct DirStore {
    root: PathBuf,
    plan: String,
    /// The journal this process appends checkpoints to, while a walk runs (state_journal.rs).
    journal: std::sync::Mutex<Option<Cursor>>,
}

/// Held while an apply (or destroy) owns a run; released when dropped or when the process dies.
pub struct DirLock {
    _lock: Flock<File>,
}

impl DirStore {
    pub fn new(root: PathBuf, plan: &str) -> DirStore {
        DirStore {
            root: root.join(plan),
            plan: plan.to_string(),
            journal: std::sync::Mutex::new(None),
        }
    }

    fn run_dir(&self, run: &str) -> PathBuf {
        self.root.join(run)
    }

    pub fn state_path(&self, run: &str) -> PathBuf {
        self.run_dir(run).join(STATE_FILE)
    }

    /// Run ids, oldest first (ids sort by creation time).
    pub fn runs(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::StateDir {
                    path: self.root.clone(),
                    source: e,
                })
            }
        };
        let mut runs: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).exists())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        runs.sort();
        Ok(runs)
    }

    /// Reads a run's state. A file that is not valid state is an error that names it; it is never rewritten.
    pub fn load(&self, run: &str) -> Result<Option<RunState>> {
        let path = self.state_path(run);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        };
        let corrupt = |reason: String| Error::CorruptState {
            path: path.clone(),
            reason,
        };
        let mut state: RunState =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        crate::state::check_document(&state, &self.plan, run).map_err(corrupt)?;
        journal::replay(&path, &mut state)
            .map_err(|(path, reason)| Error::CorruptState { path, reason })?;
        Ok(Some(state))
    }

    /// Takes the run's lock without waiting; a held lock names its holder.
    pub fn lock(&self, run: &str, plan_file: &Path) -> Result<DirLock> {
        let dir = self.run_dir(run);
        let unwritable = |e| Error::StateDir {
            path: dir.clone(),
            source: e,
        };
        fs::create_dir_all(&dir).map_err(unwritable)?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(unwritable)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                write_atomic(&dir.join("lock.json"), holder_json().as_bytes())
                    .map_err(Error::in_state_dir(&dir))?;
                Ok(DirLock { _lock: lock })
            }
            Err((file, _)) => {
                // lock.json may name a dead pid (kill -9); the probe names the process that holds the flock.
                let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
                let holder = crate::state::lock_probe::describe(&dir, ino);
                Err(Error::Locked {
                    run: run.to_string(),
                    holder,
                    plan: plan_file.display().to_string(),
                })
            }
        }
    }

    /// Takes the plan's lock without waiting: a flock on the plan's state directory, held while an apply picks
    /// or creates its run so that concurrent applies cannot each start one. A held lock names its holder.
    pub fn lock_plan(&self, plan_file: &Path) -> Result<DirLock> {
        let unusable = |e| Error::StateDir {
            path: self.root.clone(),
            source: e,
        };
        fs::create_dir_all(&self.root).map_err(unusable)?;
        let file = File::open(&self.root).map_err(unusable)?;
        let holder_path = self.root.join(PLAN_LOCK_HOLDER);
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                write_atomic(&holder_path, holder_json().as_bytes())
                    .map_err(Error::in_state_dir(&self.root))?;
                Ok(DirLock { _lock: lock })
            }
            Err(_) => Err(Error::PlanLocked {
                name: self.plan.clone(),
                holder: describe_holder(&holder_path),
                plan: plan_file.display().to_string(),
            }),
        }
    }

    /// A small document of the plan beside its runs (`<dir>/<plan>/<name>`; `name` may hold one `/`), or None.
    pub fn read_doc(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.root.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(
                format!("cannot read {}", self.root.join(name).display()),
                e,
            )),
        }
    }

    /// Writes a plan document atomically.
    pub fn write_doc(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::StateDir {
            path: dir.clone(),
            source: e,
        })?;
        write_atomic(&path, bytes).map_err(Error::in_state_dir(&dir))
    }

    /// Writes state atomically. The caller holds the lock; the serial must follow the stored one.
    pub fn save(&self, state: &mut RunState) -> Result<()> {
        let path = self.state_path(&state.run_id);
        if let Some(stored) = self.load(&state.run_id)? {
            if stored.lineage != state.lineage || stored.serial != state.serial {
                return Err(Error::Conflict {
                    run: state.run_id.clone(),
                    expected: state.serial,
                });
            }
        }
        let dir = self.run_dir(&state.run_id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::StateDir {
            path: dir.clone(),
            source: e,
        })?;
        state.serial += 1;
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::runtime(format!("cannot encode state: {e}")))?;
        if let Err(e) = write_atomic(&path, &bytes) {
            state.serial -= 1;
            return Err(Error::in_state_dir(&dir)(e));
        }
        // The snapshot holds everything now: a journal beside it would only repeat older serials.
        journal::remove(&path)?;
        state.changed.0.clear();
        Ok(())
    }

    /// Checkpoints into the journal when one is open for this run (see state_journal.rs).
    pub fn append(&self, state: &mut RunState) -> Result<Appended> {
        let mut cursor = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        match cursor.as_mut() {
            Some(c) => c.append(state),
            None => Ok(Appended::No),
        }
    }

    /// From now on, checkpoints of `state` (just saved whole) are appended to a journal.
    pub fn begin_journal(&self, state: &RunState) -> Result<()> {
        let cursor = Cursor::open(&self.state_path(&state.run_id), state)?;
        *self.journal.lock().unwrap_or_else(|e| e.into_inner()) = Some(cursor);
        Ok(())
    }

    /// Stops journaling (true if a journal was open); the next save writes `state.json` whole and removes it.
    pub fn end_journal(&self) -> bool {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

/// temp file in the same directory, fsync, rename, fsync the directory: a crash leaves old or new, never half.
/// The file is 0600 (state and rendered scripts may hold secrets), and a failed write (a full disk) removes its
/// temp file rather than leave it to keep the disk full.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile's errors name its temp file, which is gone by then: keep the OS error only.
    let fail = |e: std::io::Error| {
        let e = e
            .raw_os_error()
            .map_or(e, std::io::Error::from_raw_os_error);
        Error::io(format!("cannot write {}", path.display()), e)
    };
    // tempfile names each temp file uniquely (concurrent writers of one file never share one) and deletes it
    // when dropped on an error path.
    let mut tmp = tempfile::Builder::new()
        .prefix(".sortie-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The holder of a lock, as written to its holder file.
fn holder_json() -> String {
    serde_json::json!({
        "pid": std::process::id(),
        "host": hostname(),
        "since": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
    .to_string()
}

/// `pid P on HOST since T`, from a holder file. The holder writes the file just after it takes the flock, so
/// for a moment the file is missing or names the previous holder (gone): wait briefly for the live one.
fn describe_holder(path: &Path) -> String {
    let read = || {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    };
    let mut held = read();
    for _ in 0..50 {
        if held.as_ref().is_some_and(holder_is_alive) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        held = read();
    }
    held.map(|h| {
        format!(
            "pid {} on {} since {}",
            h["pid"],
            h["host"].as_str().unwrap_or("?"),
            h["since"].as_str().unwrap_or("?")
        )
    })
    .unwrap_or_else(|| "an unknown process".into())
}

/// Whether a holder file names a process that exists (another host's process is taken to exist).
fn holder_is_alive(held: &serde_json::Value) -> bool {
    if held["host"].as_str() != Some(hostname().as_str()) {
        return true;
    }
    held["pid"]
        .as_u64()
        .and_then(|p| i32::try_from(p).ok())
        .is_some_and(|pid| {
            pid > 0
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                    != Err(nix::errno::Errno::ESRCH)
        })
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
