//! The cheap checks, which `plan apply` also runs first: who the caller is and in which region, the state
//! bucket, and the instance profiles the plan's instances get.

use std::collections::BTreeSet;

use aws_config::SdkConfig;

use super::{code_of, sdk_error, Check};
use crate::plan::{Plan, StateLocation, StepKind};

/// The AWS managed policy that lets the SSM agent register and take Run Command (docs/IAM.md).
pub const SSM_CORE_POLICY: &str = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore";

/// `identity` (STS GetCallerIdentity: needs no permission, so it only fails without working credentials) and
/// `region`.
pub async fn identity(config: &SdkConfig) -> Vec<Check> {
    let sts = aws_sdk_sts::Client::new(config);
    let identity = match sts.get_caller_identity().send().await {
        Ok(out) => Check::pass(
            "identity",
            format!(
                "account {} as {}",
                out.account().unwrap_or("?"),
                out.arn().unwrap_or("?")
            ),
        ),
        Err(err) => Check::fail(
            "identity",
            format!("no usable AWS credentials: {}", sdk_error(&err)),
            "give credentials the way the AWS CLI takes them: `aws sso login` or `aws configure`, AWS_PROFILE (or \
             the target's `profile:`), or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY; `aws sts get-caller-identity` \
             must work",
        ),
    };
    let region = match config.region() {
        Some(region) => Check::pass("region", format!("{region}")),
        None => Check::fail(
            "region",
            "no region: the plan's target has none and the environment gives none",
            "set `target: { provider: aws, region: us-east-1 }` in the plan, or AWS_REGION",
        ),
    };
    vec![identity, region]
}

/// `state-bucket`: the S3 state bucket exists and is in the target's region; with `write`, also
/// `conditional-writes`: it refuses a second create of the same key (the state lock relies on it).
pub async fn state_bucket(config: &SdkConfig, plan: &Plan, write: bool) -> Vec<Check> {
    let StateLocation::S3 { bucket, prefix } = &plan.state else {
        return vec![Check::pass(
            "state-bucket",
            format!("state is kept in the directory {}, not on S3", plan.state),
        )];
    };
    let s3 = crate::target::aws::config::s3_client(config);
    let region = config.region().map(|r| r.to_string()).unwrap_or_default();
    let name = "state-bucket";
    let found = match s3.head_bucket().bucket(bucket).send().await {
        Ok(out) => out.bucket_region().map(str::to_string),
        Err(err) => {
            let missing = err.as_service_error().is_some_and(|e| e.is_not_found());
            // S3 answers a request to the wrong region with a redirect that names the bucket's region.
            let elsewhere = err
                .raw_response()
                .and_then(|r| r.headers().get("x-amz-bucket-region"))
                .filter(|r| *r != region)
                .map(str::to_string);
            return vec![if let Some(r) = elsewhere {
                wrong_region(bucket, &r, &region)
            } else if missing {
                Check::fail(
                    name,
                    format!("s3://{bucket} does not exist"),
                    format!("create it in the plan's region: `aws s3 mb s3://{bucket} --region {region}`, or point `state:` at a bucket you own"),
                )
            } else {
                Check::fail(
                    name,
                    format!("cannot reach s3://{bucket}: {}", head_error(&err)),
                    format!("the orchestrator needs s3:ListBucket on arn:aws:s3:::{bucket} (docs/IAM.md, statement `StateList`); a 403 can also mean another account owns the bucket"),
                )
            }];
        }
    };
    let mut checks = vec![match found {
        Some(r) if r != region => wrong_region(bucket, &r, &region),
        _ => Check::pass(name, format!("s3://{bucket} exists in {region}")),
    }];
    if write {
        checks.push(super::launch::conditional_writes(&s3, bucket, prefix, &plan.name).await);
    }
    checks
}

