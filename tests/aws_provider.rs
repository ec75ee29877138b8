//! The `aws` provider (src/target/aws/) against the real test endpoint (moto + sortie's SSM extension):
//! instances, capacity failover, idempotency by token tag, volumes, teardown.
//!
//! Each test starts its own endpoint, with the instance profile seeded and `--require-instance-profile` (so an
//! instance without a profile never gets Online, as on AWS), and runs a few scenarios on it in sequence: faults
//! and call counters are per server, so each scenario starts by clearing them, and uses its own run names.
//! Every test body is bounded by `BOUND`, and the provider's waits by `fast_poll()`.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Instance, InstanceAttributeName, Volume};
use serde_json::Value;
use sortie::plan::{InstanceSpec, VolumeSpec};
use sortie::plan_file::Market;
use sortie::target::aws::{
    AwsProvider, InstanceOutputs, PollConfig, ProvisionEvent, Tags, KIND_INSTANCE, KIND_VOLUME,
};

use crate::aws_endpoint::Endpoint;

const PROFILE: &str = "sortie-ssm";
const AL2023: &str = "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
const GIB: u64 = 1 << 30;
/// No test may take longer than this, whatever the endpoint does.
const BOUND: Duration = Duration::from_secs(50);

struct World {
    ep: Endpoint,
    provider: AwsProvider,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

fn fast_poll() -> PollConfig {
    PollConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(500),
        ssm_online_timeout: Duration::from_secs(10),
        state_timeout: Duration::from_secs(10),
    }
}

async fn world_with(poll: PollConfig) -> World {
    let ep = tokio::task::spawn_blocking(|| {
        Endpoint::start_with(&["--seed-profile", PROFILE, "--require-instance-profile"])
    })
    .await
    .expect("start the test endpoint");
    let config = ep.sdk_config().await;
    World {
        provider: AwsProvider::from_config(&config, poll),
        ec2: aws_sdk_ec2::Client::new(&config),
        ssm: aws_sdk_ssm::Client::new(&config),
        ep,
    }
}

async fn world() -> World {
    world_with(fast_poll()).await
}

/// Runs a test body, failing it (instead of hanging) after `BOUND`.
async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(BOUND, body)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {BOUND:?}"));
}

fn spec(types: &[&str]) -> InstanceSpec {
    InstanceSpec {
        instance_types: types.iter().map(|t| t.to_string()).collect(),
        image: Some(AL2023.into()),
        profile: Some(PROFILE.into()),
        market: Market::OnDemand,
        max_lifetime: Some(Duration::from_secs(2 * 3600)),
        ttl: None,
        subnets: Vec::new(),
        security_groups: Vec::new(),
        availability_zones: Vec::new(),
        root_size_bytes: Some(40 * GIB),
    }
}

fn tags(run: &str, step: &str) -> Tags {
    Tags {
        plan: "mistral-qlora".into(),
        run: run.into(),
        step: step.into(),
        token: format!("{run}.{step}.1"),
    }
}

fn volume_spec(size_bytes: u64) -> VolumeSpec {
    VolumeSpec {
        attach_to: "instance".into(),
        size_bytes,
        volume_type: "gp3".into(),
        iops: Some(4000),
        throughput: Some(250),
        mount: "/mnt/training".into(),
        keep: false,
    }
}

/// create_instance, collecting the events.
async fn create(
    w: &World,
    spec: &InstanceSpec,
    tags: &Tags,
) -> (sortie::error::Result<InstanceOutputs>, Vec<ProvisionEvent>) {
    let mut events = Vec::new();
    let result = w
        .provider
        .create_instance(spec, tags, &mut |e| events.push(e))
        .await;
    (result, events)
}

async fn describe_instance(w: &World, id: &str) -> Instance {
    let out = w
        .ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("describe instance");
    out.reservations()[0].instances()[0].clone()
}

