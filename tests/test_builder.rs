//! A `Test` runs the real `plan` binary in a temporary directory and compares its output exactly,
//! so error messages are tested as a user sees them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PLAN: &str = env!("CARGO_BIN_EXE_plan");

/// How long any subprocess of a test may run: a hung `plan` fails its test, instead of holding CI until its limit.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// `output()` with a deadline (issue 9: every subprocess in the tests has one).
pub trait Deadline {
    /// Runs the command to its end, capturing stdout and stderr; past `limit` it is killed and the test fails,
    /// naming the command.
    fn output_within(&mut self, limit: std::time::Duration) -> std::io::Result<Output>;
}

impl Deadline for Command {
    fn output_within(&mut self, limit: std::time::Duration) -> std::io::Result<Output> {
        use std::io::Read;
        use std::process::Stdio;
        let mut child = self.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        // Read both pipes beside the wait: a child that fills one would otherwise never exit.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} did not finish within {limit:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    }
}

/// The repository root, for tests that use its plans and examples.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Test {
    pub dir: tempfile::TempDir,
    cwd: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdout: Option<String>,
    stderr: Option<String>,
    status: i32,
}

impl Test {
    pub fn new() -> Test {
        Test {
            dir: tempfile::tempdir().expect("tempdir"),
            cwd: None,
            args: Vec::new(),
            env: Vec::new(),
            stdout: None,
            stderr: None,
            status: 0,
        }
    }

    /// Writes a file (creating parent directories) inside the test directory.
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>) -> Test {
        let full = self.dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(full, contents).expect("write");
        self
    }

    /// Runs in `dir` instead of the temporary directory.
    pub fn current_dir(mut self, dir: &Path) -> Test {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Test {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Test {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Several environment variables at once (e.g. what reaches the AWS test endpoint).
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Test {
        self.env.extend(vars);
        self
    }

    pub fn stdout(mut self, text: &str) -> Test {
        self.stdout = Some(text.into());
        self
    }

    pub fn stderr(mut self, text: &str) -> Test {
        self.stderr = Some(text.into());
        self
    }

    pub fn status(mut self, code: i32) -> Test {
        self.status = code;
        self
    }

    /// Runs the binary and checks status, stdout and stderr (those that were set).
    pub fn run(self) -> Output {
        let output = self.command().output_within(DEADLINE).expect("run plan");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(self.status),
            "exit status of plan {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            self.args
        );
        if let Some(expected) = &self.stdout {
            assert_eq!(&stdout, expected, "stdout of plan {:?}", self.args);
        }
        if let Some(expected) = &self.stderr {
            assert_eq!(&stderr, expected, "stderr of plan {:?}", self.args);
        }
        output
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(PLAN);
        cmd.args(&self.args)
            .current_dir(self.cwd.as_deref().unwrap_or(self.dir.path()))
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SORTIE_")) {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `plan status FILE --output json`: the latest run's state.
    pub fn state(&self, file: &str) -> serde_json::Value {
        let out = self
            .command()
            .args(["status", file, "--output", "json"])
            .output_within(DEADLINE)
            .expect("plan status");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "plan status {file}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}
