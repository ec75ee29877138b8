//! The directory store's journal: while a walk runs, each checkpoint appends one line (the steps it changed and
//! the run's status) to `journal.jsonl` beside `state.json` and fsyncs it, instead of rewriting the whole
//! document. A checkpoint then costs the size of what changed, not of the plan (a 10,000-step state is ~4 MB).
//!
//! `state.json` plus the journal's lines in serial order is the state. A line is appended whole and synced
//! before the checkpoint returns, so a kill -9 leaves at most a torn last line that no one was told about: it is
//! ignored. Any other line that does not read, or a gap in the serials, is corruption, refused like a corrupt
//! `state.json`. Compaction writes `state.json` anew (atomically) and only then empties the journal; lines at or
//! below the snapshot's serial are skipped, so a crash between the two loses nothing.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{RunState, RunStatus, StepState};

pub const FILE: &str = "journal.jsonl";

/// Runs with more steps than this journal their checkpoints; smaller ones rewrite `state.json`, which at that
/// size costs about what an append does, and keeps the one file a person or a CI artifact reads current.
/// `SORTIE_JOURNAL_MIN_STEPS` sets it (tests use 0 to put small plans through the journal).
const MIN_STEPS: usize = 64;

/// The journal is folded into `state.json` once it outgrows the snapshot (and this floor): amortised, each
/// checkpoint still costs O(what changed).
const COMPACT_FLOOR: u64 = 256 * 1024;

pub fn wanted(steps: usize) -> bool {
    let min = std::env::var("SORTIE_JOURNAL_MIN_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MIN_STEPS);
    steps > min
}

/// One checkpoint: what changed since the previous one.
#[derive(Serialize, Deserialize)]
struct Record {
    serial: u64,
    lineage: String,
    status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<f64>,
    steps: IndexMap<String, StepState>,
}

/// Identifies a file's content cheaply: a writer behind our back (another process, a hand edit) changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
        })
    }
}

/// The journal being appended to by this process.
pub struct Cursor {
    run: String,
    /// The serial of the last line written (or of the snapshot, before the first).
    serial: u64,
    file: File,
    path: PathBuf,
    len: u64,
    snapshot: PathBuf,
    snapshot_stamp: Stamp,
}

pub enum Appended {
    /// Written: the checkpoint is durable.
    Yes,
    /// Not written: this save is not one the journal takes (no cursor for this run and serial).
    No,
    /// Written, and the journal has outgrown the snapshot: fold it in.
    Compact,
}

impl Cursor {
    /// Starts an empty journal beside `snapshot`, which holds `state` as just saved.
    pub fn open(snapshot: &Path, state: &RunState) -> Result<Cursor> {
        let path = snapshot.with_file_name(FILE);
        let fail = |e| Error::io(format!("cannot start {}", path.display()), e);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(fail)?;
        file.sync_all().map_err(fail)?;
        if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        let snapshot_stamp = Stamp::of(snapshot).ok_or_else(|| {
            Error::runtime(format!(
                "{} vanished while starting its journal",
                snapshot.display()
            ))
        })?;
        Ok(Cursor {
            run: state.run_id.clone(),
            serial: state.serial,
            file,
            path,
            len: 0,
            snapshot: snapshot.to_path_buf(),
            snapshot_stamp,
        })
    }

    /// Appends `state`'s changes as serial + 1. A state this cursor did not write last is not taken (`No`); a
    /// journal or snapshot changed behind our back is a conflict, never written over.
    pub fn append(&mut self, state: &mut RunState) -> Result<Appended> {
        if state.run_id != self.run || state.serial != self.serial {
            return Ok(Appended::No);
        }
        let behind_our_back = Stamp::of(&self.snapshot) != Some(self.snapshot_stamp)
            || self.file.metadata().map(|m| m.len()).ok() != Some(self.len);
        if behind_our_back {
            return Err(Error::Conflict {
                run: state.run_id.clone(),
                expected: state.serial,
            });
        }
        let record = Record {
            serial: state.serial + 1,
            lineage: state.lineage.clone(),
            status: state.status,
            finished_at: state.finished_at,
            steps: state
                .changed
                .0
                .iter()
                .filter_map(|id| state.steps.get(id).map(|s| (id.clone(), s.clone())))
                .collect(),
        };
        // Scrubbed like the whole document would be: only what changed goes through the scrubber.
        let mut json = serde_json::to_value(&record)
            .map_err(|e| Error::runtime(format!("cannot encode a journal record: {e}")))?;
        crate::scrub::current().json(&mut json);
        let mut line = serde_json::to_vec(&json)
            .map_err(|e| Error::runtime(format!("cannot encode a journal record: {e}")))?;
        line.push(b'\n');
        let fail = |e| Error::io(format!("cannot write {}", self.path.display()), e);
        self.file.write_all(&line).map_err(fail)?;
        self.file.sync_data().map_err(fail)?;
        self.len += line.len() as u64;
        state.serial += 1;
        self.serial = state.serial;
        state.changed.0.clear();
        Ok(if self.len > self.snapshot_stamp.size.max(COMPACT_FLOOR) {
            Appended::Compact
        } else {
            Appended::Yes
        })
    }
}

