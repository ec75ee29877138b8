//! docs/IAM.md must work as written: every request `plan` signs during `doctor`, an apply, a failing apply (a step that
//! times out and is cancelled on the host), `status`, `logs`, `destroy` and `gc` is checked against the orchestrator policy
//! in that file, with the resources and condition keys AWS documents for the action.
//!
//! The requests come from the test endpoint's request log, filtered by the access key only `plan` uses. The
//! evaluation is a stand-in for IAM at the AWS boundary (moto cannot evaluate a resource-scoped policy; see
//! docs/IAM.md). What it copies from AWS:
//! - an identity policy allows a request when some Allow statement matches the action, the resource and every
//!   condition, and no Deny does ("Policy evaluation logic", IAM User Guide); `*` in Action/Resource is a
//!   wildcard; a condition on a key the request does not carry does not hold ("Condition operators");
//! - SendCommand is authorized against the document and against each instance (Systems Manager User Guide,
//!   "Restricting Run Command access based on tags"); CancelCommand, GetCommandInvocation,
//!   ListCommandInvocations and DescribeInstanceInformation take no resource type (Service Authorization
//!   Reference), so they are checked against `*`;
//! - RunInstances is authorized against the instance, the image, the network interface, the subnet, the
//!   security group and the volume it creates, with `aws:RequestTag/*` from its TagSpecifications; tagging on
//!   create also needs `ec2:CreateTags` with `ec2:CreateAction`; an instance profile needs `iam:PassRole`
//!   ("Grant required permissions for Amazon EC2 resources", EC2 User Guide);
//! - S3 ListObjectsV2 is `s3:ListBucket` on the bucket with `s3:prefix`; HeadObject is `s3:GetObject`; and a GET of
//!   a missing key answers 404 only with `s3:ListBucket` on the bucket, else 403 (S3 API reference, GetObject
//!   "Permissions"): sortie relies on the 404 for a new run's state, so every GET also needs ListBucket.
//!
//! EC2 resources sortie changes are assumed to carry the `sortie:plan` tag it puts on everything it creates
//! (tests/aws_apply.rs and tests/aws_provider.rs check the tags).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const BUCKET: &str = "sortie-state";
const ROLE: &str = "sortie-ssm";
/// The access key only the `plan` processes of this test sign with.
const ORCHESTRATOR_KEY: &str = "AKIASORTIEORCHESTRA";

/// The orchestrator policy: the first JSON block after "## The orchestrator" in docs/IAM.md, with its
/// placeholders filled in.
fn documented_policy() -> Value {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/IAM.md"))
        .expect("docs/IAM.md");
    let section = doc
        .split_once("## The orchestrator")
        .expect("an orchestrator section")
        .1;
    let block = section
        .split_once("```json\n")
        .expect("a json block")
        .1
        .split_once("```")
        .expect("closed block")
        .0;
    let filled = block
        .replace("ACCOUNT", ACCOUNT)
        .replace("REGION", REGION)
        .replace("BUCKET", BUCKET)
        .replace("ROLE", ROLE);
    serde_json::from_str(&filled).unwrap_or_else(|e| panic!("docs/IAM.md policy is not JSON: {e}"))
}

/// One authorization AWS makes for a request: an action on a resource, with the request's condition keys.
#[derive(Debug, Clone)]
struct Check {
    action: String,
    resource: String,
    context: BTreeMap<String, String>,
}

fn check(action: &str, resource: String, context: &[(&str, &str)]) -> Check {
    Check {
        action: action.into(),
        resource,
        context: context
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// `*` matches any run of characters; IAM matches actions case-insensitively and resources exactly.
fn glob(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let (p, t) = if case_insensitive {
        (pattern.to_lowercase(), text.to_lowercase())
    } else {
        (pattern.to_string(), text.to_string())
    };
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut rest = t.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("a string").to_string())
            .collect(),
        other => panic!("expected a string or a list: {other}"),
    }
}

fn condition_holds(condition: &Value, context: &BTreeMap<String, String>) -> bool {
    let Some(operators) = condition.as_object() else {
        return true;
    };
    operators.iter().all(|(op, keys)| {
        keys.as_object()
            .expect("condition keys")
            .iter()
            .all(|(key, wanted)| {
                let Some(have) = context.get(key) else {
                    return false;
                };
                let wanted = strings(wanted);
                match op.as_str() {
                    "StringEquals" => wanted.iter().any(|w| w == have),
                    "StringLike" => wanted.iter().any(|w| glob(w, have, false)),
                    other => panic!("this test's evaluator does not know {other}: teach it"),
                }
            })
    })
}

