//! The local AWS endpoint for tests (`scripts/aws-test-endpoint`, see docs/TEST_ENDPOINT.md): moto, with SSM Run
//! Command that really runs commands. Each `Endpoint` is one server process on a free port with its own sandbox
//! directory; dropping it stops the server (SIGTERM to its process group, which also ends the sandboxes).
//!
//! ```ignore
//! let ep = Endpoint::start();
//! ep.create_bucket("state").await;
//! let s3 = ep.s3_client().await;                   // or ep.sdk_config().await for EC2/SSM clients
//! let t = ep.env().iter().fold(Test::new(), |t, (k, v)| t.env(k, v));  // a `plan` subprocess
//! ```
//!
//! Needs the venv made by `scripts/setup-test-env`; `SORTIE_TEST_ENDPOINT` names another launcher.

#![allow(dead_code)] // a harness: each test uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::test_builder::{Deadline as _, DEADLINE};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::Credentials;

/// How long the endpoint may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to exit after SIGTERM before the group is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "testing";

pub struct Endpoint {
    child: Child,
    /// Kept open: the server's stdout is a pipe, and it must not see it closed.
    _stdout: ChildStdout,
    url: String,
    port: u16,
    dir: tempfile::TempDir,
}

/// The launcher: `$SORTIE_TEST_ENDPOINT`, else `<repo>/scripts/aws-test-endpoint`.
pub fn launcher() -> PathBuf {
    std::env::var_os("SORTIE_TEST_ENDPOINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/aws-test-endpoint"))
}

/// The launcher options of an account ready for sortie: the `sortie-ssm` instance profile exists, and RunInstances
/// requires one, as SSM does.
pub const READY: [&str; 3] = ["--seed-profile", "sortie-ssm", "--require-instance-profile"];

impl Endpoint {
    /// A ready account (`READY`, then `extra` launcher options) with the state bucket `bucket`.
    pub async fn ready(bucket: &str, extra: &[&str]) -> Endpoint {
        let mut args = READY.to_vec();
        args.extend(extra);
        let endpoint = Endpoint::start_with(&args);
        endpoint.create_bucket(bucket).await;
        endpoint
    }

    /// A test directory with `plan` as `p.yaml`, whose `plan` talks to this endpoint and polls fast.
    pub fn plan_test(&self, plan: &str) -> crate::test_builder::Test {
        crate::test_builder::Test::new()
            .file("p.yaml", plan)
            .env("SORTIE_POLL_INTERVAL", "100ms")
            .envs(self.env())
    }

    /// `plan apply p.yaml --output json` in `t`, which must succeed: its events (schema-checked).
    pub fn apply_ok(&self, t: &crate::test_builder::Test) -> Vec<serde_json::Value> {
        let out = t
            .command()
            .args(["apply", "p.yaml", "--output", "json"])
            .output_within(DEADLINE)
            .expect("apply");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout:\n{stdout}\nstderr:\n{}\nendpoint log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        crate::apply::events(&stdout)
    }
    /// Starts a server on a free port and waits (at most 30 s) until it accepts connections.
    pub fn start() -> Endpoint {
        Endpoint::start_with(&[])
    }