/// Applies the journal beside `snapshot` (if any) to `state`. An error names the line and why.
pub fn replay(snapshot: &Path, state: &mut RunState) -> std::result::Result<(), (PathBuf, String)> {
    let path = snapshot.with_file_name(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err((path, format!("cannot read it: {e}"))),
    };
    // The last piece has no newline when an append was cut short: never acknowledged, so not state.
    let complete = bytes.len() - bytes.iter().rev().take_while(|&&b| b != b'\n').count();
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let at = |why: String| (path.clone(), format!("line {}: {why}", n + 1));
        let record: Record = serde_json::from_slice(line).map_err(|e| at(e.to_string()))?;
        if record.lineage != state.lineage {
            return Err(at(format!(
                "lineage `{}` is not the run's `{}`",
                record.lineage, state.lineage
            )));
        }
        if record.serial <= state.serial {
            continue; // folded into the snapshot already
        }
        if record.serial != state.serial + 1 {
            return Err(at(format!(
                "serial {} does not follow {}",
                record.serial, state.serial
            )));
        }
        state.serial = record.serial;
        state.status = record.status;
        state.finished_at = record.finished_at;
        for (id, st) in record.steps {
            state.steps.insert(id, st);
        }
    }
    Ok(())
}

/// Removes the journal beside `snapshot` after the snapshot took in everything it held.
pub fn remove(snapshot: &Path) -> Result<()> {
    let path = snapshot.with_file_name(FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::dir_store::DirStore;
    use crate::state::store::Store;

    fn run(steps: usize) -> RunState {
        let steps: serde_json::Map<String, serde_json::Value> = (0..steps)
            .map(|i| {
                (
                    format!("s{i}"),
                    serde_json::json!({"status": "pending", "attempt": 0}),
                )
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "version": crate::state::STATE_VERSION, "lineage": "l1", "serial": 0, "plan": "p",
            "run_id": "20261204-000000-000-00", "plan_digest": "", "target": "local", "status": "running",
            "started_at": 0.0, "vars": {}, "steps": steps,
        }))
        .expect("state")
    }

    /// Many checkpoints: the journal is folded into state.json whenever it outgrows it, a reader sees every
    /// checkpoint at any point, and lines already folded in are skipped (a crash between the snapshot's rename
    /// and the journal's truncation).
    #[tokio::test]
    async fn compaction_keeps_every_checkpoint_and_skips_folded_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::Dir(DirStore::new(dir.path().to_path_buf(), "p"));
        let mut state = run(3);
        store.save(&mut state).await.expect("first save");
        store.begin_journal_always(&state).expect("journal");
        let snapshot = dir.path().join("p").join(&state.run_id).join("state.json");
        let journal = snapshot.with_file_name(FILE);
        let mut compactions = 0;
        for k in 0..200u32 {
            let st = state.step_mut(&format!("s{}", k % 3));
            st.attempt = k;
            st.error = Some("x".repeat(4000)); // ~4 KB a line: compaction every ~64 checkpoints
            let before = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
            store.save(&mut state).await.expect("save");
            let after = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
            compactions += usize::from(after < before);
            let loaded = store
                .load(&state.run_id)
                .await
                .expect("load")
                .expect("some");
            assert_eq!(loaded, state, "checkpoint {k}");
            assert_eq!(loaded.serial, state.serial);
        }
        assert!(compactions >= 2, "{compactions} compactions");
        assert!(
            std::fs::metadata(&journal).expect("journal").len() <= COMPACT_FLOOR + 8192,
            "the journal kept growing"
        );
        // Replaying lines the snapshot already holds changes nothing.
        let lines = std::fs::read(&journal).expect("read");
        store.end_journal(&mut state).await.expect("end");
        assert!(!journal.exists());
        std::fs::write(&journal, &lines).expect("write back");
        let loaded = store
            .load(&state.run_id)
            .await
            .expect("load")
            .expect("some");
        assert_eq!(loaded, state);
    }

    /// A line whose serial skips one is corruption, named by line.
    #[test]
    fn a_gap_in_serials_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = dir.path().join("state.json");
        std::fs::write(dir.path().join(FILE), "{\"serial\":1,\"lineage\":\"l1\",\"status\":\"running\",\"steps\":{}}\n{\"serial\":3,\"lineage\":\"l1\",\"status\":\"running\",\"steps\":{}}\n").expect("write");
        let mut state = run(1);
        let (path, why) = replay(&snapshot, &mut state).expect_err("gap");
        assert!(path.ends_with(FILE));
        assert_eq!(why, "line 2: serial 3 does not follow 1");
    }
}
