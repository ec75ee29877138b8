//! Step logs on the local target: a copy of every attempt's log is kept beside the run's state once the step
//! ends (teardown removes the host and its status dir), and `plan logs` streams a log line by line, scrubbed of
//! secrets, instead of reading it whole. Following survives a retry: the wrapper replaces `output.log` for the
//! new attempt, so the follower drains the file it has open and then starts the new one from its first byte.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::plan::StateLocation;
use crate::scrub::LineScrubber;

/// Where the log of `step`'s `attempt` is kept: `<state dir>/<plan>/<run>/logs/<step>.<attempt>.log` (none with
/// S3 state, where SSM already writes the full output beside the state).
pub fn kept_path(
    state: &StateLocation,
    plan: &str,
    run: &str,
    step: &str,
    attempt: u32,
) -> Option<PathBuf> {
    match state {
        StateLocation::Dir(dir) => Some(
            dir.join(plan)
                .join(run)
                .join("logs")
                .join(format!("{step}.{attempt}.log")),
        ),
        StateLocation::S3 { .. } => None,
    }
}

/// Copies a finished attempt's log to `to`, scrubbed, 0600, atomically (a failed copy leaves no temp file).
pub fn keep(from: &Path, to: &Path) -> Result<()> {
    let source = match File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot read {}", from.display()), e)),
    };
    let dir = to.parent().unwrap_or(Path::new("."));
    let fail = |e| Error::io(format!("cannot write {}", to.display()), e);
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    let mut scrub = LineScrubber::new();
    let mut reader = BufReader::new(source);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(fail)? == 0 {
            break;
        }
        tmp.write_all(&scrub.line(&line)).map_err(fail)?;
    }
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(to).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Streams a log file from its start to `out`, line by line and scrubbed.
pub fn stream(path: &Path, out: &mut impl Write) -> Result<()> {
    let mut f = Follower::new(path.to_path_buf());
    f.pump(out, true)
}

/// Reads a growing log (the wrapper's `output.log`) as it is written, across the file being replaced.
pub struct Follower {
    path: PathBuf,
    reader: Option<(BufReader<File>, u64)>,
    scrub: LineScrubber,
    /// The start of a line whose newline has not been written yet.
    partial: Vec<u8>,
}

impl Follower {
    pub fn new(path: PathBuf) -> Follower {
        Follower {
            path,
            reader: None,
            scrub: LineScrubber::new(),
            partial: Vec::new(),
        }
    }

    /// Whether a log file was opened at all.
    pub fn opened(&self) -> bool {
        self.reader.is_some()
    }

    /// Writes every complete line available now (and, when `last`, the unfinished one too). When the path now
    /// names another file (a new attempt), the open one is drained first and the new one read from its start.
    pub fn pump(&mut self, out: &mut impl Write, last: bool) -> Result<()> {
        loop {
            if self.reader.is_none() {
                match File::open(&self.path) {
                    Ok(f) => {
                        let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                        self.reader = Some((BufReader::new(f), ino));
                    }
                    Err(_) => return Ok(()),
                }
            }
            self.drain(out)?;
            let current = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
            let open = self.reader.as_ref().map(|(_, ino)| *ino);
            if current.is_some() && current != open {
                // Replaced: the open file is the whole previous attempt; read its last lines, then the new one.
                self.drain(out)?;
                self.flush_partial(out)?;
                self.reader = None;
                continue;
            }
            if last {
                self.flush_partial(out)?;
            }
            return out
                .flush()
                .map_err(|e| Error::io("cannot write to stdout", e));
        }
    }

    fn drain(&mut self, out: &mut impl Write) -> Result<()> {
        let Some((reader, _)) = self.reader.as_mut() else {
            return Ok(());
        };
        let fail = |e| Error::io("cannot write to stdout", e);
        loop {
            let n = reader
                .read_until(b'\n', &mut self.partial)
                .map_err(|e| Error::io(format!("cannot read {}", self.path.display()), e))?;
            if n == 0 || !self.partial.ends_with(b"\n") {
                return Ok(());
            }
            out.write_all(&self.scrub.line(&self.partial))
                .map_err(fail)?;
            self.partial.clear();
        }
    }

    fn flush_partial(&mut self, out: &mut impl Write) -> Result<()> {
        if !self.partial.is_empty() {
            out.write_all(&self.scrub.line(&self.partial))
                .map_err(|e| Error::io("cannot write to stdout", e))?;
            self.partial.clear();
        }
        Ok(())
    }
}
