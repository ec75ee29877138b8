//! The checks of what a launch needs, per instance step: the network, the SSM parameters the plan names, the
//! image and its root volume, the vCPU quota, and RunInstances itself (with DryRun); and the state bucket's
//! conditional writes. They make no resource and cost nothing, but take longer than apply's pre-check.

use std::collections::{BTreeMap, BTreeSet};

use aws_config::SdkConfig;
use aws_sdk_ec2::types::{Filter, InstanceType};
use aws_sdk_ssm::types::ParameterStringFilter;

use super::quotas::{markets, quota_for};
use super::{code_of, sdk_error, Check, Status};
use crate::plan::{InstanceSpec, Plan, StepKind};
use crate::target::aws::{gib_ceil, AwsProvider, PollConfig, Tags};

struct Clients {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    quotas: aws_sdk_servicequotas::Client,
    provider: AwsProvider,
}

pub async fn checks(config: &SdkConfig, plan: &Plan) -> Vec<Check> {
    let c = Clients {
        ec2: aws_sdk_ec2::Client::new(config),
        ssm: aws_sdk_ssm::Client::new(config),
        quotas: aws_sdk_servicequotas::Client::new(config),
        provider: AwsProvider::from_config(config, PollConfig::default()),
    };
    let mut checks = parameters(&c.ssm, plan).await;
    let images_ok: BTreeSet<String> = checks
        .iter()
        .filter(|c| c.status != super::Status::Fail)
        .filter_map(|c| c.name.strip_prefix("ssm-parameter:").map(str::to_string))
        .collect();
    for step in &plan.steps {
        let StepKind::Instance(spec) = &step.kind else {
            continue;
        };
        checks.push(network(&c.ec2, &step.id, spec).await);
        let image = match spec.image.as_deref().map(|i| (i, i.strip_prefix("ssm:"))) {
            Some((_, Some(name))) if !images_ok.contains(name) => None,
            Some((_, Some(name))) => resolve(&c.ssm, name).await,
            Some((id, None)) => Some(id.to_string()),
            None => None,
        };
        let (check, image_ok) = image_check(&c.ec2, &step.id, spec, image.as_deref()).await;
        checks.push(check);
        checks.push(quota(&c, &step.id, spec).await);
        checks.push(match image.filter(|_| image_ok) {
            Some(image) => dry_run(&c.provider, &plan.name, &step.id, spec, &image).await,
            None => Check::warn(
                format!("dry-run:{}", step.id),
                "not tried: the image did not check out",
                "fix the image check first",
            ),
        });
    }
    checks
}

/// `ssm-parameter:NAME` for the image parameters (`ssm:/…`) and the vars named `*_param` that hold a parameter
/// name (the convention of plans/mistral-qlora.yaml's `hf_token_param`): each exists. DescribeParameters shows
/// that without reading a value, so a SecureString needs no decrypt grant here.
async fn parameters(ssm: &aws_sdk_ssm::Client, plan: &Plan) -> Vec<Check> {
    // name -> how the check is called: a var's value may be scrubbed from the output (a `*_token_param` looks
    // secret), so a var's parameter is called by the var.
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    for (key, value) in &plan.vars {
        let named = key.ends_with("_param") || key.ends_with("_parameter");
        if let Some(name) = value.as_str().filter(|n| named && n.starts_with('/')) {
            names.insert(name, format!("vars.{key}"));
        }
    }
    for step in &plan.steps {
        if let StepKind::Instance(spec) = &step.kind {
            if let Some(name) = spec.image.as_deref().and_then(|i| i.strip_prefix("ssm:")) {
                names.insert(name, name.to_string());
            }
        }
    }
    let mut checks = Vec::new();
    for (name, label) in names {
        checks.push(parameter(ssm, name, &label).await);
    }
    checks
}

