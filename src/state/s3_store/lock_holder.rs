//! Who holds a lock object, as an error names them, and whether they are a dead process on this host.

use std::time::SystemTime;

use crate::state::s3_lock_lease::LockDoc;

/// `pid P on HOST since T (expires E[, expired])`.
pub(super) fn describe_holder(held: &LockDoc, now: SystemTime) -> String {
    let text = |t: &str| {
        if t.is_empty() {
            "?".to_string()
        } else {
            t.to_string()
        }
    };
    let expired = humantime::parse_rfc3339(&held.expires).is_ok_and(|t| t <= now);
    let pid = if held.pid == 0 {
        "?".to_string()
    } else {
        held.pid.to_string()
    };
    format!(
        "pid {pid} on {} since {} (expires {}{})",
        text(&held.host),
        text(&held.since),
        text(&held.expires),
        if expired { ", expired" } else { "" }
    )
}

/// Whether a lock's holder ran on this host and its process no longer exists.
pub(super) fn holder_is_dead_here(held: &LockDoc) -> bool {
    let same_host = held.host == crate::state::store::hostname();
    let pid = i32::try_from(held.pid).ok();
    match (same_host, pid) {
        (true, Some(pid)) if pid > 0 => {
            matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            ) || is_zombie(pid)
        }
        _ => false,
    }
}

/// A zombie holds no lock: it has exited, only its parent has not reaped it yet.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_says_when_the_lock_expired() {
        let held = LockDoc::parse(
            br#"{"owner": "x", "pid": 42, "host": "h",
                 "since": "2024-01-01T00:00:00Z", "expires": "2024-01-01T01:00:00Z"}"#,
        )
        .expect("a lock document");
        let before = humantime::parse_rfc3339("2024-01-01T00:30:00Z").expect("time");
        let after = humantime::parse_rfc3339("2024-01-01T02:00:00Z").expect("time");
        assert_eq!(
            describe_holder(&held, before),
            "pid 42 on h since 2024-01-01T00:00:00Z (expires 2024-01-01T01:00:00Z)"
        );
        assert_eq!(
            describe_holder(&held, after),
            "pid 42 on h since 2024-01-01T00:00:00Z (expires 2024-01-01T01:00:00Z, expired)"
        );
    }
}
