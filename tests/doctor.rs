//! `plan doctor` against the test endpoint: the real `plan` binary checks an account that is ready, then accounts
//! that each miss one thing, and `plan apply` stops on the cheap checks before it creates anything.

use serde_json::Value;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PROFILE: &str = "sortie-ssm";
const BUCKET: &str = "sortie-state";
const AL2023: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

/// An AWS plan; `image` and `root_size` vary per test. It names a SecureString through a `*_param` var.
fn plan(image: &str, root_size: &str) -> String {
    format!(
        "plan: doc
vars:
  hf_token_param: /sortie/hf-token
target: {{ provider: aws, region: us-east-1 }}
state: s3://{BUCKET}/sortie
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge, g6.2xlarge]
    image: {image}
    profile: {PROFILE}
    root_size: {root_size}
    max_lifetime: 2h
  hello:
    kind: run
    run: echo hello
  teardown: {{ kind: teardown }}
"
    )
}

fn ready_plan() -> String {
    plan(&format!("ssm:{AL2023}"), "20GiB")
}

/// A seeded instance profile, the state bucket, the plan's parameter, and 8 vCPUs of G quota (one g5.2xlarge).
async fn ready() -> Endpoint {
    let ep = Endpoint::start_with(&["--seed-profile", PROFILE, "--require-instance-profile"]);
    ep.create_bucket(BUCKET).await;
    put_parameter(&ep, "/sortie/hf-token").await;
    approve_quota(&ep, "L-DB2E81BA", 8);
    ep
}

