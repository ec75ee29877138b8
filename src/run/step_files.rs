//! Files a `run` step ships to its host (`files: { SOURCE: DESTINATION }`): scanned, checked and digested at
//! compile time; copied into the sandbox on the local target; packed into one tar.gz for the aws target.
//!
//! A source is a file or a directory, relative to the plan's directory. Inside a directory, symbolic links and
//! special files are refused (a link could pull in anything on the machine), and `.git` / `__pycache__` /
//! `.sortie` are skipped (they change without the program changing). Only the executable bit of a mode is kept.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Per step: the total size of the files shipped, and how many there are.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const MAX_FILES: usize = 10_000;
/// `.sortie` holds the state and the local sandboxes beside a plan: shipping the plan's own directory must not
/// ship (or digest) them.
const SKIPPED_DIRS: &[&str] = &[".git", "__pycache__", ".sortie"];

/// Names the host protocol keeps in a step's status directory, which is the step's working directory.
fn is_reserved(name: &str) -> bool {
    use crate::host::protocol::{ATTEMPT_FILES, PROTOCOL_FILES};
    ATTEMPT_FILES.contains(&name) || PROTOCOL_FILES.contains(&name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: MAX_BYTES,
            max_files: MAX_FILES,
        }
    }
}

/// One `SOURCE: DESTINATION` pair of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    /// As written in the plan.
    pub name: String,
    /// The plan's directory joined with `name`.
    pub source: PathBuf,
    /// Normalised: relative (to the step's working directory) or absolute (on the host).
    pub dest: String,
}

/// A file or directory under a source; `rel` is empty for the source itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub rel: String,
    pub path: PathBuf,
    pub dir: bool,
    pub exec: bool,
    pub size: u64,
}

/// Checks a destination and returns it normalised (no empty components, no trailing `/`).
pub fn check_dest(dest: &str) -> std::result::Result<String, String> {
    if dest.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("must not contain `.` or `..` components".into());
    }
    let Some(first) = parts.first() else {
        return Err("names no file or directory".into());
    };
    let absolute = dest.starts_with('/');
    if absolute && (*first == ".sortie" || parts.starts_with(&["var", "lib", "sortie"])) {
        return Err("is inside sortie's own directory on the host".into());
    }
    if !absolute && is_reserved(first) {
        return Err(format!(
            "is reserved: `{first}` is a file of the host wrapper in the step's working directory"
        ));
    }
    Ok(format!(
        "{}{}",
        if absolute { "/" } else { "" },
        parts.join("/")
    ))
}

/// Whether `inner` is `outer` or inside it (both normalised by `check_dest`).
pub fn overlaps(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner == outer || inner.starts_with(&format!("{}/", outer.trim_end_matches('/')))
    };
    within(a, b) || within(b, a)
}

/// Lists what `source` ships, sorted, checking kinds and limits before any content is read.
pub fn scan(source: &Path, limits: &Limits) -> std::result::Result<Vec<Entry>, String> {
    let meta = std::fs::metadata(source).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    let mut out = Vec::new();
    if meta.is_file() {
        out.push(entry(String::new(), source.to_path_buf(), &meta));
    } else if meta.is_dir() {
        out.push(entry(String::new(), source.to_path_buf(), &meta));
        walk(source, "", &mut out)?;
    } else {
        return Err("is neither a file nor a directory".into());
    }
    let files = out.iter().filter(|e| !e.dir).count();
    if files > limits.max_files {
        return Err(format!(
            "has {files} files; a step ships at most {}",
            limits.max_files
        ));
    }
    let bytes: u64 = out.iter().map(|e| e.size).sum();
    if bytes > limits.max_bytes {
        return Err(format!("is {}", over_size(bytes, limits.max_bytes)));
    }
    Ok(out)
}

/// "N bytes; a step ships at most M bytes (64 MiB)": exact, as a size just over the limit would round to it.
pub fn over_size(bytes: u64, max: u64) -> String {
    format!(
        "{bytes} bytes; a step ships at most {max} bytes ({})",
        bytesize::ByteSize::b(max).display().iec()
    )
}