fn statement_matches(s: &Value, c: &Check) -> bool {
    strings(&s["Action"])
        .iter()
        .any(|a| glob(a, &c.action, true))
        && strings(&s["Resource"])
            .iter()
            .any(|r| glob(r, &c.resource, false))
        && condition_holds(&s["Condition"], &c.context)
}

fn allowed(policy: &Value, c: &Check) -> bool {
    let statements = policy["Statement"].as_array().expect("statements");
    let matching = |effect: &str| {
        statements
            .iter()
            .any(|s| s["Effect"] == effect && statement_matches(s, c))
    };
    matching("Allow") && !matching("Deny")
}

fn param<'a>(params: &'a Value, key: &str) -> Option<&'a str> {
    params.get(key).and_then(Value::as_str)
}

/// The `sortie:plan` tag of a RunInstances/CreateVolume request's TagSpecifications.
fn request_tag(params: &Value) -> Option<String> {
    let obj = params.as_object()?;
    obj.iter().find_map(|(k, v)| {
        let prefix = k.strip_suffix(".Key")?;
        (v == "sortie:plan")
            .then(|| {
                obj.get(&format!("{prefix}.Value"))?
                    .as_str()
                    .map(str::to_string)
            })
            .flatten()
    })
}

fn ec2_arn(kind: &str, id: &str) -> String {
    format!("arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{id}")
}

/// What AWS authorizes for one logged request (see the module comment for the sources).
fn checks_for(name: &str, params: &Value, plan: &str) -> Vec<Check> {
    let own = [("aws:ResourceTag/sortie:plan", plan)];
    let id = |key: &str| param(params, key).unwrap_or("unknown").to_string();
    match name {
        n if n.starts_with("ec2:Describe") => vec![check(n, "*".into(), &[])],
        "ec2:RunInstances" => run_instances(params),
        "ec2:CreateVolume" => {
            let tag = request_tag(params).unwrap_or_default();
            let mut v = vec![check(
                "ec2:CreateVolume",
                ec2_arn("volume", "*"),
                &[("aws:RequestTag/sortie:plan", &tag)],
            )];
            if !tag.is_empty() {
                v.push(check(
                    "ec2:CreateTags",
                    ec2_arn("volume", "*"),
                    &[("ec2:CreateAction", "CreateVolume")],
                ));
            }
            v
        }
        "ec2:AttachVolume" | "ec2:DetachVolume" => {
            let action = name;
            let mut v = vec![check(action, ec2_arn("volume", &id("VolumeId")), &own)];
            if let Some(i) = param(params, "InstanceId") {
                v.push(check(action, ec2_arn("instance", i), &own));
            }
            v
        }
        "ec2:DeleteVolume" => vec![check(name, ec2_arn("volume", &id("VolumeId")), &own)],
        "ec2:TerminateInstances" => vec![check(name, ec2_arn("instance", &id("InstanceId.1")), &own)],
        "ssm:SendCommand" => vec![
            check(
                name,
                format!(
                    "arn:aws:ssm:{REGION}::document/{}",
                    param(params, "DocumentName").unwrap_or("unknown")
                ),
                &[],
            ),
            check(
                name,
                ec2_arn("instance", &id("InstanceIds[0]")),
                &[("ssm:resourceTag/sortie:plan", plan)],
            ),
        ],
        "ssm:CancelCommand"
        | "ssm:GetCommandInvocation"
        | "ssm:ListCommandInvocations"
        | "ssm:DescribeInstanceInformation" => vec![check(name, "*".into(), &[])],
        "ssm:GetParameter" => {
            let p = id("Name");
            let arn = if p.starts_with("/aws/service/") {
                format!("arn:aws:ssm:{REGION}::parameter{p}")
            } else {
                format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{p}")
            };
            vec![check(name, arn, &[])]
        }
        "s3:GetObject" | "s3:HeadObject" | "s3:PutObject" | "s3:DeleteObject" => {
            let action = if name == "s3:HeadObject" {
                "s3:GetObject"
            } else {
                name
            };
            let bucket = id("Bucket");
            let mut v = vec![check(
                action,
                format!("arn:aws:s3:::{bucket}/{}", id("Key")),
                &[],
            )];
            if action == "s3:GetObject" {
                v.push(check("s3:ListBucket", format!("arn:aws:s3:::{bucket}"), &[]));
            }
            v
        }
        "s3:ListObjectsV2" | "s3:ListObjects" => vec![check(
            "s3:ListBucket",
            format!("arn:aws:s3:::{}", id("Bucket")),
            &[("s3:prefix", param(params, "prefix").unwrap_or(""))],
        )],
        // Needs no permission: "GetCallerIdentity", STS API reference.
        "sts:GetCallerIdentity" => vec![],
        "iam:GetInstanceProfile" => vec![check(
            name,
            format!("arn:aws:iam::{ACCOUNT}:instance-profile/{}", id("InstanceProfileName")),
            &[],
        )],
        "iam:ListAttachedRolePolicies" => vec![check(
            name,
            format!("arn:aws:iam::{ACCOUNT}:role/{}", id("RoleName")),
            &[],
        )],
        // HeadBucket is authorized as s3:ListBucket on the bucket (S3 API reference, "HeadBucket").
        "s3:HeadBucket" => vec![check(
            "s3:ListBucket",
            format!("arn:aws:s3:::{}", id("Bucket")),
            &[],
        )],
        "servicequotas:GetServiceQuota"
        | "servicequotas:GetAWSDefaultServiceQuota"
        | "ssm:DescribeParameters" => vec![check(name, "*".into(), &[])],
        other => panic!(
            "plan made a request this test does not model: {other} {params}; add it to docs/IAM.md and here"
        ),
    }
}

