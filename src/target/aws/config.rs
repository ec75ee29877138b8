//! AWS SDK set-up shared by every AWS client: aws-config's default credential chain, the plan's region and
//! endpoint override (AWS_ENDPOINT_URL also works), and the SDK's standard retry mode.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::plan::Target;

/// Loads the SDK configuration for a target (local targets get the environment's defaults).
pub async fn sdk_config(target: &Target) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(5));
    if let Target::Aws {
        region,
        endpoint_url,
        profile,
    } = target
    {
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(profile) = profile {
            loader = loader.profile_name(profile.clone());
        }
    }
    loader.load().await
}

/// An S3 client. Path-style addressing when an endpoint is overridden (test endpoints have no bucket DNS).
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = config.endpoint_url().is_some();
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
