//! Is an attempt's process still there (docs/HOST_PROTOCOL.md, "Liveness"): a pid or a process group counts as
//! alive only on the boot that recorded it, when `kill(pid, 0)` succeeds, and when `/proc` does not call it a
//! zombie. Also the TERM, grace, KILL sequence that ends a whole group.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A whole number as the wrapper's `is_uint` accepts it: one or more ASCII digits, nothing else.
pub fn is_uint(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty where there is none.
pub fn boot_id() -> String {
    super::status_dir::first_line(std::path::Path::new("/proc/sys/kernel/random/boot_id"))
}

/// A recorded pid, if it is a number a process can have.
fn pid_of(text: &str) -> Option<i32> {
    if !is_uint(text) {
        return None;
    }
    text.parse::<i32>().ok().filter(|&p| p > 0)
}

/// The state letter and the process group of `/proc/PID/stat` (the fields after the `(comm)` field, whose
/// name may itself hold spaces and parentheses).
fn stat_of(pid: &str) -> Option<(u8, String)> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = text.windows(2).rposition(|w| w == b") ")?;
    let rest = String::from_utf8_lossy(&text[close + 2..]).into_owned();
    let mut fields = rest.split(' ');
    let state = fields.next()?.bytes().next()?;
    let _ppid = fields.next()?;
    Some((state, fields.next()?.to_string()))
}

fn has_proc() -> bool {
    std::fs::File::open("/proc/self/stat").is_ok()
}

/// Zombie (`Z`) and dead (`X`) processes are gone: a PID 1 that does not reap keeps zombies for ever.
fn live_state(state: u8) -> bool {
    state != b'Z' && state != b'X'
}

/// The recorded pid `text` names a live, non-zombie process of this boot.
pub fn alive(text: &str, same_boot: bool) -> bool {
    let Some(pid) = pid_of(text) else {
        return false;
    };
    if !same_boot || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    !has_proc() || stat_of(text).is_some_and(|(state, _)| live_state(state))
}

/// Some non-zombie process of this boot is in the process group `text`.
pub fn group_alive(text: &str, same_boot: bool) -> bool {
    let Some(pgrp) = pid_of(text).filter(|&p| p > 1) else {
        return false;
    };
    if !same_boot || killpg(Pid::from_raw(pgrp), None).is_err() {
        return false;
    }
    !has_proc() || group_has_live(&pgrp.to_string())
}

fn group_has_live(pgrp: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        is_uint(&name)
            && stat_of(&name).is_some_and(|(state, group)| group == pgrp && live_state(state))
    })
}

/// TERM the whole group `text`, then KILL what is left after `grace`.
pub fn kill_group(text: &str, grace: Duration, same_boot: bool) {
    if !group_alive(text, same_boot) {
        return;
    }
    let Some(pgrp) = pid_of(text).map(Pid::from_raw) else {
        return;
    };
    if killpg(pgrp, Signal::SIGTERM).is_err() {
        return;
    }
    let end = Instant::now() + grace;
    while group_alive(text, same_boot) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = killpg(pgrp, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::{alive, group_alive, is_uint, stat_of};

    #[test]
    fn test_int_our_own_process_is_alive_and_nonsense_pids_are_not() {
        let me = std::process::id().to_string();
        assert!(alive(&me, true));
        assert!(!alive(&me, false), "a pid of another boot means nothing");
        for text in ["", "x", "-1", "0", "99999999999", "12 "] {
            assert!(!alive(text, true), "{text:?}");
            assert!(!group_alive(text, true), "{text:?}");
        }
        let (state, _) = stat_of(&me).expect("our own stat");
        assert_ne!(state, b'Z');
        assert!(is_uint("007") && !is_uint("") && !is_uint("1.5"));
    }
}