/// An approved quota increase (the endpoint's quotas start at AWS's documented defaults: 0 for G and VT).
fn approve_quota(ep: &Endpoint, code: &str, vcpus: u32) {
    let (status, body) = ep.http(
        "POST",
        "/_sortie/quotas",
        Some(&format!(r#"{{"ec2/{code}": {vcpus}}}"#)),
    );
    assert_eq!(status, 200, "{body}");
}

async fn put_parameter(ep: &Endpoint, name: &str) {
    aws_sdk_ssm::Client::new(&ep.sdk_config().await)
        .put_parameter()
        .name(name)
        .value("hf_secret")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put parameter");
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn doctor(ep: &Endpoint, text: &str, extra: &[&str]) -> Ran {
    let t = Test::new().file("p.yaml", text).envs(ep.env());
    let out = t
        .command()
        .args(["doctor", "p.yaml"])
        .args(extra)
        .output_within(DEADLINE)
        .expect("plan doctor");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `plan doctor --output json`, parsed; the exit code beside it.
fn doctor_json(ep: &Endpoint, text: &str) -> (Option<i32>, Value) {
    let ran = doctor(ep, text, &["--output", "json"]);
    let report = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", ran.stdout, ran.stderr));
    (ran.code, report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn detail<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["detail"].as_str().expect("detail")
}

fn fix<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["fix"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no fix: {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().expect("status")
}

async fn instances(ep: &Endpoint) -> usize {
    let ec2 = aws_sdk_ec2::Client::new(&ep.sdk_config().await);
    let out = ec2.describe_instances().send().await.expect("describe");
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_passes_on_a_ready_account_and_json_says_the_same() {
    let ep = ready().await;
    let (code, report) = doctor_json(&ep, &ready_plan());
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["plan"], "doc");
    assert_eq!(report["target"], "aws");
    assert_eq!(report["region"], "us-east-1");
    assert_eq!(report["ok"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "identity",
            "region",
            "state-bucket",
            "conditional-writes",
            "instance-profile:sortie-ssm",
            "ssm-parameter:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
            "ssm-parameter:vars.hf_token_param",
            "network:instance",
            "image:instance",
            "quota:instance",
            "dry-run:instance",
        ]
    );
    for c in report["checks"].as_array().expect("checks") {
        assert_eq!(c["required"], true, "{c}");
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
        assert_eq!(c["status"], "pass", "{c}");
        assert_eq!(c["fix"], Value::Null, "{c}");
    }
    assert!(
        detail(&report, "identity").starts_with("account 123456789012 as arn:aws:"),
        "{report:#}"
    );
    assert_eq!(detail(&report, "region"), "us-east-1");
    assert_eq!(
        detail(&report, "ssm-parameter:vars.hf_token_param"),
        "exists (SecureString)"
    );
    assert_eq!(
        detail(&report, "state-bucket"),
        "s3://sortie-state exists in us-east-1"
    );
    assert!(detail(&report, "conditional-writes").contains("(412)"));
    assert_eq!(
        detail(&report, "instance-profile:sortie-ssm"),
        "role sortie-ssm, with AmazonSSMManagedInstanceCore"
    );
    let ami = detail(&report, &format!("ssm-parameter:{AL2023}"))
        .strip_prefix("resolves to ")
        .expect("resolves")
        .to_string();
    assert!(ami.starts_with("ami-"), "{ami}");
    assert!(detail(&report, "network:instance").starts_with("default VPC vpc-"));
    // The endpoint's AMIs have a 15 GiB root snapshot; the plan asks for 20.
    assert!(
        detail(&report, "image:instance").starts_with(&format!("{ami} (")),
        "{report:#}"
    );
    assert!(
        detail(&report, "image:instance").ends_with(" 20 GiB (snapshot 15 GiB)"),
        "{report:#}"
    );
    assert_eq!(
        detail(&report, "quota:instance"),
        "g5.2xlarge (on-demand) needs 8 vCPUs; Running On-Demand G and VT instances (L-DB2E81BA) is 8"
    );
    assert_eq!(
        detail(&report, "dry-run:instance"),
        "RunInstances g5.2xlarge (on-demand) would be allowed"
    );
    // The dry run reached EC2 and created nothing; the probe object is gone.
    let calls = ep.calls();
    assert!(calls["ec2:RunInstances"].as_u64() >= Some(1), "{calls}");
    assert_eq!(instances(&ep).await, 0);
    let listed = ep
        .s3_client()
        .await
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .expect("list");
    assert_eq!(listed.key_count(), Some(0), "{listed:?}");

    // The human form: the same checks, one line each, and the verdict.
    let ran = doctor(&ep, &ready_plan(), &[]);
    assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .starts_with("plan doc: target aws, region us-east-1\n"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("\nPASS  identity "), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("\nPASS  quota:instance "),
        "{}",
        ran.stdout
    );
    assert!(!ran.stdout.contains("fix:"), "{}", ran.stdout);
    assert!(
        ran.stdout
            .ends_with("all required checks passed (0 warnings): `plan apply p.yaml` can start\n"),
        "{}",
        ran.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_missing_bucket_and_profile_fail_and_apply_stops_before_creating() {
    // No bucket, no instance profile.
    let ep = Endpoint::start();
    let (code, report) = doctor_json(&ep, &ready_plan());
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(status(&report, "state-bucket"), "fail");
    assert_eq!(
        detail(&report, "state-bucket"),
        "s3://sortie-state does not exist"
    );
    assert!(
        fix(&report, "state-bucket").contains("`aws s3 mb s3://sortie-state --region us-east-1`"),
        "{report:#}"
    );
    assert_eq!(status(&report, "instance-profile:sortie-ssm"), "fail");
    assert_eq!(
        detail(&report, "instance-profile:sortie-ssm"),
        "instance profile sortie-ssm does not exist"
    );
    assert!(fix(&report, "instance-profile:sortie-ssm").contains("AmazonSSMManagedInstanceCore"));
    // The named parameter was never created either.
    assert_eq!(status(&report, "ssm-parameter:vars.hf_token_param"), "fail");
    // The check is named by its var: a `*_token_*` var's value is scrubbed from everything plan prints.
    let fix_text = fix(&report, "ssm-parameter:vars.hf_token_param");
    assert!(
        fix_text.starts_with("create it: `aws ssm put-parameter --name ")
            && fix_text.contains(" --type SecureString --value ...`"),
        "{fix_text}"
    );
    assert!(
        !report.to_string().contains("/sortie/hf-token"),
        "{report:#}"
    );

    let ran = doctor(&ep, &ready_plan(), &[]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stdout.contains("\nFAIL  state-bucket "),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("fix: create it in the plan's region"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .ends_with("fix them and run `plan doctor p.yaml` again\n"),
        "{}",
        ran.stdout
    );

    // apply runs the cheap checks first: exit 2, the doctor's fix, nothing created.
    let (code, body) = ep.http("DELETE", "/_sortie/calls", None);
    assert_eq!(code, 200, "{body}");
    let t = Test::new().file("p.yaml", ready_plan()).envs(ep.env());
    let out = t
        .command()
        .args(["apply", "p.yaml"])
        .output_within(DEADLINE)
        .expect("apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: the AWS account is not ready for this plan; nothing was created\n  state-bucket: s3://sortie-state does not exist\n  = help: create it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("instance-profile:sortie-ssm: instance profile sortie-ssm does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("= note: `plan doctor p.yaml` runs every check"),
        "{stderr}"
    );
    // Only the cheap reads: no dry run, no quota, nothing written.
    let calls = ep.calls();
    let names: Vec<&String> = calls.as_object().expect("calls").keys().collect();
    assert_eq!(
        names,
        [
            "iam:GetInstanceProfile",
            "s3:HeadBucket",
            "sts:GetCallerIdentity"
        ],
        "{calls}"
    );
    assert_eq!(instances(&ep).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_profile_without_the_ssm_core_policy_warns() {
    let ep = Endpoint::start();
    ep.create_bucket(BUCKET).await;
    put_parameter(&ep, "/sortie/hf-token").await;
    let iam = aws_sdk_iam::Client::new(&ep.sdk_config().await);
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    iam.create_role()
        .role_name("bare")
        .assume_role_policy_document(trust)
        .send()
        .await
        .expect("role");
    iam.create_instance_profile()
        .instance_profile_name(PROFILE)
        .send()
        .await
        .expect("profile");
    iam.add_role_to_instance_profile()
        .instance_profile_name(PROFILE)
        .role_name("bare")
        .send()
        .await
        .expect("add role");
    approve_quota(&ep, "L-DB2E81BA", 8);
    let (code, report) = doctor_json(&ep, &ready_plan());
    // A warning: another policy of the role might grant the same actions.
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(status(&report, "instance-profile:sortie-ssm"), "warn");
    assert!(
        detail(&report, "instance-profile:sortie-ssm").starts_with(
            "role bare does not have AmazonSSMManagedInstanceCore attached (attached: none)"
        ),
        "{report:#}"
    );
    assert!(fix(&report, "instance-profile:sortie-ssm").contains(
        "aws iam attach-role-policy --role-name bare --policy-arn arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_image_parameter_that_does_not_resolve_fails() {
    let ep = ready().await;
    let missing = "/aws/service/ami-amazon-linux-latest/no-such-image";
    let (code, report) = doctor_json(&ep, &plan(&format!("ssm:{missing}"), "20GiB"));
    assert_eq!(code, Some(1), "{report:#}");
    let name = format!("ssm-parameter:{missing}");
    assert_eq!(status(&report, &name), "fail");
    assert_eq!(
        detail(&report, &name),
        format!("SSM parameter {missing} does not exist in this region")
    );
    assert_eq!(status(&report, "image:instance"), "fail");
    assert_eq!(
        detail(&report, "image:instance"),
        format!("ssm:{missing} did not resolve (see its ssm-parameter check)")
    );
    // Nothing to launch: the dry run is not tried.
    assert_eq!(status(&report, "dry-run:instance"), "warn");
    assert!(ep.calls().get("ec2:RunInstances").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_new_account_quota_fits_no_gpu_type_and_spot_has_its_own() {
    let ep = ready().await;
    // A new account: G and VT quotas at their documented default, 0 vCPUs.
    let (status_code, body) = ep.http("DELETE", "/_sortie/quotas", None);
    assert_eq!(status_code, 200, "{body}");
    let (code, report) = doctor_json(&ep, &ready_plan());
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(status(&report, "quota:instance"), "fail");
    assert_eq!(
        detail(&report, "quota:instance"),
        "no instance type fits its quota: g5.2xlarge (on-demand) needs 8 vCPUs, Running On-Demand G and VT \
         instances (L-DB2E81BA) is 0; g6.2xlarge (on-demand) needs 8 vCPUs, Running On-Demand G and VT instances \
         (L-DB2E81BA) is 0"
    );
    assert!(fix(&report, "quota:instance").contains("request-service-quota-increase"));
    // Spot draws from its own quota: the on-demand increase does not help a spot step.
    approve_quota(&ep, "L-DB2E81BA", 8);
    let spot = ready_plan().replace(
        "    max_lifetime: 2h\n",
        "    max_lifetime: 2h\n    market: spot\n",
    );
    let (code, report) = doctor_json(&ep, &spot);
    assert_eq!(code, Some(1), "{report:#}");
    assert!(
        detail(&report, "quota:instance")
            .contains("All G and VT Spot Instance Requests (L-3819A6DF) is 0"),
        "{report:#}"
    );
    approve_quota(&ep, "L-3819A6DF", 16);
    let (code, report) = doctor_json(&ep, &spot);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        detail(&report, "quota:instance"),
        "g5.2xlarge (spot) needs 8 vCPUs; All G and VT Spot Instance Requests (L-3819A6DF) is 16"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_root_size_below_the_ami_snapshot_fails() {
    let ep = ready().await;
    let (code, report) = doctor_json(&ep, &plan(&format!("ssm:{AL2023}"), "10GiB"));
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(status(&report, "image:instance"), "fail");
    assert!(
        detail(&report, "image:instance")
            .ends_with("its root snapshot is 15 GiB, larger than root_size 10 GiB"),
        "{report:#}"
    );
    assert!(fix(&report, "image:instance").starts_with("set `root_size: 15GiB` or more"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_dry_run_denied_by_iam_fails() {
    let ep = ready().await;
    // What EC2 answers a dry run the caller's policy denies (EC2 API reference, "DryRun").
    ep.add_fault(
        r#"{"action": "RunInstances", "match": {"DryRun": "true"}, "times": -1,
            "error": {"code": "UnauthorizedOperation", "message": "You are not authorized to perform this operation. Encoded authorization failure message: abc", "status": 403}}"#,
    );
    let (code, report) = doctor_json(&ep, &ready_plan());
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(status(&report, "dry-run:instance"), "fail");
    assert_eq!(
        detail(&report, "dry-run:instance"),
        "RunInstances g5.2xlarge (on-demand) is denied: UnauthorizedOperation: You are not authorized to perform this operation. Encoded authorization failure message: abc"
    );
    assert!(fix(&report, "dry-run:instance").contains("aws sts decode-authorization-message"));
    // Everything else still passes: only the launch permission is missing.
    assert_eq!(status(&report, "identity"), "pass");
    assert_eq!(status(&report, "image:instance"), "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_without_credentials_stops_at_identity() {
    let ep = ready().await;
    let env = ep
        .env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"));
    let t = Test::new().file("p.yaml", ready_plan()).envs(env);
    let out = t
        .command()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .args(["doctor", "p.yaml", "--output", "json"])
        .output_within(DEADLINE)
        .expect("doctor");
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    // Every later call would fail the same way: one failure says it.
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["identity", "region"], "{report:#}");
    assert_eq!(status(&report, "identity"), "fail");
    assert!(
        detail(&report, "identity").starts_with("no usable AWS credentials: "),
        "{report:#}"
    );
    assert!(fix(&report, "identity").contains("aws sso login"));
    assert_eq!(status(&report, "region"), "pass");
    assert!(
        ep.calls().get("sts:GetCallerIdentity").is_none(),
        "unsigned requests never leave"
    );
}

const LOCAL: &str = "plan: here
target: { provider: local }
steps:
  host: { kind: instance }
  hello: { kind: run, on: host, run: echo hi }
";

#[test]
fn test_e2e_doctor_local_target_has_nothing_to_check_on_aws() {
    let t = Test::new()
        .file("p.yaml", LOCAL)
        .args(["doctor", "p.yaml", "--output", "json"])
        .status(0);
    let out = t.run();
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["target"], "local");
    assert_eq!(report["ok"], true);
    assert_eq!(report["region"], Value::Null);
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 1, "{report:#}");
    assert_eq!(checks[0]["name"], "target");
    assert_eq!(checks[0]["status"], "pass");
    assert!(
        checks[0]["detail"]
            .as_str()
            .is_some_and(|d| d.ends_with("nothing to check on AWS")),
        "{report:#}"
    );
}

#[test]
fn test_e2e_doctor_bad_output_flag_or_plan_exits_2() {
    Test::new()
        .file("p.yaml", LOCAL)
        .args(["doctor", "p.yaml", "--output", "xml"])
        .status(2)
        .run();
    let out = Test::new()
        .file("p.yaml", "plan: here\nsteps:\n  hello: { kind: nope }\n")
        .args(["doctor", "p.yaml"])
        .status(2)
        .run();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
