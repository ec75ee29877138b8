//! Who holds a directory run lock, told truthfully. `lock.json` is only what the last taker wrote: after a
//! `kill -9` it can name a dead pid while another process holds the flock. The kernel's `/proc/locks` names the
//! real holder, and a flock probe tells a live lock from none at all (`plan unlock --force`).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// The holder of the flock on `<run dir>/lock`, described, or `None` when nobody holds it.
pub fn live_holder(run_dir: &Path) -> Option<String> {
    let lock = run_dir.join("lock");
    let file = OpenOptions::new().read(true).open(&lock).ok()?;
    let ino = file.metadata().ok()?.ino();
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Taken: nobody held it. Dropping the guard releases it at once.
        Ok(_probe) => None,
        Err((_, _)) => Some(describe(run_dir, ino)),
    }
}

/// `pid N on HOST since T` from `lock.json`, unless that pid is dead here: then the pid the kernel names.
pub fn describe(run_dir: &Path, ino: u64) -> String {
    let recorded = fs::read_to_string(run_dir.join("lock.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let kernel = kernel_holder(ino);
    if let Some(h) = &recorded {
        let pid = h["pid"].as_u64().unwrap_or(0);
        let here = h["host"].as_str() == Some(crate::state::dir_store::hostname().as_str());
        let alive = pid > 0 && (!here || alive(pid));
        if alive && kernel.is_none_or(|k| k == pid) {
            return format!(
                "pid {pid} on {} since {}",
                h["host"].as_str().unwrap_or("?"),
                h["since"].as_str().unwrap_or("?")
            );
        }
    }
    match kernel {
        Some(pid) => format!("pid {pid} on {}", crate::state::dir_store::hostname()),
        None => "an unknown process".into(),
    }
}

fn alive(pid: u64) -> bool {
    i32::try_from(pid).is_ok_and(|p| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
            && !fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
    })
}

/// The pid holding a FLOCK on the file with inode `ino`, from `/proc/locks` (Linux; `None` elsewhere).
fn kernel_holder(ino: u64) -> Option<u64> {
    let text = fs::read_to_string("/proc/locks").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 330 fd:01:1234 0 EOF"; blocked waiters are marked "->".
        let i = f.iter().position(|x| *x == "FLOCK")?;
        if f.get(1) == Some(&"->") {
            return None;
        }
        let pid: u64 = f.get(i + 3)?.parse().ok()?;
        let node: u64 = f.get(i + 4)?.rsplit(':').next()?.parse().ok()?;
        (node == ino).then_some(pid)
    })
}