async fn parameter(ssm: &aws_sdk_ssm::Client, name: &str, label: &str) -> Check {
    let check = format!("ssm-parameter:{label}");
    // Public parameters (/aws/service/…) are not listed by DescribeParameters: read them instead.
    let found = if name.starts_with("/aws/") {
        match ssm.get_parameter().name(name).send().await {
            Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_error(&e)),
        }
    } else {
        let filter = ParameterStringFilter::builder()
            .key("Name")
            .option("Equals")
            .values(name)
            .build();
        match filter {
            Ok(filter) => ssm
                .describe_parameters()
                .parameter_filters(filter)
                .send()
                .await
                .map(|out| {
                    out.parameters()
                        .first()
                        .map(|p| p.r#type().map_or("", |t| t.as_str()).to_string())
                })
                .map_err(|e| sdk_error(&e)),
            Err(e) => Err(e.to_string()),
        }
    };
    match found {
        Ok(Some(value)) if name.starts_with("/aws/") => {
            Check::pass(check, format!("resolves to {value}"))
        }
        Ok(Some(kind)) => Check::pass(check, format!("exists ({kind})")),
        Ok(None) => Check::fail(
            check,
            format!("SSM parameter {name} does not exist in this region"),
            if name.starts_with("/aws/") {
                "check the name (public parameters: `aws ssm get-parameters-by-path --path /aws/service/...`) and that the plan's region offers it".to_string()
            } else {
                format!("create it: `aws ssm put-parameter --name {name} --type SecureString --value ...`, or correct the var that names it")
            },
        ),
        Err(e) => Check::warn(
            check,
            format!("cannot look SSM parameter {name} up: {e}"),
            "the orchestrator needs ssm:GetParameter on public /aws/service/ parameters and ssm:DescribeParameters (docs/IAM.md)",
        ),
    }
}

async fn resolve(ssm: &aws_sdk_ssm::Client, name: &str) -> Option<String> {
    let out = ssm.get_parameter().name(name).send().await.ok()?;
    out.parameter()?.value().map(str::to_string)
}

/// `network:STEP`: the step's subnets (and security groups) exist in one VPC, or the region has a default VPC.
async fn network(ec2: &aws_sdk_ec2::Client, step: &str, spec: &InstanceSpec) -> Check {
    let check = format!("network:{step}");
    if !spec.subnets.is_empty() {
        return subnets(ec2, &check, spec).await;
    }
    let default = Filter::builder().name("isDefault").values("true").build();
    match ec2.describe_vpcs().filters(default).send().await {
        Ok(out) => match out.vpcs().first().and_then(|v| v.vpc_id()) {
            Some(vpc) => {
                security_groups(ec2, &check, spec, vpc, format!("default VPC {vpc}")).await
            }
            None => Check::fail(
                check,
                "the region has no default VPC and the step gives no `subnets`",
                "give the step `subnets:` (one per zone, and `security_groups:`), or create a default VPC: \
                 `aws ec2 create-default-vpc`",
            ),
        },
        Err(e) => Check::fail(
            check,
            format!("cannot list VPCs: {}", sdk_error(&e)),
            "the orchestrator needs ec2:DescribeVpcs (docs/IAM.md)",
        ),
    }
}

