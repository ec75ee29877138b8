//! `subnets:` (issue 10 §6): an instance step outside the default VPC lists one subnet per zone, and capacity
//! failover walks them in order, with the step's security groups; `plan doctor` checks they make one network.

use serde_json::Value;

use crate::aws_endpoint::Endpoint;
use crate::test_builder::Test;
use crate::test_builder::{Deadline as _, DEADLINE};

const PLAN: &str = r#"plan: subnets
target: { provider: aws, region: us-east-1 }
state: s3://net-state/runs
vars: { a: subnet-a, b: subnet-b, sg: sg-0 }
defaults: { timeout: 10m }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
    subnets: ["{{ vars.a }}", "{{ vars.b }}"]
    security_groups: ["{{ vars.sg }}"]
  work: { kind: run, on: host, run: echo ok }
  teardown: { kind: teardown, needs: [work] }
"#;

/// A VPC of its own, with a subnet in us-east-1a and one in us-east-1b, and a security group: (a, b, sg).
async fn network(endpoint: &Endpoint) -> (String, String, String) {
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.7.0.0/16")
        .send()
        .await
        .expect("vpc");
    let vpc = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_string();
    let mut subnets = Vec::new();
    for (cidr, zone) in [("10.7.1.0/24", "us-east-1a"), ("10.7.2.0/24", "us-east-1b")] {
        let out = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .expect("subnet");
        subnets.push(
            out.subnet()
                .and_then(|s| s.subnet_id())
                .expect("id")
                .to_string(),
        );
    }
    let sg = ec2
        .create_security_group()
        .group_name("sortie-test")
        .description("no inbound")
        .vpc_id(&vpc)
        .send()
        .await
        .expect("security group");
    let sg = sg.group_id().expect("sg id").to_string();
    (subnets[0].clone(), subnets[1].clone(), sg)
}

fn test(endpoint: &Endpoint) -> Test {
    endpoint.plan_test(PLAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_subnets_fail_over_in_order_with_the_security_groups() {
    let endpoint = Endpoint::ready("net-state", &[]).await;
    let (a, b, sg) = network(&endpoint).await;
    endpoint.add_fault(&format!(
        r#"{{"action":"RunInstances","match":{{"SubnetId":"{a}"}},"error":{{"code":"InsufficientInstanceCapacity","message":"no capacity in {a}","status":500}},"times":-1}}"#
    ));
    let t = test(&endpoint);
    let out = t
        .command()
        .args(["apply", "p.yaml", "--output", "json", "--var"])
        .arg(format!("a={a}"))
        .args(["--var", &format!("b={b}"), "--var", &format!("sg={sg}")])
        .output_within(DEADLINE)
        .expect("apply");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = crate::apply::events(&stdout);
    let failovers: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "step_failover")
        .collect();
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    assert_eq!(failovers[0]["subnet"], a.as_str());
    assert_eq!(failovers[0]["availability_zone"], "us-east-1a");
    let output = |key: &str| {
        events
            .iter()
            .find(|e| e["event"] == "step_output" && e["step"] == "host" && e["key"] == key)
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(output("availability_zone").as_deref(), Some("us-east-1b"));
    let instance = output("instance_id").expect("instance id");
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let described = ec2
        .describe_instances()
        .instance_ids(&instance)
        .send()
        .await
        .expect("describe");
    let i = &described.reservations()[0].instances()[0];
    assert_eq!(i.subnet_id(), Some(b.as_str()));
    let groups: Vec<&str> = i
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id())
        .collect();
    assert_eq!(groups, [sg.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_doctor_subnets_must_exist_and_share_a_vpc_with_the_security_groups() {
    let endpoint = Endpoint::ready("net-state", &[]).await;
    let (a, b, sg) = network(&endpoint).await;
    let doctor = |a: &str, b: &str, sg: &str| -> Value {
        let out = test(&endpoint)
            .command()
            .args(["doctor", "p.yaml", "--output", "json"])
            .args(["--var", &format!("a={a}"), "--var", &format!("b={b}")])
            .args(["--var", &format!("sg={sg}")])
            .output_within(DEADLINE)
            .expect("doctor");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == "network:host")
            .cloned()
            .expect("network check")
    };
    let good = doctor(&a, &b, &sg);
    assert_eq!(good["status"], "pass", "{good:#}");
    assert!(
        good["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("(us-east-1b)"),
        "{good:#}"
    );

    let missing = doctor(&a, "subnet-0000000000000000f", &sg);
    assert_eq!(missing["status"], "fail", "{missing:#}");

    // The default VPC's security group is not in the subnets' VPC.
    let ec2 = aws_sdk_ec2::Client::new(&endpoint.sdk_config().await);
    let default_sg = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .expect("groups")
        .security_groups()
        .iter()
        .find(|g| g.vpc_id() != good_vpc(&good))
        .and_then(|g| g.group_id())
        .expect("a default group of another VPC")
        .to_string();
    let foreign = doctor(&a, &b, &default_sg);
    assert_eq!(foreign["status"], "fail", "{foreign:#}");
    assert!(
        foreign["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("are not in vpc-"),
        "{foreign:#}"
    );

    let vpc = good_vpc(&good).expect("vpc").to_string();
    let c = ec2
        .create_subnet()
        .vpc_id(vpc)
        .cidr_block("10.7.3.0/24")
        .availability_zone("us-east-1a")
        .send()
        .await
        .expect("subnet");
    let c = c.subnet().and_then(|s| s.subnet_id()).expect("id");
    let same_zone = doctor(&a, c, &sg);
    assert_eq!(same_zone["status"], "warn", "{same_zone:#}");
}

/// The VPC id named in a passing network check's detail ("… in vpc-…").
fn good_vpc(check: &Value) -> Option<&str> {
    check["detail"]
        .as_str()?
        .split_whitespace()
        .find(|w| w.starts_with("vpc-"))
        .map(|w| w.trim_end_matches(','))
}

/// An S3 gateway endpoint reaches its own region's buckets only, and the host's presigned URLs are signed for
/// one region: a state bucket in another region is refused by `plan apply` before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_e2e_aws_state_bucket_in_another_region_is_refused_before_anything_is_created() {
    let endpoint = Endpoint::start_with(&crate::aws_endpoint::READY);
    let s3 = endpoint.s3_client().await;
    s3.create_bucket()
        .bucket("net-state")
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                .build(),
        )
        .send()
        .await
        .expect("bucket in eu-west-1");
    let (a, b, sg) = network(&endpoint).await;
    let out = test(&endpoint)
        .command()
        .args(["apply", "p.yaml", "--yes"])
        .args(["--var", &format!("a={a}"), "--var", &format!("b={b}")])
        .args(["--var", &format!("sg={sg}")])
        .output_within(DEADLINE)
        .expect("apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("s3://net-state is in eu-west-1, the plan targets us-east-1"),
        "{stderr}"
    );
    assert!(
        endpoint.calls().get("ec2:RunInstances").is_none(),
        "{stderr}"
    );
}