fn run_instances(params: &Value) -> Vec<Check> {
    let tag = request_tag(params).unwrap_or_default();
    let action = "ec2:RunInstances";
    let image = param(params, "ImageId").unwrap_or("unknown");
    let mut v = vec![
        check(
            action,
            ec2_arn("instance", "*"),
            &[("aws:RequestTag/sortie:plan", &tag)],
        ),
        check(action, format!("arn:aws:ec2:{REGION}::image/{image}"), &[]),
        check(action, ec2_arn("network-interface", "*"), &[]),
        check(action, ec2_arn("security-group", "*"), &[]),
        check(action, ec2_arn("subnet", "*"), &[]),
        check(action, ec2_arn("volume", "*"), &[]),
    ];
    if !tag.is_empty() {
        for kind in ["instance", "volume"] {
            v.push(check(
                "ec2:CreateTags",
                ec2_arn(kind, "*"),
                &[("ec2:CreateAction", "RunInstances")],
            ));
        }
    }
    if params.get("IamInstanceProfile.Name").is_some()
        || params.get("IamInstanceProfile.Arn").is_some()
    {
        v.push(check(
            "iam:PassRole",
            format!("arn:aws:iam::{ACCOUNT}:role/{ROLE}"),
            &[("iam:PassedToService", "ec2.amazonaws.com")],
        ));
    }
    if param(params, "InstanceMarketOptions.MarketType") == Some("spot") {
        v.push(check(action, ec2_arn("spot-instances-request", "*"), &[]));
    }
    v
}