/// Every subnet exists, all lie in one VPC (a launch's security groups belong to one), and in different zones
/// (two subnets of one zone give failover nothing to try).
async fn subnets(ec2: &aws_sdk_ec2::Client, check: &str, spec: &InstanceSpec) -> Check {
    let listed = spec.subnets.join(", ");
    let out = match ec2
        .describe_subnets()
        .set_subnet_ids(Some(spec.subnets.clone()))
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            return Check::fail(
                check,
                format!("subnets {listed}: {}", sdk_error(&e)),
                "give subnet ids of the plan's region (`aws ec2 describe-subnets`)",
            )
        }
    };
    let found: Vec<(&str, &str, &str)> = out
        .subnets()
        .iter()
        .filter_map(|s| Some((s.subnet_id()?, s.vpc_id()?, s.availability_zone()?)))
        .collect();
    let missing: Vec<&str> = spec
        .subnets
        .iter()
        .map(String::as_str)
        .filter(|id| !found.iter().any(|f| f.0 == *id))
        .collect();
    if !missing.is_empty() {
        return Check::fail(
            check,
            format!("subnet {} not found", missing.join(", ")),
            "give subnets of this region",
        );
    }
    let mut vpcs: Vec<&str> = found.iter().map(|f| f.1).collect();
    vpcs.sort_unstable();
    vpcs.dedup();
    if vpcs.len() > 1 {
        return Check::fail(
            check,
            format!("the subnets lie in several VPCs ({})", vpcs.join(", ")),
            "list subnets of one VPC, one per availability zone",
        );
    }
    let detail = found
        .iter()
        .map(|(id, _, zone)| format!("{id} ({zone})"))
        .collect::<Vec<_>>()
        .join(", ");
    let detail = format!("subnets {detail} in {}", vpcs[0]);
    let checked = security_groups(ec2, check, spec, vpcs[0], detail).await;
    let mut zones: Vec<&str> = found.iter().map(|f| f.2).collect();
    zones.sort_unstable();
    zones.dedup();
    if checked.status == Status::Pass && zones.len() < found.len() {
        return Check::warn(
            check,
            format!("{}; two subnets share a zone", checked.detail),
            "a zone without capacity fails every subnet in it: list one subnet per availability zone",
        );
    }
    checked
}

async fn security_groups(
    ec2: &aws_sdk_ec2::Client,
    check: &str,
    spec: &InstanceSpec,
    vpc: &str,
    detail: String,
) -> Check {
    if spec.security_groups.is_empty() {
        return Check::pass(check, detail);
    }
    let listed = spec.security_groups.join(", ");
    let groups = ec2
        .describe_security_groups()
        .set_group_ids(Some(spec.security_groups.clone()))
        .send()
        .await;
    match groups {
        Ok(out) => {
            let elsewhere: Vec<&str> = out
                .security_groups()
                .iter()
                .filter(|g| g.vpc_id().is_some_and(|v| v != vpc))
                .filter_map(|g| g.group_id())
                .collect();
            if elsewhere.is_empty() {
                Check::pass(check, format!("{detail}, security groups {listed}"))
            } else {
                Check::fail(
                    check,
                    format!(
                        "security groups {} are not in {vpc}, where the instance goes",
                        elsewhere.join(", ")
                    ),
                    "give security groups of the subnets' VPC",
                )
            }
        }
        Err(e) => Check::fail(
            check,
            format!("security groups {listed}: {}", sdk_error(&e)),
            "give security group ids (sg-…) of the subnets' VPC",
        ),
    }
}

/// `image:STEP`: the AMI exists, and its root snapshot fits in `root_size` (AWS refuses a root volume smaller
/// than the snapshot it is made from). Returns whether the image can be launched.
async fn image_check(
    ec2: &aws_sdk_ec2::Client,
    step: &str,
    spec: &InstanceSpec,
    image: Option<&str>,
) -> (Check, bool) {
    let check = format!("image:{step}");
    let Some(image) = image else {
        let detail = match &spec.image {
            Some(i) => format!("{i} did not resolve (see its ssm-parameter check)"),
            None => "the step has no `image`".into(),
        };
        return (
            Check::fail(
                check,
                detail,
                "give an AMI id or `ssm:/path` of a parameter that exists",
            ),
            false,
        );
    };
    let found = match ec2.describe_images().image_ids(image).send().await {
        Ok(out) => out.images().first().cloned(),
        Err(e) if code_of(&e).starts_with("InvalidAMIID") => None,
        Err(e) => {
            let detail = format!("cannot describe {image}: {}", sdk_error(&e));
            return (
                Check::warn(check, detail, "the orchestrator needs ec2:DescribeImages"),
                true,
            );
        }
    };
    let Some(ami) = found else {
        let fix =
            "use an AMI of the plan's region (AMI ids differ per region), or an `ssm:` parameter";
        return (
            Check::fail(
                check,
                format!("AMI {image} does not exist in this region"),
                fix,
            ),
            false,
        );
    };
    let root = ami.root_device_name().unwrap_or_default();
    let snapshot = ami
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))
        .and_then(|m| m.ebs()?.volume_size());
    let name = ami.name().unwrap_or("");
    match (snapshot, spec.root_size_bytes.map(gib_ceil)) {
        (Some(snap), Some(size)) if snap > size => (
            Check::fail(
                check,
                format!("{image} ({name}): its root snapshot is {snap} GiB, larger than root_size {size} GiB"),
                format!("set `root_size: {snap}GiB` or more (RunInstances refuses a root volume smaller than its snapshot)"),
            ),
            false,
        ),
        (Some(snap), size) => {
            let root_gib = size.unwrap_or(snap);
            (Check::pass(check, format!("{image} ({name}), root {root} {root_gib} GiB (snapshot {snap} GiB)")), true)
        }
        (None, _) => (Check::pass(check, format!("{image} ({name}); its root snapshot size is not listed")), true),
    }
}

