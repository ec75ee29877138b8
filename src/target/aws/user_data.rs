//! The instance's user data: the `max_lifetime` guard that terminates a host even if sortie never runs again.

use std::time::Duration;

/// The user data that enforces `max_lifetime` on the host: a per-boot script that arms a shutdown at an absolute
/// deadline (launch time + lifetime), so a reboot does not restart the clock. With
/// InstanceInitiatedShutdownBehavior=terminate, the shutdown terminates the instance, even if sortie never runs
/// again. A systemd timer (`systemd-run --on-active`) where there is systemd, else a detached `sleep`.
pub fn lifetime_user_data(max_lifetime: Duration, now_epoch_secs: u64) -> String {
    let deadline = now_epoch_secs + max_lifetime.as_secs();
    let human = humantime::format_duration(max_lifetime);
    format!(
        r#"#!/bin/sh
# sortie: max_lifetime {human}. This instance shuts down (and so terminates itself) at {deadline} (epoch seconds),
# even if sortie never runs again. The script is re-run at every boot by cloud-init, so a reboot keeps the deadline.
mkdir -p /var/lib/cloud/scripts/per-boot
cat > /var/lib/cloud/scripts/per-boot/sortie-max-lifetime.sh <<'SORTIE_EOF'
#!/bin/sh
deadline={deadline}
left=$((deadline - $(date +%s)))
if [ "$left" -le 0 ]; then
    shutdown -h now
    exit 0
fi
if command -v systemd-run >/dev/null 2>&1 &&
    systemd-run --unit=sortie-max-lifetime --on-active="${{left}}s" --timer-property=AccuracySec=1s \
        /bin/sh -c 'shutdown -h now'; then
    exit 0
fi
nohup sh -c "sleep $left; shutdown -h now" >/dev/null 2>&1 </dev/null &
SORTIE_EOF
chmod 0755 /var/lib/cloud/scripts/per-boot/sortie-max-lifetime.sh
/var/lib/cloud/scripts/per-boot/sortie-max-lifetime.sh
"#
    )
}

/// Standard base64 with padding (user data must be base64 on the wire).
pub(crate) fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"#!/bin/sh\necho hi\n"), "IyEvYmluL3NoCmVjaG8gaGkK");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn user_data_arms_a_shutdown_at_an_absolute_deadline() {
        let script = lifetime_user_data(Duration::from_secs(24 * 3600), 1_700_000_000);
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("deadline=1700086400\n"), "{script}");
        assert!(
            script.contains("systemd-run --unit=sortie-max-lifetime --on-active=\"${left}s\""),
            "{script}"
        );
        assert!(
            script.contains("nohup sh -c \"sleep $left; shutdown -h now\""),
            "{script}"
        );
        assert!(
            script.contains("/var/lib/cloud/scripts/per-boot/"),
            "{script}"
        );
        assert!(script.contains("max_lifetime 1day"), "{script}");
    }

    /// The script runs in a POSIX shell: `sh -n` parses it, and the per-boot part, run with a deadline in the
    /// past and `shutdown` stubbed, calls `shutdown -h now`.
    #[test]
    fn user_data_is_valid_shell() {
        let script = lifetime_user_data(Duration::from_secs(3600), 1_700_000_000);
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", &script])
            .status()
            .expect("run sh");
        assert!(status.success(), "sh -n rejected:\n{script}");
        let per_boot = script
            .split("<<'SORTIE_EOF'\n")
            .nth(1)
            .and_then(|rest| rest.split("SORTIE_EOF\n").next())
            .expect("per-boot script inside the user data");
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = dir.path().join("shutdown");
        std::fs::write(
            &stub,
            format!("#!/bin/sh\necho \"$@\" > {}/called\n", dir.path().display()),
        )
        .expect("write stub");
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&stub)
            .status()
            .expect("chmod");
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", per_boot])
            .env("PATH", path)
            .status()
            .expect("run per-boot script");
        assert!(status.success());
        let called =
            std::fs::read_to_string(dir.path().join("called")).expect("shutdown was called");
        assert_eq!(called.trim(), "-h now");
    }
}