async fn describe_volume(w: &World, id: &str) -> Option<Volume> {
    match w.ec2.describe_volumes().volume_ids(id).send().await {
        Ok(out) => out.volumes().first().cloned(),
        Err(e) => {
            let text = aws_sdk_ec2::error::DisplayErrorContext(&e).to_string();
            assert!(
                text.contains("InvalidVolume.NotFound"),
                "describe volume: {text}"
            );
            None
        }
    }
}

/// Instances tagged with the run, in any state but terminated.
async fn live_instances_of_run(w: &World, run: &str) -> Vec<String> {
    let out = w
        .ec2
        .describe_instances()
        .filters(Filter::builder().name("tag:sortie:run").values(run).build())
        .send()
        .await
        .expect("describe instances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("terminated"))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect()
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn calls(ep: &Endpoint, op: &str) -> u64 {
    ep.calls().get(op).and_then(Value::as_u64).unwrap_or(0)
}

/// Disarms every fault and zeroes the call counters (state stays: each scenario uses its own run names).
fn clear(ep: &Endpoint) {
    let (status, body) = ep.http("DELETE", "/_sortie/faults", None);
    assert!(status < 300, "clear faults: {status} {body}");
    reset_calls(ep);
}

fn reset_calls(ep: &Endpoint) {
    let (status, body) = ep.http("DELETE", "/_sortie/calls", None);
    assert!(status < 300, "reset calls: {status} {body}");
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn ice_fault(matching: &str) -> String {
    format!(
        r#"{{"action": "RunInstances", "match": {matching},
            "error": {{"code": "InsufficientInstanceCapacity",
                       "message": "We currently do not have sufficient capacity in the Availability Zone you requested.",
                       "status": 500}},
            "times": -1}}"#
    )
}

async fn instance_is_running_online_tagged_and_hardened(w: &World) {
    clear(&w.ep);
    let tags = tags("run-hardened", "instance");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (out, events) = create(w, &spec(&["g5.2xlarge", "g6.2xlarge"]), &tags).await;
    let out = out.expect("create instance");
    assert!(events.is_empty(), "{events:?}");
    assert!(out.instance_id.starts_with("i-"), "{out:?}");
    assert_eq!(out.instance_type, "g5.2xlarge");
    assert_eq!(out.market, "on-demand");
    // No zone in the spec: the first zone offering the type, in order.
    assert_eq!(out.availability_zone, "us-east-1a");
    assert!(!out.private_ip.is_empty(), "{out:?}");

    let i = describe_instance(w, &out.instance_id).await;
    assert_eq!(
        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("running")
    );
    assert_eq!(i.private_ip_address(), Some(out.private_ip.as_str()));
    // The five tags.
    assert_eq!(
        tag(i.tags(), "Name"),
        Some("mistral-qlora/run-hardened/instance")
    );
    assert_eq!(tag(i.tags(), "sortie:plan"), Some("mistral-qlora"));
    assert_eq!(tag(i.tags(), "sortie:run"), Some("run-hardened"));
    assert_eq!(tag(i.tags(), "sortie:step"), Some("instance"));
    assert_eq!(
        tag(i.tags(), "sortie:token"),
        Some("run-hardened.instance.1")
    );
    // IMDSv2 only.
    let md = i.metadata_options().expect("metadata options");
    assert_eq!(md.http_tokens().map(|t| t.as_str()), Some("required"));
    assert_eq!(md.http_endpoint().map(|t| t.as_str()), Some("enabled"));
    // The instance profile.
    let arn = i
        .iam_instance_profile()
        .and_then(|p| p.arn())
        .unwrap_or_default();
    assert!(
        arn.ends_with(&format!("instance-profile/{PROFILE}")),
        "{arn}"
    );
    // The root volume: at the image's root device, encrypted gp3 of the given size, tagged too.
    let root_name = i.root_device_name().expect("root device name").to_string();
    assert_eq!(root_name, "/dev/xvda", "al2023's root device");
    let root_id = i
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root_name.as_str()))
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_id())
        .expect("root volume mapped");
    let root = describe_volume(w, root_id).await.expect("root volume");
    assert_eq!(root.encrypted(), Some(true));
    assert_eq!(root.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(root.size(), Some(40));
    assert_eq!(tag(root.tags(), "sortie:run"), Some("run-hardened"));
    // Shutdown from inside terminates.
    let attr = w
        .ec2
        .describe_instance_attribute()
        .instance_id(&out.instance_id)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .expect("shutdown behaviour");
    assert_eq!(
        attr.instance_initiated_shutdown_behavior()
            .and_then(|v| v.value()),
        Some("terminate")
    );
    // The user data arms the lifetime timer at launch + 2h.
    let attr = w
        .ec2
        .describe_instance_attribute()
        .instance_id(&out.instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .expect("user data");
    let user_data = String::from_utf8(base64_decode(
        attr.user_data()
            .and_then(|v| v.value())
            .expect("user data set"),
    ))
    .expect("utf-8 user data");
    assert!(user_data.starts_with("#!/bin/sh\n"), "{user_data}");
    assert!(
        user_data.contains("systemd-run --unit=sortie-max-lifetime"),
        "{user_data}"
    );
    assert!(user_data.contains("shutdown -h now"), "{user_data}");
    let deadline: u64 = user_data
        .lines()
        .find_map(|l| l.strip_prefix("deadline="))
        .and_then(|d| d.parse().ok())
        .expect("deadline= line");
    assert!(
        (before + 7200..=before + 7200 + 60).contains(&deadline),
        "deadline {deadline} is not launch + 2h ({before} + 7200)"
    );
    // SSM sees it Online (the provider waited for that).
    let info = w
        .ssm
        .describe_instance_information()
        .filters(
            aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .values(&out.instance_id)
                .build()
                .expect("filter"),
        )
        .send()
        .await
        .expect("describe instance information");
    assert_eq!(
        info.instance_information_list()[0]
            .ping_status()
            .map(|p| p.as_str()),
        Some("Online")
    );
    // Found by its token.
    assert_eq!(
        w.provider
            .find_instance_by_token("run-hardened.instance.1")
            .await
            .expect("find"),
        Some(out.instance_id.clone())
    );
    assert_eq!(
        w.provider
            .find_instance_by_token("other")
            .await
            .expect("find"),
        None
    );
}

async fn capacity_failover_moves_to_the_next_type(w: &World) {
    clear(&w.ep);
    w.ep.add_fault(&ice_fault(r#"{"InstanceType": "g5.2xlarge"}"#));
    let (out, events) = create(
        w,
        &spec(&["g5.2xlarge", "g6.2xlarge"]),
        &tags("run-ice", "instance"),
    )
    .await;
    let out = out.expect("create instance after failover");
    assert_eq!(out.instance_type, "g6.2xlarge");
    assert_eq!(out.availability_zone, "us-east-1a");
    // Every zone that offers g5.2xlarge was tried, in order, once each: the SDK does not retry a
    // capacity error (it would otherwise spend 3 attempts with backoff on each).
    let zones: Vec<Option<&str>> = events
        .iter()
        .map(
            |ProvisionEvent::Failover {
                 availability_zone, ..
             }| availability_zone.as_deref(),
        )
        .collect();
    assert_eq!(
        zones,
        [
            "us-east-1a",
            "us-east-1b",
            "us-east-1c",
            "us-east-1d",
            "us-east-1f"
        ]
        .map(Some)
    );
    for ProvisionEvent::Failover {
        instance_type,
        market,
        code,
        message,
        ..
    } in &events
    {
        assert_eq!(instance_type, "g5.2xlarge");
        assert_eq!(market, "on-demand");
        assert_eq!(code, "InsufficientInstanceCapacity");
        assert!(message.contains("sufficient capacity"), "{message}");
    }
    assert_eq!(calls(&w.ep, "ec2:RunInstances"), events.len() as u64 + 1);
    assert_eq!(
        live_instances_of_run(w, "run-ice").await,
        vec![out.instance_id]
    );
}

async fn capacity_failover_across_the_given_zones(w: &World) {
    clear(&w.ep);
    w.ep.add_fault(&ice_fault(
        r#"{"InstanceType": "g5.2xlarge", "AvailabilityZone": "us-east-1c"}"#,
    ));
    let mut spec = spec(&["g5.2xlarge", "g6.2xlarge"]);
    spec.availability_zones = vec!["us-east-1c".into(), "us-east-1b".into()];
    let (out, events) = create(w, &spec, &tags("run-zones", "instance")).await;
    let out = out.expect("create instance");
    assert_eq!(
        (out.instance_type.as_str(), out.availability_zone.as_str()),
        ("g5.2xlarge", "us-east-1b")
    );
    assert_eq!(
        events,
        vec![ProvisionEvent::Failover {
            instance_type: "g5.2xlarge".into(),
            availability_zone: Some("us-east-1c".into()),
            subnet: None,
            market: "on-demand".into(),
            code: "InsufficientInstanceCapacity".into(),
            message: "We currently do not have sufficient capacity in the Availability Zone you requested."
                .into(),
        }]
    );
    // The step's zones are used as given: no offerings lookup.
    assert_eq!(calls(&w.ep, "ec2:DescribeInstanceTypeOfferings"), 0);
}

async fn spot_then_on_demand_falls_back_after_every_spot_type(w: &World) {
    clear(&w.ep);
    w.ep.add_fault(
        r#"{"action": "RunInstances", "match": {"InstanceMarketOptions.MarketType": "spot"},
            "error": {"code": "MaxSpotInstanceCountExceeded", "message": "Max spot instance count exceeded"},
            "times": -1}"#,
    );
    let mut spec = spec(&["g5.2xlarge", "g6.2xlarge"]);
    spec.market = Market::SpotThenOnDemand;
    let (out, events) = create(w, &spec, &tags("run-spot", "instance")).await;
    let out = out.expect("create instance");
    assert_eq!(out.market, "on-demand");
    assert_eq!(
        out.instance_type, "g5.2xlarge",
        "on-demand starts again at the first type"
    );
    // A spot quota is not a zone's problem: one attempt per type, then on to the next type.
    let tried: Vec<(&str, &str, &str)> = events
        .iter()
        .map(
            |ProvisionEvent::Failover {
                 instance_type,
                 market,
                 code,
                 ..
             }| { (instance_type.as_str(), market.as_str(), code.as_str()) },
        )
        .collect();
    assert_eq!(
        tried,
        vec![
            ("g5.2xlarge", "spot", "MaxSpotInstanceCountExceeded"),
            ("g6.2xlarge", "spot", "MaxSpotInstanceCountExceeded"),
        ]
    );
    let i = describe_instance(w, &out.instance_id).await;
    assert_eq!(i.instance_lifecycle(), None, "an on-demand instance");

    // Spot alone, with capacity: a spot instance.
    w.ep.http("DELETE", "/_sortie/faults", None);
    spec.market = Market::Spot;
    let (out, events) = create(w, &spec, &tags("run-spot", "instance-2")).await;
    let out = out.expect("create spot instance");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(out.market, "spot");
    let i = describe_instance(w, &out.instance_id).await;
    assert_eq!(i.instance_lifecycle().map(|l| l.as_str()), Some("spot"));
}

async fn no_capacity_anywhere_names_every_attempt(w: &World) {
    clear(&w.ep);
    w.ep.add_fault(&ice_fault("{}"));
    let mut spec = spec(&["g5.2xlarge", "g6.2xlarge"]);
    spec.availability_zones = vec!["us-east-1a".into(), "us-east-1b".into()];
    let (out, events) = create(w, &spec, &tags("run-none", "instance")).await;
    let err = out.expect_err("no capacity anywhere").render();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        err.contains("no capacity for instance step instance"),
        "{err}"
    );
    for slot in [
        "g5.2xlarge in us-east-1a (on-demand): InsufficientInstanceCapacity",
        "g5.2xlarge in us-east-1b (on-demand): InsufficientInstanceCapacity",
        "g6.2xlarge in us-east-1a (on-demand): InsufficientInstanceCapacity",
        "g6.2xlarge in us-east-1b (on-demand): InsufficientInstanceCapacity",
    ] {
        assert!(err.contains(slot), "missing {slot:?} in:\n{err}");
    }
    assert!(err.contains("help:"), "{err}");
    assert!(live_instances_of_run(w, "run-none").await.is_empty());
}

async fn other_launch_errors_do_not_fail_over(w: &World) {
    clear(&w.ep);
    let mut spec = spec(&["g5.2xlarge", "g6.2xlarge"]);
    spec.profile = Some("no-such-profile".into());
    let (out, events) = create(w, &spec, &tags("run-bad-profile", "instance")).await;
    let err = out.expect_err("an unknown instance profile").render();
    assert!(events.is_empty(), "{events:?}");
    assert!(
        err.contains("could not launch g5.2xlarge in us-east-1a (on-demand)"),
        "{err}"
    );
    assert!(err.contains("NoSuchEntity"), "{err}");
    assert!(err.contains("not a capacity error"), "{err}");
    assert_eq!(calls(&w.ep, "ec2:RunInstances"), 1);
}

async fn create_instance_is_idempotent_by_token(w: &World) {
    clear(&w.ep);
    let spec = spec(&["g5.2xlarge"]);
    let tags = tags("run-idem", "instance");
    let first = create(w, &spec, &tags).await.0.expect("first create");
    // A second apply (another process: a new SDK ClientToken, which moto ignores anyway) adopts it.
    let second = create(w, &spec, &tags).await.0.expect("second create");
    assert_eq!(first, second);
    assert_eq!(calls(&w.ep, "ec2:RunInstances"), 1);
    assert_eq!(
        live_instances_of_run(w, "run-idem").await,
        vec![first.instance_id.clone()]
    );
    let resources = w
        .provider
        .resources_of_run("run-idem")
        .await
        .expect("resources");
    let instances: Vec<_> = resources
        .iter()
        .filter(|(k, _)| k == KIND_INSTANCE)
        .collect();
    assert_eq!(
        instances,
        vec![&(KIND_INSTANCE.to_string(), first.instance_id.clone())]
    );

    // Another attempt (a new token) is a new instance; a terminated one is never adopted.
    w.provider
        .terminate_instance(&first.instance_id)
        .await
        .expect("terminate");
    assert_eq!(
        w.provider
            .find_instance_by_token(&tags.token)
            .await
            .expect("find"),
        None
    );
    let third = create(w, &spec, &tags)
        .await
        .0
        .expect("create after terminate");
    assert_ne!(third.instance_id, first.instance_id);

    // A stopped instance with the token is adopted, and apply says what to do rather than launching another.
    w.ec2
        .stop_instances()
        .instance_ids(&third.instance_id)
        .send()
        .await
        .expect("stop by hand");
    let err = create(w, &spec, &tags)
        .await
        .0
        .expect_err("a stopped instance is not usable")
        .render();
    assert!(
        err.contains(&format!("instance {} is stopped", third.instance_id)),
        "{err}"
    );
    assert!(err.contains("start-instances"), "{err}");
    assert_eq!(
        calls(&w.ep, "ec2:RunInstances"),
        2,
        "the first and the third"
    );
}

async fn volume_create_attach_adopt_delete(w: &World) {
    clear(&w.ep);
    let instance = create(w, &spec(&["g5.2xlarge"]), &tags("run-vol", "instance"))
        .await
        .0
        .expect("create instance");
    let vtags = tags("run-vol", "volume");
    // 299.5 GiB rounds up to 300.
    let spec = volume_spec(300 * GIB - GIB / 2);
    let vol = w
        .provider
        .create_volume(
            &spec,
            &instance.instance_id,
            &instance.availability_zone,
            &vtags,
        )
        .await
        .expect("create volume");
    assert_eq!(vol.device, "/dev/sdf");
    let v = describe_volume(w, &vol.volume_id)
        .await
        .expect("volume exists");
    assert_eq!(v.size(), Some(300));
    assert_eq!(v.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(v.iops(), Some(4000));
    assert_eq!(v.encrypted(), Some(true));
    assert_eq!(
        v.availability_zone(),
        Some(instance.availability_zone.as_str())
    );
    assert_eq!(v.state().map(|s| s.as_str()), Some("in-use"));
    assert_eq!(v.attachments().len(), 1);
    assert_eq!(
        v.attachments()[0].instance_id(),
        Some(instance.instance_id.as_str())
    );
    assert_eq!(v.attachments()[0].device(), Some("/dev/sdf"));
    assert_eq!(tag(v.tags(), "sortie:token"), Some("run-vol.volume.1"));
    assert_eq!(tag(v.tags(), "Name"), Some("mistral-qlora/run-vol/volume"));
    // The fake host sees it as a Nitro instance would.
    let serial = vol.volume_id.replace('-', "");
    let by_id =
        w.ep.sandbox_root()
            .join(&instance.instance_id)
            .join(format!(
                "dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{serial}"
            ));
    assert!(by_id.exists(), "{} missing", by_id.display());

    // Again with the same token: adopted as it is, nothing created or attached twice.
    let again = w
        .provider
        .create_volume(
            &spec,
            &instance.instance_id,
            &instance.availability_zone,
            &vtags,
        )
        .await
        .expect("create volume again");
    assert_eq!(again, vol);
    assert_eq!(calls(&w.ep, "ec2:CreateVolume"), 1);
    assert_eq!(calls(&w.ep, "ec2:AttachVolume"), 1);

    // A second volume takes the next free device name.
    let second = w
        .provider
        .create_volume(
            &volume_spec(GIB),
            &instance.instance_id,
            &instance.availability_zone,
            &tags("run-vol", "scratch"),
        )
        .await
        .expect("second volume");
    assert_eq!(second.device, "/dev/sdg");
    assert_ne!(second.volume_id, vol.volume_id);

    // A volume created for this token but left detached (a crash between create and attach) is attached.
    w.ec2
        .detach_volume()
        .volume_id(&second.volume_id)
        .instance_id(&instance.instance_id)
        .device(&second.device)
        .send()
        .await
        .expect("detach by hand");
    let reattached = w
        .provider
        .create_volume(
            &volume_spec(GIB),
            &instance.instance_id,
            &instance.availability_zone,
            &tags("run-vol", "scratch"),
        )
        .await
        .expect("adopt a detached volume");
    assert_eq!(reattached.volume_id, second.volume_id);

    // Delete: detached, deleted, gone; and again is fine.
    w.provider
        .delete_volume(&vol.volume_id)
        .await
        .expect("delete volume");
    assert!(describe_volume(w, &vol.volume_id)
        .await
        .is_none_or(|v| v.state().map(|s| s.as_str()) == Some("deleted")));
    w.provider
        .delete_volume(&vol.volume_id)
        .await
        .expect("delete volume again");
    w.provider
        .delete_volume(&second.volume_id)
        .await
        .expect("delete second volume");
    // After the volume steps are gone, only the instance (and its root volume) is left.
    let left = w
        .provider
        .resources_of_run("run-vol")
        .await
        .expect("resources");
    assert!(
        left.contains(&(KIND_INSTANCE.to_string(), instance.instance_id.clone())),
        "{left:?}"
    );
    assert!(
        !left
            .iter()
            .any(|(_, id)| id == &vol.volume_id || id == &second.volume_id),
        "{left:?}"
    );
    w.provider
        .terminate_instance(&instance.instance_id)
        .await
        .expect("terminate");
    assert_eq!(
        w.provider
            .resources_of_run("run-vol")
            .await
            .expect("resources"),
        vec![]
    );
}

async fn volume_in_another_zone_is_refused(w: &World) {
    clear(&w.ep);
    let instance = create(w, &spec(&["g5.2xlarge"]), &tags("run-az", "instance"))
        .await
        .0
        .expect("create instance");
    let vtags = tags("run-az", "volume");
    w.ec2
        .create_volume()
        .availability_zone("us-east-1d")
        .size(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Volume)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("sortie:token")
                        .value(&vtags.token)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("a stray volume with the token");
    let err = w
        .provider
        .create_volume(
            &volume_spec(GIB),
            &instance.instance_id,
            &instance.availability_zone,
            &vtags,
        )
        .await
        .expect_err("a volume in another zone cannot be attached")
        .render();
    assert!(err.contains("is in us-east-1d, but instance"), "{err}");
    assert_eq!(calls(&w.ep, "ec2:AttachVolume"), 0);
}

async fn ssm_online_timeout_names_the_usual_causes(w: &World) {
    let mut poll = fast_poll();
    poll.ssm_online_timeout = Duration::from_secs(1);
    clear(&w.ep);
    let provider = AwsProvider::from_config(&w.ep.sdk_config().await, poll);
    // No instance profile: with --require-instance-profile, SSM never sees the instance (as on AWS).
    let mut spec = spec(&["g5.2xlarge"]);
    spec.profile = None;
    let started = std::time::Instant::now();
    let out = provider
        .create_instance(&spec, &tags("run-offline", "instance"), &mut |_| {})
        .await;
    let err = out.expect_err("never Online").render();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the wait is bounded"
    );
    assert!(err.contains("Online in SSM"), "{err}");
    assert!(err.contains("no instance profile"), "{err}");
    assert!(err.contains("AmazonSSMManagedInstanceCore"), "{err}");
    assert!(err.contains("NAT gateway"), "{err}");
    assert!(err.contains("VPC interface endpoints"), "{err}");
    let polls = calls(&w.ep, "ssm:DescribeInstanceInformation");
    assert!(
        (2..=8).contains(&polls),
        "backoff from 100 ms to 500 ms within 1 s: {polls} polls"
    );
}

async fn terminate_is_idempotent(w: &World) {
    clear(&w.ep);
    let out = create(w, &spec(&["g5.2xlarge"]), &tags("run-term", "instance"))
        .await
        .0
        .expect("create instance");
    w.provider
        .terminate_instance(&out.instance_id)
        .await
        .expect("terminate");
    let i = describe_instance(w, &out.instance_id).await;
    assert_eq!(
        i.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("terminated")
    );
    w.provider
        .terminate_instance(&out.instance_id)
        .await
        .expect("terminate again");
    w.provider
        .terminate_instance("i-0123456789abcdef0")
        .await
        .expect("terminate an instance that never existed");
    assert_eq!(
        w.provider
            .resources_of_run("run-term")
            .await
            .expect("resources"),
        vec![]
    );
}

/// One create_instance + create_volume + delete_volume + terminate_instance: the run's resources are listed
/// while they live and nothing is left afterwards; the API calls are counted (for docs/BENCHMARKS.md). moto makes
/// every state final at once, so each wait is one poll.
async fn lifecycle_leaves_nothing_and_counts_calls(w: &World) {
    clear(&w.ep);
    let run = "run-count";
    let instance = create(
        w,
        &spec(&["g5.2xlarge", "g6.2xlarge"]),
        &tags(run, "instance"),
    )
    .await
    .0
    .expect("create instance");
    let created = w.ep.calls();
    let vol = w
        .provider
        .create_volume(
            &volume_spec(100 * GIB),
            &instance.instance_id,
            &instance.availability_zone,
            &tags(run, "volume"),
        )
        .await
        .expect("create volume");
    let attached = w.ep.calls();
    let during = w.provider.resources_of_run(run).await.expect("resources");
    reset_calls(&w.ep);
    w.provider
        .delete_volume(&vol.volume_id)
        .await
        .expect("delete volume");
    w.provider
        .terminate_instance(&instance.instance_id)
        .await
        .expect("terminate");
    let teardown = w.ep.calls();
    eprintln!(
        "calls of create_instance: {created}\ncalls of create_instance + create_volume: {attached}\n\
         calls of delete_volume + terminate_instance: {teardown}"
    );

    assert!(
        during.contains(&(KIND_INSTANCE.to_string(), instance.instance_id.clone())),
        "{during:?}"
    );
    assert!(
        during.contains(&(KIND_VOLUME.to_string(), vol.volume_id.clone())),
        "{during:?}"
    );
    assert_eq!(
        w.provider.resources_of_run(run).await.expect("resources"),
        vec![]
    );
    assert!(live_instances_of_run(w, run).await.is_empty());

    let expected_create = serde_json::json!({
        "ec2:DescribeInstances": 2,             // the token lookup, running
        "ssm:GetParameter": 1,                  // the image
        "ec2:DescribeImages": 1,                // its root device name
        "ec2:DescribeInstanceTypeOfferings": 1, // the zones of the first type
        "ec2:RunInstances": 1,
        "ssm:DescribeInstanceInformation": 1,   // Online
    });
    assert_eq!(created, expected_create);
    let expected_volume = serde_json::json!({
        "ec2:DescribeInstances": 2 + 1,         // + the free device name
        "ssm:GetParameter": 1,
        "ec2:DescribeImages": 1,
        "ec2:DescribeInstanceTypeOfferings": 1,
        "ec2:RunInstances": 1,
        "ssm:DescribeInstanceInformation": 1,
        "ec2:DescribeVolumes": 3,               // the token lookup, available, in-use
        "ec2:CreateVolume": 1,
        "ec2:AttachVolume": 1,
    });
    assert_eq!(attached, expected_volume);
    let expected_teardown = serde_json::json!({
        "ec2:DescribeVolumes": 3,               // the volume, detached, gone
        "ec2:DetachVolume": 1,
        "ec2:DeleteVolume": 1,
        "ec2:TerminateInstances": 1,
        "ec2:DescribeInstances": 1,             // terminated
    });
    assert_eq!(teardown, expected_teardown);
}

// ---- the tests: one endpoint each, scenarios in sequence (an endpoint costs ~3 s of CPU to start) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_aws_instance_running_online_tagged_hardened_idempotent() {
    bounded(async {
        let w = world().await;
        instance_is_running_online_tagged_and_hardened(&w).await;
        create_instance_is_idempotent_by_token(&w).await;
        terminate_is_idempotent(&w).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_aws_capacity_failover_across_types_and_zones() {
    bounded(async {
        let w = world().await;
        capacity_failover_moves_to_the_next_type(&w).await;
        capacity_failover_across_the_given_zones(&w).await;
        no_capacity_anywhere_names_every_attempt(&w).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_aws_market_failover_and_launch_errors() {
    bounded(async {
        let w = world().await;
        spot_then_on_demand_falls_back_after_every_spot_type(&w).await;
        other_launch_errors_do_not_fail_over(&w).await;
        ssm_online_timeout_names_the_usual_causes(&w).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_aws_volume_create_attach_adopt_delete() {
    bounded(async {
        let w = world().await;
        volume_create_attach_adopt_delete(&w).await;
        volume_in_another_zone_is_refused(&w).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_aws_lifecycle_leaves_nothing_and_counts_calls() {
    bounded(async {
        let w = world().await;
        lifecycle_leaves_nothing_and_counts_calls(&w).await;
    })
    .await;
}