fn plan_text(name: &str, extra_step: &str) -> String {
    format!(
        "plan: {name}
target: {{ provider: aws, region: {REGION} }}
state: s3://{BUCKET}/sortie
defaults: {{ timeout: 5m }}
steps:
  instance:
    kind: instance
    instance_types: [g5.2xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: {ROLE}
    root_size: 20GiB
    max_lifetime: 2h
  volume:
    kind: volume
    attach_to: instance
    size: 1GiB
    mount: /mnt/training
  work:
    kind: run
    needs: [volume]
    detach: true
    run: |
      echo \"rows=3\" >> \"$SORTIE_OUTPUT\"
{extra_step}  teardown:
    kind: teardown
"
    )
}

/// The requests signed with the orchestrator's key so far, each with what AWS would authorize.
fn denied_requests(ep: &Endpoint, policy: &Value) -> (usize, Vec<String>) {
    let (status, body) = ep.http(
        "GET",
        &format!("/_sortie/requests?access_key={ORCHESTRATOR_KEY}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let requests: Vec<Value> = serde_json::from_str(&body).expect("requests JSON");
    let mut denied = Vec::new();
    for r in &requests {
        let name = r["name"].as_str().expect("name");
        for c in checks_for(name, &r["params"], "iam") {
            if !allowed(policy, &c) {
                denied.push(format!(
                    "{name}: {} on {} with {:?}",
                    c.action, c.resource, c.context
                ));
            }
        }
    }
    denied.sort();
    denied.dedup();
    (requests.len(), denied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_iam_documented_policy_allows_every_request_plan_makes() {
    let ep = Endpoint::start_with(&["--seed-profile", ROLE, "--require-instance-profile"]);
    ep.create_bucket(BUCKET).await;
    let orchestrator = ep.env().into_iter().map(|(k, v)| match k.as_str() {
        "AWS_ACCESS_KEY_ID" => (k, ORCHESTRATOR_KEY.to_string()),
        _ => (k, v),
    });
    let slow = "  slow:\n    kind: run\n    needs: [volume]\n    timeout: 2s\n    run: sleep 60\n";
    let t = Test::new()
        .file("p.yaml", plan_text("iam", ""))
        .file("slow.yaml", plan_text("iamslow", slow))
        .env("SORTIE_POLL_INTERVAL", "100ms")
        .envs(orchestrator);
    let run = |args: &[&str]| {
        let out = t
            .command()
            .args(args)
            .output_within(DEADLINE)
            .expect("plan");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let ok = |args: &[&str]| {
        let (code, text) = run(args);
        assert_eq!(code, Some(0), "plan {args:?}:\n{text}");
    };
    // One g5.2xlarge of G quota (the endpoint starts at AWS's default, 0), so that every check passes.
    let (status, body) = ep.http("POST", "/_sortie/quotas", Some(r#"{"ec2/L-DB2E81BA": 8}"#));
    assert_eq!(status, 200, "{body}");
    ok(&["doctor", "p.yaml"]);
    ok(&["apply", "p.yaml"]);
    let (code, text) = run(&["apply", "slow.yaml", "--output", "json"]);
    assert_eq!(code, Some(1), "the slow step times out: {text}");
    assert!(
        text.contains(r#""step":"slow","status":"failed""#),
        "{text}"
    );
    ok(&["status", "p.yaml"]);
    ok(&["logs", "p.yaml", "work"]);
    ok(&["destroy", "slow.yaml"]);
    ok(&["gc", "p.yaml", "--yes"]);
    let calls = ep.calls();
    for op in [
        "ec2:RunInstances",
        "ec2:CreateVolume",
        "ec2:AttachVolume",
        "ec2:TerminateInstances",
        "ssm:SendCommand",
        "s3:PutObject",
    ] {
        assert!(
            calls.get(op).is_some(),
            "the scenario made no {op}: {calls}"
        );
    }

    let policy = documented_policy();
    let (seen, denied) = denied_requests(&ep, &policy);
    assert!(seen > 20, "only {seen} distinct requests logged");
    assert!(
        denied.is_empty(),
        "docs/IAM.md denies requests plan makes:\n{}",
        denied.join("\n")
    );
}

#[test]
fn test_int_iam_evaluator_denies_what_the_old_policy_got_wrong() {
    // The evaluator must catch the two mistakes the policy once had, or the test above proves nothing.
    let old: Value = serde_json::json!({"Statement": [
        {"Effect": "Allow", "Action": ["ssm:SendCommand", "ssm:CancelCommand"],
         "Resource": [format!("arn:aws:ssm:{REGION}::document/AWS-RunShellScript"),
                      format!("arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*")],
         "Condition": {"StringLike": {"ssm:resourceTag/sortie:plan": "*"}}},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{BUCKET}"),
         "Condition": {"StringLike": {"s3:prefix": "sortie/*"}}}
    ]});
    let send = serde_json::json!({"DocumentName": "AWS-RunShellScript", "InstanceIds[0]": "i-1"});
    let checks = checks_for("ssm:SendCommand", &send, "p");
    assert!(!allowed(&old, &checks[0]), "the untagged document");
    assert!(allowed(&old, &checks[1]), "the tagged instance");
    let cancel = checks_for("ssm:CancelCommand", &Value::Null, "p");
    assert!(
        !allowed(&old, &cancel[0]),
        "CancelCommand is checked against *"
    );
    let get = serde_json::json!({"Bucket": BUCKET, "Key": "sortie/p/r/state.json"});
    let list = &checks_for("s3:GetObject", &get, "p")[1];
    assert!(
        !allowed(&old, list),
        "ListBucket for a 404 carries no prefix"
    );
    let policy = documented_policy();
    for c in checks.iter().chain(&cancel).chain([list]) {
        assert!(allowed(&policy, c), "docs/IAM.md: {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_state_get_denied_names_the_list_bucket_grant() {
    // Without s3:ListBucket, S3 answers the GET of a new run's missing state with 403, not 404.
    let ep = Endpoint::start_with(&["--seed-profile", ROLE, "--require-instance-profile"]);
    ep.create_bucket(BUCKET).await;
    ep.add_fault(
        r#"{"action": "s3:GetObject", "times": -1,
            "error": {"code": "AccessDenied", "message": "Access Denied", "status": 403}}"#,
    );
    let t = Test::new()
        .file("p.yaml", plan_text("iam", ""))
        .envs(ep.env());
    let out = t
        .command()
        .args(["apply", "p.yaml"])
        .output_within(DEADLINE)
        .expect("apply");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("HTTP 403") && err.contains("s3:ListBucket on arn:aws:s3:::sortie-state"),
        "{err}"
    );
    assert!(err.contains("docs/IAM.md"), "{err}");
    let calls = ep.calls();
    assert!(
        calls.get("ec2:RunInstances").is_none(),
        "nothing is created: {calls}"
    );
}