    /// Same, with extra launcher options (`--seed-profile NAME`, `--require-instance-profile`, `--env K=V`).
    pub fn start_with(args: &[&str]) -> Endpoint {
        let dir = tempfile::Builder::new()
            .prefix("sortie-endpoint-")
            .tempdir()
            .expect("tempdir for the test endpoint");
        let sandbox = dir.path().join("sandboxes");
        std::fs::create_dir_all(&sandbox).expect("mkdir sandboxes");
        let log_path = dir.path().join("endpoint.log");
        let log = std::fs::File::create(&log_path).expect("create endpoint log");
        let launcher = launcher();
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new(&launcher)
                .args(["--port", "0", "--sandbox"])
                .arg(&sandbox)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                // Its own process group, so that Drop can signal it and everything it started.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start the test endpoint {}: {e}\n(run scripts/setup-test-env first)",
                        launcher.display()
                    )
                })
        };
        let stdout = child.stdout.take().expect("endpoint stdout is piped");
        // Read the ready line on a thread, so the wait is bounded even if the server hangs before printing.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let res = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send((res, reader.into_inner()));
        });
        let failed = |child: &mut Child, what: String| -> ! {
            stop(child);
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "the test endpoint {} {what}.\nRun scripts/setup-test-env (it creates the venv with moto), \
                 or set SORTIE_TEST_ENDPOINT.\nLast lines of its log:\n{}",
                launcher.display(),
                tail.join("\n")
            )
        };
        let (line, stdout) = match rx.recv_timeout(START_TIMEOUT) {
            Ok((Ok(line), stdout)) => (line, stdout),
            Ok((Err(e), _)) => failed(&mut child, format!("could not be read from: {e}")),
            Err(_) => failed(
                &mut child,
                format!("did not print its ready line within {START_TIMEOUT:?}"),
            ),
        };
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            failed(
                &mut child,
                format!("exited or printed something else than `listening on URL`: {line:?}"),
            )
        };
        let url = url.to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| failed(&mut child, format!("printed a URL without a port: {url}")));
        Endpoint {
            child,
            _stdout: stdout,
            url,
            port,
            dir,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the fake instances' sandboxes are (`<this>/<instance-id>/`).
    pub fn sandbox_root(&self) -> PathBuf {
        self.dir.path().join("sandboxes")
    }

    /// The server's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("endpoint.log")).unwrap_or_default()
    }

    /// SDK configuration for any client: this endpoint, us-east-1, static credentials testing/testing,
    /// the SDK's standard retry. Profiles and IMDS are not consulted.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                ACCESS_KEY,
                ACCESS_KEY,
                None,
                None,
                "sortie-test-endpoint",
            ))
            .load()
            .await
    }

    /// An S3 client with path-style addressing (the endpoint has no bucket DNS).
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let config = self.sdk_config().await;
        let conf = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub async fn create_bucket(&self, name: &str) {
        self.s3_client()
            .await
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
    }

    /// What a `plan` subprocess needs in its environment to use this endpoint (and nothing of the machine's
    /// own AWS set-up: config and credentials files point at nothing).
    pub fn env(&self) -> Vec<(String, String)> {
        let nowhere = self.dir.path().join("no-aws-config");
        [
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", ACCESS_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", nowhere.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere.display().to_string()),
            // These applies run as a CI job does: no terminal, so `plan apply` on AWS needs --yes. The tests of
            // the question itself (tests/confirm.rs) remove it.
            ("SORTIE_YES", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A plain HTTP request to the endpoint (control API: `/_sortie/...`, `/moto-api/reset`).
    /// Returns the status and the body.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the test endpoint");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .expect("write to the test endpoint");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .expect("read from the test endpoint");
        let response = String::from_utf8_lossy(&response).to_string();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or((response.as_str(), ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response from the test endpoint: {head:?}"));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    }

    /// moto's reset of all state (also sandboxes, faults and call counters).
    pub fn reset(&self) {
        let (status, body) = self.http("POST", "/moto-api/reset", None);
        assert!(status < 300, "reset: {status} {body}");
    }

    /// Arms a fault (see docs/TEST_ENDPOINT.md, "Control API"); `fault` is its JSON.
    pub fn add_fault(&self, fault: &str) -> String {
        let (status, body) = self.http("POST", "/_sortie/faults", Some(fault));
        assert_eq!(status, 201, "add fault: {body}");
        body
    }

    /// Call counts so far, as JSON (`{"s3:PutObject": 3, ...}`).
    pub fn calls(&self) -> serde_json::Value {
        let (status, body) = self.http("GET", "/_sortie/calls", None);
        assert_eq!(status, 200, "calls: {body}");
        serde_json::from_str(&body).expect("calls JSON")
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// SIGTERM to the group, wait, SIGKILL if it does not go.
fn stop(child: &mut Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let group = Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(Some(_))) {
        // Already exited and reaped: its pid (and so the group id) may belong to someone else by now.
        return;
    }
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