/// `quota:STEP`: some instance type of the step fits in its vCPU quota, in some market it may launch in.
async fn quota(c: &Clients, step: &str, spec: &InstanceSpec) -> Check {
    let check = format!("quota:{step}");
    let mut seen = Vec::new();
    let mut unknown = Vec::new();
    for &market in markets(spec.market) {
        for t in &spec.instance_types {
            let Some(q) = quota_for(t, market) else {
                unknown.push(format!("{t} ({market}): no documented vCPU quota"));
                continue;
            };
            let (vcpus, value) = (
                vcpus_of(&c.ec2, t).await,
                quota_value(&c.quotas, q.code).await,
            );
            match (vcpus, value) {
                (Ok(v), Ok(limit)) if f64::from(v) <= limit => {
                    return Check::pass(
                        check,
                        format!(
                            "{t} ({market}) needs {v} vCPUs; {} ({}) is {limit}",
                            q.name, q.code
                        ),
                    );
                }
                (Ok(v), Ok(limit)) => seen.push(format!(
                    "{t} ({market}) needs {v} vCPUs, {} ({}) is {limit}",
                    q.name, q.code
                )),
                (Err(e), _) | (_, Err(e)) => {
                    unknown.push(format!("{t} ({market}), {}: {e}", q.code))
                }
            }
        }
    }
    let increase = "ask for more in the Service Quotas console (EC2), e.g. `aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-DB2E81BA --desired-value 8`; approval can take days";
    if unknown.is_empty() {
        return Check::fail(
            check,
            format!("no instance type fits its quota: {}", seen.join("; ")),
            increase,
        );
    }
    // A quota we cannot read may well be enough: say what is unknown, do not block.
    seen.extend(unknown);
    Check::warn(check, format!("not verified: {}", seen.join("; ")), format!("check the quotas in the Service Quotas console; the orchestrator needs servicequotas:GetServiceQuota and servicequotas:GetAWSDefaultServiceQuota to read them. If one is too low: {increase}"))
}

async fn vcpus_of(ec2: &aws_sdk_ec2::Client, instance_type: &str) -> Result<i32, String> {
    let out = ec2
        .describe_instance_types()
        .instance_types(InstanceType::from(instance_type))
        .send()
        .await
        .map_err(|e| sdk_error(&e))?;
    out.instance_types()
        .first()
        .and_then(|i| i.v_cpu_info()?.default_v_cpus())
        .ok_or_else(|| format!("{instance_type} is not offered in this region"))
}

