//! `wait` and `cancel` (docs/HOST_PROTOCOL.md): what a caller does to an attempt from outside.

use crate::host::protocol::exit;
use std::path::Path;
use std::time::{Duration, Instant};

use super::liveness::{alive, kill_group};
use super::report::Report;
use super::status_dir::{now, State, StatusDir};
use crate::error::Result;

/// How `wait` polls: `exit_code` every `pause`, liveness every `k` polls. A whole number of seconds `n` looks
/// for the end four times a second and at liveness every `n` seconds; a fraction checks both at that pace.
/// `None` when `every` is not a number.
pub fn wait_pace(every: &str) -> Option<(Duration, u64)> {
    if every.contains('.') {
        let secs: f64 = every
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
        Some((Duration::from_secs_f64(secs), 1))
    } else {
        let n: u64 = every.parse().ok()?;
        Some((Duration::from_millis(250), (n * 4).max(1)))
    }
}

/// Waits for the attempt's end: its status and recorded code, 126 on a spot notice, 125 when it is lost or
/// absent.
pub fn wait(dir: &Path, pause: Duration, k: u64) -> (Report, i32) {
    let d = StatusDir::new(dir);
    let mut n: u64 = 0;
    loop {
        if d.has("exit_code") {
            let code = d.val("exit_code").trim().parse().unwrap_or(1);
            return (Report::read(&d, false), code);
        }
        if d.has("spot_notice") {
            return (Report::read(&d, false), exit::SPOT_NOTICE);
        }
        if n % k == 0 && matches!(d.state(false), State::Lost | State::Absent) {
            return (Report::read(&d, false), exit::LOST);
        }
        n += 1;
        std::thread::sleep(pause);
    }
}

/// Cancels the attempt (a no-op when there is none or it has finished): marks it `cancelled`, waits at most
/// 10 s for a starting attempt, ends its group (TERM, `grace`, KILL), waits at most 5 s for the supervisor to
/// record the end, and records 143 itself when no supervisor is left to do it.
pub fn cancel(dir: &Path, grace: Duration) -> Result<Report> {
    let d = StatusDir::new(dir);
    if !d.has("attempt") || d.has("exit_code") {
        return Ok(Report::read(&d, false));
    }
    if !d.has("cancelled") {
        d.put("cancelled", &now().to_string())?;
    }
    // A starting attempt gets its pid soon, or sees `cancelled` and does not start.
    let end = Instant::now() + Duration::from_secs(10);
    while d.state(false) == State::Starting && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_group(&d.val("pid"), grace, d.same_boot());
    let end = Instant::now() + Duration::from_secs(5);
    let supervised = || alive(&d.val("supervisor_pid"), d.same_boot());
    while !d.has("exit_code") && supervised() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    // No supervisor left to record the end (it was lost): record it here so the attempt is final.
    if !supervised() && !d.has("exit_code") {
        d.put("finished_at", &now().to_string())?;
        d.put("exit_code", &exit::CANCELLED.to_string())?;
    }
    Ok(Report::read(&d, false))
}