fn wrong_region(bucket: &str, found: &str, region: &str) -> Check {
    Check::fail(
        "state-bucket",
        format!("s3://{bucket} is in {found}, the plan targets {region}"),
        format!("keep state in a bucket in {region} (`state: s3://BUCKET/...`), or set the target's region to {found}"),
    )
}

/// HeadBucket answers without a body, so a 403 has no error code: say the HTTP status instead.
fn head_error(
    err: &aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::head_bucket::HeadBucketError>,
) -> String {
    match err.raw_response().map(|r| r.status().as_u16()) {
        Some(status) if code_of(err).is_empty() => format!("HTTP {status}"),
        _ => sdk_error(err),
    }
}

/// `instance-profile:NAME` for each profile the plan's instances use: it exists, has a role, and the role has
/// AmazonSSMManagedInstanceCore attached.
pub async fn instance_profiles(config: &SdkConfig, plan: &Plan) -> Vec<Check> {
    let names: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.kind {
            StepKind::Instance(spec) => spec.profile.as_deref(),
            _ => None,
        })
        .collect();
    let iam = aws_sdk_iam::Client::new(config);
    let mut checks = Vec::new();
    for name in names {
        checks.push(instance_profile(&iam, name).await);
    }
    checks
}

async fn instance_profile(iam: &aws_sdk_iam::Client, name: &str) -> Check {
    let check = format!("instance-profile:{name}");
    let create = format!(
        "create it with a role that EC2 may assume and {SSM_CORE_POLICY} attached (docs/IAM.md, \"The instance profile\")"
    );
    let profile = match iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await
    {
        Ok(out) => out.instance_profile,
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_no_such_entity_exception()) =>
        {
            return Check::fail(
                &check,
                format!("instance profile {name} does not exist"),
                create,
            );
        }
        Err(err) => {
            return Check::fail(
                &check,
                format!("cannot read instance profile {name}: {}", sdk_error(&err)),
                "the orchestrator needs iam:GetInstanceProfile and iam:ListAttachedRolePolicies (docs/IAM.md)",
            );
        }
    };
    let Some(role) = profile
        .as_ref()
        .and_then(|p| p.roles().first())
        .map(|r| r.role_name().to_string())
    else {
        return Check::fail(
            &check,
            format!("instance profile {name} has no role, so its instances have no credentials"),
            format!("`aws iam add-role-to-instance-profile --instance-profile-name {name} --role-name ROLE`; {create}"),
        );
    };
    ssm_policy(iam, &check, &role).await
}

/// The role's attached policies include AmazonSSMManagedInstanceCore.
async fn ssm_policy(iam: &aws_sdk_iam::Client, check: &str, role: &str) -> Check {
    match iam
        .list_attached_role_policies()
        .role_name(role)
        .send()
        .await
    {
        Ok(out) => {
            let attached: Vec<&str> = out
                .attached_policies()
                .iter()
                .filter_map(|p| p.policy_arn())
                .collect();
            if attached.contains(&SSM_CORE_POLICY) {
                Check::pass(
                    check,
                    format!("role {role}, with AmazonSSMManagedInstanceCore"),
                )
            } else {
                // An inline or custom policy may grant the same actions: what we cannot see is a warning.
                Check::warn(
                    check,
                    format!(
                        "role {role} does not have AmazonSSMManagedInstanceCore attached (attached: {}); without \
                         its SSM actions the instance never comes Online",
                        if attached.is_empty() { "none".to_string() } else { attached.join(", ") }
                    ),
                    format!("`aws iam attach-role-policy --role-name {role} --policy-arn {SSM_CORE_POLICY}`, unless another policy of the role grants the same actions"),
                )
            }
        }
        Err(err) => Check::warn(
            check,
            format!(
                "role {role}: its policies cannot be listed: {}",
                sdk_error(&err)
            ),
            "the orchestrator needs iam:ListAttachedRolePolicies on the role (docs/IAM.md)",
        ),
    }
}