fn entry(rel: String, path: PathBuf, meta: &std::fs::Metadata) -> Entry {
    use std::os::unix::fs::PermissionsExt;
    Entry {
        rel,
        path,
        dir: meta.is_dir(),
        exec: meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        size: if meta.is_file() { meta.len() } else { 0 },
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<Entry>) -> std::result::Result<(), String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let name = name
            .to_str()
            .ok_or_else(|| format!("`{}` has a name that is not UTF-8", dir.display()))?;
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot read `{child_rel}`: {e}"))?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "contains a symbolic link, `{child_rel}`; copy its target into the directory instead"
            ));
        }
        if meta.is_dir() {
            if SKIPPED_DIRS.contains(&name) {
                continue;
            }
            out.push(entry(child_rel.clone(), path.clone(), &meta));
            walk(&path, &child_rel, out)?;
        } else if meta.is_file() {
            out.push(entry(child_rel, path, &meta));
        } else {
            return Err(format!(
                "contains `{child_rel}`, a FIFO, socket or device (only files and directories ship)"
            ));
        }
    }
    Ok(())
}

/// The content digest of a step's files: sha256 over each destination, then its sorted entries' relative
/// paths, kinds, executable bits and contents. Shipments are taken in destination order.
pub fn digest(shipments: &[(Shipment, Vec<Entry>)]) -> std::io::Result<String> {
    let mut order: Vec<&(Shipment, Vec<Entry>)> = shipments.iter().collect();
    order.sort_by(|a, b| a.0.dest.cmp(&b.0.dest));
    let mut h = Sha256::new();
    for (ship, entries) in order {
        h.update(b"dest\0");
        h.update(ship.dest.as_bytes());
        for e in entries {
            let tag: &[u8] = match (e.dir, e.exec) {
                (true, _) => b"\0d\0",
                (false, true) => b"\0x\0",
                (false, false) => b"\0f\0",
            };
            h.update(tag);
            h.update(e.rel.as_bytes());
            h.update(b"\0");
            if !e.dir {
                let mut file = std::fs::File::open(&e.path)?;
                let copied = std::io::copy(&mut (&mut file).take(e.size), &mut HashWriter(&mut h))?;
                h.update(copied.to_le_bytes());
            }
        }
    }
    Ok(hex(&h.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Scans every shipment again at run time and checks the content is still what the plan was compiled with, so
/// the digest recorded in state is the digest of what the host gets.
pub fn rescan(
    step: &str,
    ships: &[Shipment],
    expected: &str,
) -> Result<Vec<(Shipment, Vec<Entry>)>> {
    let mut all = Vec::new();
    for s in ships {
        let entries = scan(&s.source, &Limits::default())
            .map_err(|e| Error::runtime(format!("files of step `{step}`: `{}` {e}", s.name)))?;
        all.push((s.clone(), entries));
    }
    let now = digest(&all)
        .map_err(|e| Error::io(format!("cannot read the files of step `{step}`"), e))?;
    if now != expected {
        return Err(Error::runtime(format!(
            "the files of step `{step}` changed after the plan was read; apply again"
        )));
    }
    Ok(all)
}

/// Copies the files into a local sandbox: relative destinations under `cwd`, absolute ones re-rooted under
/// `home`. Each destination is built beside its final place and renamed into it, so a crash never leaves a
/// half tree; nothing is written outside `home`, even through a link the step made in its sandbox.
pub fn copy_local(all: &[(Shipment, Vec<Entry>)], home: &Path, cwd: &Path) -> Result<()> {
    let home_real = std::fs::canonicalize(home)
        .map_err(|e| Error::io(format!("cannot resolve {}", home.display()), e))?;
    for (ship, entries) in all {
        let target = match ship.dest.strip_prefix('/') {
            Some(abs) => home.join(abs),
            None => cwd.join(&ship.dest),
        };
        let fail = |e| {
            Error::io(
                format!("cannot ship `{}` to {}", ship.name, target.display()),
                e,
            )
        };
        let parent = target.parent().unwrap_or(home);
        std::fs::create_dir_all(parent).map_err(fail)?;
        let parent_real = std::fs::canonicalize(parent).map_err(fail)?;
        if !parent_real.starts_with(&home_real) {
            return Err(Error::runtime(format!(
                "cannot ship `{}`: {} leads outside the sandbox",
                ship.name,
                parent.display()
            )));
        }
        let staged = tempfile::Builder::new()
            .prefix(".sortie-files.")
            .tempdir_in(&parent_real)
            .map_err(fail)?;
        let new = staged.path().join("new");
        for e in entries {
            let to = if e.rel.is_empty() {
                new.clone()
            } else {
                new.join(&e.rel)
            };
            if e.dir {
                std::fs::create_dir_all(&to).map_err(fail)?;
            } else {
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p).map_err(fail)?;
                }
                std::fs::copy(&e.path, &to).map_err(fail)?;
                set_mode(&to, e.exec).map_err(fail)?;
            }
        }
        let name = target
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let final_path = parent_real.join(name);
        // Move the old tree aside (into the staging dir, deleted with it), then rename the new one in.
        if std::fs::symlink_metadata(&final_path).is_ok() {
            std::fs::rename(&final_path, staged.path().join("old")).map_err(fail)?;
        }
        std::fs::rename(&new, &final_path).map_err(fail)?;
    }
    Ok(())
}

fn set_mode(path: &Path, exec: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if exec { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// One tar.gz holding shipment `i` as member `i` (a file, or a directory and its contents). Timestamps and
/// owners are fixed and modes are 0755/0644, so the same files always give the same bytes.
pub fn archive(all: &[(Shipment, Vec<Entry>)]) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (i, (_, entries)) in all.iter().enumerate() {
        for e in entries {
            let name = if e.rel.is_empty() {
                i.to_string()
            } else {
                format!("{i}/{}", e.rel)
            };
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            if e.dir {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, &name, std::io::empty())?;
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if e.exec { 0o755 } else { 0o644 });
                h.set_size(e.size);
                let file = std::fs::File::open(&e.path)?;
                tar.append_data(&mut h, &name, file.take(e.size))?;
            }
        }
    }
    tar.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ship(dir: &Path, dest: &str) -> (Shipment, Vec<Entry>) {
        let s = Shipment {
            name: "src".into(),
            source: dir.to_path_buf(),
            dest: dest.into(),
        };
        let entries = scan(dir, &Limits::default()).expect("scan");
        (s, entries)
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("lib")).expect("mkdir");
        std::fs::write(d.path().join("run.sh"), "echo hi\n").expect("write");
        std::fs::write(d.path().join("lib/a.py"), "print(1)\n").expect("write");
        d
    }

    #[test]
    fn digest_changes_with_content_mode_name_and_destination() {
        let d = tree();
        let base = digest(&[ship(d.path(), "p")]).expect("digest");
        assert_eq!(base, digest(&[ship(d.path(), "p")]).expect("digest"));
        assert_ne!(base, digest(&[ship(d.path(), "q")]).expect("digest"));
        set_mode(&d.path().join("run.sh"), true).expect("chmod");
        let exec = digest(&[ship(d.path(), "p")]).expect("digest");
        assert_ne!(base, exec);
        std::fs::write(d.path().join("lib/a.py"), "print(2)\n").expect("write");
        let content = digest(&[ship(d.path(), "p")]).expect("digest");
        assert_ne!(exec, content);
        std::fs::rename(d.path().join("lib/a.py"), d.path().join("lib/b.py")).expect("mv");
        assert_ne!(content, digest(&[ship(d.path(), "p")]).expect("digest"));
    }

    #[test]
    fn caches_are_not_shipped_and_do_not_change_the_digest() {
        let d = tree();
        let before = digest(&[ship(d.path(), "p")]).expect("digest");
        std::fs::create_dir_all(d.path().join("lib/__pycache__")).expect("mkdir");
        std::fs::write(d.path().join("lib/__pycache__/a.pyc"), "x").expect("write");
        std::fs::create_dir_all(d.path().join(".sortie/state")).expect("mkdir");
        std::fs::write(d.path().join(".sortie/state/state.json"), "{}").expect("write");
        assert_eq!(before, digest(&[ship(d.path(), "p")]).expect("digest"));
    }

    #[test]
    fn links_special_files_and_limits_are_refused() {
        let d = tree();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("lib/pw")).expect("link");
        let e = scan(d.path(), &Limits::default()).expect_err("link");
        assert!(e.contains("symbolic link, `lib/pw`"), "{e}");
        std::fs::remove_file(d.path().join("lib/pw")).expect("rm");
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        let e = scan(d.path(), &Limits::default()).expect_err("fifo");
        assert!(e.contains("`fifo`, a FIFO, socket or device"), "{e}");
        std::fs::remove_file(d.path().join("fifo")).expect("rm");
        let few = Limits {
            max_bytes: MAX_BYTES,
            max_files: 1,
        };
        assert_eq!(
            scan(d.path(), &few).expect_err("count"),
            "has 2 files; a step ships at most 1"
        );
        let small = Limits {
            max_bytes: 10,
            max_files: 10,
        };
        assert_eq!(
            scan(d.path(), &small).expect_err("size"),
            "is 17 bytes; a step ships at most 10 bytes (10 B)"
        );
        assert_eq!(
            scan(&d.path().join("nope"), &few).expect_err("missing"),
            "does not exist"
        );
    }

    #[test]
    fn destinations_are_normalised_and_checked() {
        assert_eq!(check_dest("pipeline/").as_deref(), Ok("pipeline"));
        assert_eq!(check_dest("/opt//pipeline").as_deref(), Ok("/opt/pipeline"));
        assert!(check_dest("../x").is_err());
        assert!(check_dest("/opt/./x").is_err());
        assert!(check_dest("/").is_err());
        assert!(check_dest("").is_err());
        assert!(check_dest("/var/lib/sortie/x").is_err());
        assert!(check_dest("/.sortie").is_err());
        assert!(check_dest("outputs").is_err());
        assert!(overlaps("/opt/p", "/opt/p/sub"));
        assert!(!overlaps("/opt/p", "/opt/pq"));
    }

    #[test]
    fn local_copy_replaces_the_tree_and_keeps_the_executable_bit() {
        let d = tree();
        set_mode(&d.path().join("run.sh"), true).expect("chmod");
        let home = tempfile::tempdir().expect("home");
        let cwd = home.path().join(".sortie/steps/s");
        std::fs::create_dir_all(cwd.join("p")).expect("mkdir");
        std::fs::write(cwd.join("p/stale"), "old").expect("write");
        copy_local(
            &[ship(d.path(), "p"), ship(d.path(), "/opt/x")],
            home.path(),
            &cwd,
        )
        .expect("copy");
        assert!(!cwd.join("p/stale").exists());
        assert_eq!(
            std::fs::read_to_string(cwd.join("p/lib/a.py")).expect("read"),
            "print(1)\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("opt/x/run.sh"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let leftovers: Vec<_> = std::fs::read_dir(&cwd)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("p")]);
    }

    #[test]
    fn local_copy_never_writes_outside_the_sandbox() {
        let d = tree();
        let home = tempfile::tempdir().expect("home");
        let outside = tempfile::tempdir().expect("outside");
        std::os::unix::fs::symlink(outside.path(), home.path().join("opt")).expect("link");
        let e =
            copy_local(&[ship(d.path(), "/opt/x")], home.path(), home.path()).expect_err("escape");
        assert!(e.to_string().contains("leads outside the sandbox"), "{e}");
        assert_eq!(std::fs::read_dir(outside.path()).expect("ls").count(), 0);
    }

    #[test]
    fn the_archive_is_reproducible() {
        let d = tree();
        let a = archive(&[ship(d.path(), "p")]).expect("tar");
        let b = archive(&[ship(d.path(), "p")]).expect("tar");
        assert_eq!(a, b);
        let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&a[..]))
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["0", "0/lib", "0/lib/a.py", "0/run.sh"]);
    }
}
