//! A dev environment's time to live (`ttl:` on an instance), enforced on the host itself: a watcher
//! (`src/host/ttl.sh`) shuts the host down once the deadline in its `expires-at` file has passed, whether or not
//! sortie ever runs again. `plan extend` rewrites that file. Unlike `max_lifetime` (a fixed cap armed as a timer),
//! the deadline is re-read at every poll, so it can move.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The watcher, shipped inside the binary.
pub const WATCHER: &str = include_str!("host/ttl.sh");

/// Where the deadline lives on an EC2 host (under `${SORTIE_HOST_ROOT:-}` on the test endpoint).
pub const HOST_FILE: &str = "/var/lib/sortie/expires-at";

/// Seconds since the epoch, now.
pub fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The deadline as RFC 3339, for outputs and messages.
pub fn rfc3339(epoch: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch)).to_string()
}

/// The user-data part that installs the watcher and arms it at every boot; `deadline` is written only when the
/// file is absent, so a reboot keeps an extended deadline. All paths sit under `${SORTIE_HOST_ROOT:-}` (empty on
/// EC2), so a test can run the whole part in a directory.
pub fn user_data(ttl: Duration, deadline: u64) -> String {
    let human = humantime::format_duration(ttl);
    format!(
        r#"# sortie: ttl {human}. The watcher shuts this instance down (and so terminates it) once the deadline in
# {HOST_FILE} has passed; `plan extend` moves the deadline.
R=${{SORTIE_HOST_ROOT:-}}
mkdir -p "$R/var/lib/sortie" "$R/var/lib/cloud/scripts/per-boot"
[ -s "$R{HOST_FILE}" ] || printf '%s\n' {deadline} > "$R{HOST_FILE}"
cat > "$R/var/lib/sortie/ttl.sh" <<'SORTIE_TTL_EOF'
{WATCHER}SORTIE_TTL_EOF
cat > "$R/var/lib/cloud/scripts/per-boot/sortie-ttl.sh" <<'SORTIE_TTL_EOF'
#!/bin/sh
R=${{SORTIE_HOST_ROOT:-}}
set -- /bin/sh "$R/var/lib/sortie/ttl.sh" "$R{HOST_FILE}" shutdown -h now
if command -v systemd-run >/dev/null 2>&1 && systemd-run --unit=sortie-ttl "$@"; then
    exit 0
fi
nohup "$@" >/dev/null 2>&1 </dev/null &
SORTIE_TTL_EOF
chmod 0755 "$R/var/lib/cloud/scripts/per-boot/sortie-ttl.sh"
"$R/var/lib/cloud/scripts/per-boot/sortie-ttl.sh"
"#
    )
}

/// The SSM command of `plan extend`: replaces the deadline atomically, and fails (exit 3) on a host without a
/// watcher rather than creating a deadline nothing reads.
pub fn extend_script(deadline: u64) -> String {
    format!(
        r#"f="${{SORTIE_HOST_ROOT:-}}{HOST_FILE}"
[ -f "$f" ] || {{ echo "this host has no ttl ($f is missing)" >&2; exit 3; }}
printf '%s\n' {deadline} > "$f.tmp" && mv -f "$f.tmp" "$f"
echo "expires at {deadline}"
"#
    )
}

/// A local host's deadline file.
pub fn local_file(home: &Path) -> PathBuf {
    home.join(".sortie").join("expires-at")
}

/// Writes a deadline atomically (the watcher may read at any moment).
pub fn write_local(home: &Path, deadline: u64) -> Result<()> {
    crate::state::store::write_atomic(&local_file(home), format!("{deadline}\n").as_bytes())
}

/// Arms a local host's ttl: keeps a deadline already there (an adopted host, perhaps extended), and starts the
/// watcher unless it runs. Returns the deadline.
pub fn arm_local(home: &Path, ttl: Duration) -> Result<u64> {
    let existing = std::fs::read_to_string(local_file(home))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let deadline = match existing {
        Some(d) => d,
        None => {
            let d = now_epoch() + ttl.as_secs();
            write_local(home, d)?;
            d
        }
    };
    if watcher_pid(home).is_none() {
        spawn_local(home)?;
    }
    Ok(deadline)
}

/// The pid of this host's running watcher, if any.
fn watcher_pid(home: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(home.join(".sortie").join("ttl.pid"))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let file = local_file(home);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(&*file.to_string_lossy())
        .then_some(pid)
}

/// Starts the watcher of a local host: detached in its own session, so it outlives `plan` as an EC2 host's would.
/// At the deadline it cancels every step of the host (the local stand-in for a shutdown) and leaves `expired`.
fn spawn_local(home: &Path) -> Result<()> {
    let dir = home.join(".sortie");
    let watcher = dir.join("ttl.sh");
    crate::state::store::write_atomic(&watcher, WATCHER.as_bytes())?;
    let expire = r#"for d in "$1"/.sortie/steps/*/; do
    [ -d "$d" ] && "$2" host-wrapper cancel "${d%/}" 5 >/dev/null 2>&1 || :
done
[ -d "$1/.sortie" ] && : > "$1/.sortie/expired"
exit 0"#;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(&watcher)
        .arg(local_file(home))
        .args(["sh", "-c", expire, "sortie-ttl"])
        .arg(home)
        .arg(crate::host::native::plan_exe())
        // A process of the host, as its steps are: found (and reaped) by what looks for them.
        .env("SORTIE_HOME", home)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("cannot start the ttl watcher", e))?;
    crate::state::store::write_atomic(&dir.join("ttl.pid"), format!("{}\n", child.id()).as_bytes())
}

/// Stops a local host's watcher (its teardown): only a process that still runs our watcher on this host.
pub fn stop_local(home: &Path) {
    if let Some(pid) = watcher_pid(home) {
        // The watcher's group (it leads one): its `sleep` goes with it.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}
