//! plans/mistral-qlora.yaml itself, end to end on the moto test endpoint: the real plan, templates and programs
//! through SSM, with tests/fixtures/vars/mistral-on-test-endpoint.yaml (an image moto knows, moto buckets holding
//! the bundled corpus and model mirror, an SSM SecureString token, the tiny trainer, no GPU).

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;

use crate::apply::events;
use crate::aws_endpoint::Endpoint;
use crate::test_builder::{repo, Test};
use crate::test_builder::{Deadline as _, DEADLINE};

async fn upload_tree(s3: &aws_sdk_s3::Client, root: &Path, dir: &Path, bucket: &str, prefix: &str) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            Box::pin(upload_tree(s3, root, &path, bucket, prefix)).await;
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("relative")
            .to_string_lossy()
            .into_owned();
        s3.put_object()
            .bucket(bucket)
            .key(format!("{prefix}{rel}"))
            .body(ByteStream::from(std::fs::read(&path).expect("read")))
            .send()
            .await
            .expect("put_object");
    }
}

async fn keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list");
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// A test endpoint ready for plans/mistral-qlora.yaml with its test var file: the buckets, the bundled corpus and
/// model mirror, and the Hub token in Parameter Store.
pub(crate) async fn mistral_endpoint() -> Endpoint {
    let endpoint =
        Endpoint::start_with(&["--seed-profile", "sortie-ssm", "--require-instance-profile"]);
    for bucket in ["sortie-test-cache", "sortie-test-policy"] {
        endpoint.create_bucket(bucket).await;
    }
    let s3 = endpoint.s3_client().await;
    let corpus = repo().join("pipeline/sample_corpus");
    upload_tree(&s3, &corpus, &corpus, "sortie-test-policy", "").await;
    let model = repo().join("pipeline/sample_model");
    upload_tree(
        &s3,
        &model,
        &model,
        "sortie-test-cache",
        "models/tiny-unigram/",
    )
    .await;
    let ssm = aws_sdk_ssm::Client::new(&endpoint.sdk_config().await);
    ssm.put_parameter()
        .name("/sortie/hf-token")
        .value("hf_testtokenvalue0123456789")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put_parameter");
    endpoint
}

/// `plan apply` arguments for the mistral plan on the test endpoint.
pub(crate) fn mistral_apply_args() -> Vec<String> {
    let vars = repo().join("tests/fixtures/vars/mistral-on-test-endpoint.yaml");
    let plan = repo().join("plans/mistral-qlora.yaml");
    [
        "apply",
        &plan.to_string_lossy(),
        "--var-file",
        &vars.to_string_lossy(),
        "--output",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_mistral_plan_runs_end_to_end_on_the_test_endpoint() {
    let endpoint = mistral_endpoint().await;
    let s3 = endpoint.s3_client().await;
    let t = Test::new()
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(endpoint.env());
    let out = t
        .command()
        .args(mistral_apply_args())
        .output_within(DEADLINE)
        .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}\n--- endpoint log\n{}",
        String::from_utf8_lossy(&out.stderr),
        endpoint.log()
    );
    let events = events(&stdout);
    let output = |step: &str, key: &str| -> String {
        events
            .iter()
            .find(|e| e["event"] == "step_output" && e["step"] == step && e["key"] == key)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let run = events[0]["run"].as_str().expect("run id").to_string();
    assert_eq!(output("fetch-model", "model_source"), "mirror", "{stdout}");
    assert_eq!(output("train", "final_step"), "40");
    assert!(
        output("preflight", "preflight_checks")
            .parse::<u32>()
            .expect("checks")
            >= 35
    );
    assert!(output("prep-data", "dataset_uri").starts_with("s3://sortie-test-cache/datasets/"));
    let results = format!("mistral-finetuned/{run}/");
    assert_eq!(
        output("upload", "artifact_uri"),
        format!("s3://sortie-test-cache/{results}").trim_end_matches('/')
    );
    let stored = keys(&s3, "sortie-test-cache", &results).await;
    for want in ["manifest.json", "metrics.json", "preflight.json"] {
        assert!(
            stored.iter().any(|k| k.ends_with(want)),
            "{want} missing in {stored:?}"
        );
    }
    assert!(
        stored
            .iter()
            .any(|k| k.contains("/checkpoints/checkpoint-40/")),
        "{stored:?}"
    );
    // The token was read on the host and is nowhere in what the run printed.
    assert!(
        !stdout.contains("hf_testtokenvalue"),
        "the HF token leaked into the events"
    );
}
