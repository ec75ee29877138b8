//! `notify:` end to end: a local HTTP server in the test receives the webhook's POSTs for a failed run, a
//! stalled step and a succeeded run. Each message names the run, the step, the root cause and the `plan logs`
//! command, and no secret value.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::apply::{plan_cmd, run_cmd, sandbox, status_json};

/// A webhook receiver on 127.0.0.1: every POST body, as JSON.
struct Hook {
    port: u16,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().expect("lock").push(v);
                    }
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Hook { port, got }
    }

    fn texts(&self) -> Vec<String> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .map(|v| v["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

fn plan(port: u16, steps: &str) -> String {
    format!(
        "plan: notified
vars:
  hf_token: hf_notifytestsecretvalue123
target: {{ provider: local }}
notify:
  webhook: http://127.0.0.1:{port}/hooks/T000/B000
  on: [failure, stall, success]
steps:
  host: {{ kind: instance }}
{steps}
"
    )
}

#[test]
fn test_e2e_notify_posts_the_root_cause_of_a_failed_run() {
    let hook = Hook::start();
    let steps = "  prep:
    kind: run
    on: host
    env: { TOKEN: \"{{ vars.hf_token }}\" }
    run: |
      echo \"cannot log in with $TOKEN\"
      exit 3
";
    let (t, _reaper) = sandbox("p.yaml", &plan(hook.port, steps));
    let dir = t.dir.path();
    let ran = run_cmd(plan_cmd(dir, &["apply", "p.yaml"]), Duration::from_secs(60));
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    let run = status_json(dir, "p.yaml", None)["run_id"]
        .as_str()
        .expect("run id")
        .to_string();
    let texts = hook.texts();
    assert_eq!(texts.len(), 1, "{texts:#?}");
    let text = &texts[0];
    assert!(
        text.contains(&format!("sortie: plan notified run {run} failed")),
        "{text}"
    );
    assert!(
        text.contains("root cause: step `prep` failed: exit code 3"),
        "{text}"
    );
    assert!(
        text.contains(&format!("log: plan logs p.yaml prep --run {run}")),
        "{text}"
    );
    assert!(
        !text.contains("hf_notifytestsecretvalue123"),
        "the secret reached the webhook: {text}"
    );
}

#[test]
fn test_e2e_notify_posts_a_stall_and_a_success() {
    let hook = Hook::start();
    let steps = "  quiet:
    kind: run
    on: host
    heartbeat: { stale_after: 1s, interval: 1s }
    run: sleep 30
  fine:
    kind: run
    on: host
    run: echo done
";
    let (t, _reaper) = sandbox("p.yaml", &plan(hook.port, steps));
    let dir = t.dir.path();
    let ran = run_cmd(plan_cmd(dir, &["apply", "p.yaml"]), Duration::from_secs(60));
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    let texts = hook.texts();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("step `quiet` stalled: no new output for")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("root cause: step `quiet` failed: stalled")),
        "{texts:#?}"
    );

    let hook2 = Hook::start();
    let ok = plan(
        hook2.port,
        "  fine:\n    kind: run\n    on: host\n    run: echo done\n",
    );
    std::fs::write(
        dir.join("ok.yaml"),
        ok.replace("plan: notified", "plan: fine"),
    )
    .expect("write");
    let ran = run_cmd(
        plan_cmd(dir, &["apply", "ok.yaml"]),
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    let texts = hook2.texts();
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert!(
        texts[0].contains("sortie: plan fine run ") && texts[0].contains(" succeeded in "),
        "{texts:#?}"
    );
}

#[test]
fn test_e2e_notify_to_a_dead_webhook_is_a_warning_not_a_failure() {
    // A port nothing listens on: bind, read the port, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let (t, _reaper) = sandbox(
        "p.yaml",
        &plan(
            port,
            "  fine:\n    kind: run\n    on: host\n    run: echo done\n",
        ),
    );
    let ran = run_cmd(
        plan_cmd(t.dir.path(), &["apply", "p.yaml"]),
        Duration::from_secs(60),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.show());
    assert!(
        ran.stdout
            .contains("notify: the webhook did not take the message (cannot connect)"),
        "{}",
        ran.show()
    );
    assert!(
        !ran.stdout.contains("/hooks/T000"),
        "the webhook's path was printed\n{}",
        ran.show()
    );
}

#[test]
fn test_e2e_notify_refuses_a_plain_http_webhook_to_another_host() {
    let (t, _reaper) = sandbox(
        "p.yaml",
        "plan: n\nnotify: { webhook: \"http://hooks.example.com/x\" }\nsteps:\n  host: { kind: instance }\n",
    );
    let ran = run_cmd(
        plan_cmd(t.dir.path(), &["validate", "p.yaml"]),
        Duration::from_secs(30),
    );
    assert_eq!(ran.code, Some(2), "{}", ran.show());
    assert!(
        ran.stderr
            .contains("`notify.webhook` must be an https:// URL"),
        "{}",
        ran.show()
    );
    assert!(ran.stderr.contains("p.yaml:2:"), "{}", ran.show());
}

/// `notify.sns`: the message is published to the topic, with the credentials `plan apply` runs with (here the
/// test endpoint's); an HTTP subscription of the topic (this test's receiver) gets it from SNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_notify_publishes_to_an_sns_topic() {
    let hook = Hook::start();
    let endpoint = crate::aws_endpoint::Endpoint::start();
    let sns = aws_sdk_sns::Client::new(&endpoint.sdk_config().await);
    let topic = sns
        .create_topic()
        .name("training")
        .send()
        .await
        .expect("create topic");
    let arn = topic.topic_arn().expect("topic arn").to_string();
    sns.subscribe()
        .topic_arn(&arn)
        .protocol("http")
        .endpoint(format!("http://127.0.0.1:{}/sns", hook.port))
        .send()
        .await
        .expect("subscribe");
    let text = format!(
        "plan: notified
target: {{ provider: local }}
notify:
  sns: {arn}
steps:
  host: {{ kind: instance }}
  prep: {{ kind: run, on: host, run: 'exit 3' }}
"
    );
    let (t, _reaper) = sandbox("p.yaml", &text);
    let dir = t.dir.path();
    let mut cmd = plan_cmd(dir, &["apply", "p.yaml"]);
    cmd.envs(endpoint.env());
    let ran = run_cmd(cmd, Duration::from_secs(60));
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        !ran.stdout.contains("notify:"),
        "a delivery warning: {}",
        ran.show()
    );
    let got = hook.got.lock().expect("lock").clone();
    let note = got
        .iter()
        .find(|v| v["Type"] == "Notification")
        .unwrap_or_else(|| panic!("no SNS notification: {got:#?}"));
    assert_eq!(note["TopicArn"], arn.as_str());
    let message = note["Message"].as_str().expect("message");
    assert!(
        message.contains("root cause: step `prep` failed: exit code 3"),
        "{message}"
    );
    assert!(
        message.contains("log: plan logs p.yaml prep --run "),
        "{message}"
    );
    assert!(
        note["Subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("sortie: plan notified run ")),
        "{note:#}"
    );
}