/// The applied value of an EC2 quota, else its default: GetServiceQuota answers NoSuchResourceException for a
/// quota that was never changed ("GetServiceQuota", Service Quotas API Reference).
async fn quota_value(sq: &aws_sdk_servicequotas::Client, code: &str) -> Result<f64, String> {
    let applied = sq
        .get_service_quota()
        .service_code("ec2")
        .quota_code(code)
        .send()
        .await;
    let quota = match applied {
        Ok(out) => out.quota,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_no_such_resource_exception()) =>
        {
            let default = sq
                .get_aws_default_service_quota()
                .service_code("ec2")
                .quota_code(code)
                .send()
                .await;
            default.map_err(|e| sdk_error(&e))?.quota
        }
        Err(e) => return Err(sdk_error(&e)),
    };
    quota
        .and_then(|q| q.value())
        .ok_or_else(|| "Service Quotas gave no value".into())
}

/// `dry-run:STEP`: RunInstances with DryRun, the request apply sends (first type, first market).
async fn dry_run(
    provider: &AwsProvider,
    plan: &str,
    step: &str,
    spec: &InstanceSpec,
    image: &str,
) -> Check {
    let check = format!("dry-run:{step}");
    let (Some(t), Some(market)) = (spec.instance_types.first(), markets(spec.market).first())
    else {
        return Check::fail(
            check,
            "the step has no instance_types",
            "list at least one, e.g. `instance_types: [g5.2xlarge]`",
        );
    };
    let tags = Tags {
        plan: plan.into(),
        run: "doctor".into(),
        step: step.into(),
        token: "doctor".into(),
    };
    let err = match provider.dry_run_launch(spec, &tags, image, t, market).await {
        Ok(()) => {
            return Check::pass(
                check,
                format!("RunInstances {t} ({market}) would be allowed"),
            )
        }
        Err(err) => err,
    };
    match code_of(&err) {
        "DryRunOperation" => Check::pass(check, format!("RunInstances {t} ({market}) would be allowed")),
        "UnauthorizedOperation" => Check::fail(
            check,
            format!("RunInstances {t} ({market}) is denied: {}", sdk_error(&err)),
            "grant the orchestrator policy of docs/IAM.md (RunInstances with the sortie:plan tag, its inputs, iam:PassRole for the profile's role); `aws sts decode-authorization-message --encoded-message ...` names the statement that is missing",
        ),
        _ => Check::fail(
            check,
            format!("RunInstances {t} ({market}) would fail: {}", sdk_error(&err)),
            "fix what the message names; apply would stop on the same error",
        ),
    }
}

/// `conditional-writes`: a create with If-None-Match succeeds once and is refused the second time (HTTP 412),
/// as the S3 state lock needs. The probe object is deleted afterwards.
pub async fn conditional_writes(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    plan: &str,
) -> Check {
    let check = "conditional-writes";
    let key = format!(
        "{}{plan}/doctor-probe-{:016x}",
        if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        },
        fastrand::u64(..)
    );
    let put = || {
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .if_none_match("*")
            .body(b"sortie doctor probe".to_vec().into())
            .send()
    };
    if let Err(e) = put().await {
        return Check::fail(check, format!("cannot write s3://{bucket}/{key}: {}", sdk_error(&e)), format!("the orchestrator needs s3:PutObject and s3:DeleteObject on arn:aws:s3:::{bucket}/{prefix}/* (docs/IAM.md, statement `State`)"));
    }
    let second = put().await;
    let _ = s3.delete_object().bucket(bucket).key(&key).send().await;
    match second {
        Err(e) if code_of(&e) == "PreconditionFailed" => Check::pass(check, format!("s3://{bucket} refuses a second create of the same key (412)")),
        Ok(_) => Check::fail(check, format!("s3://{bucket} overwrote an object despite If-None-Match: *"), "keep state in an AWS S3 bucket (S3-compatible stores without conditional writes cannot hold the lock)"),
        Err(e) => Check::fail(check, format!("s3://{bucket}: the second conditional write answered {}", sdk_error(&e)), "expected 412 PreconditionFailed; keep state in an AWS S3 bucket"),
    }
}
