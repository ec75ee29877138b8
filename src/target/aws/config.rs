//! AWS SDK set-up shared by every AWS client: aws-config's default credential chain, the plan's region and
//! endpoint override (AWS_ENDPOINT_URL also works), and the SDK's standard retry mode.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};

use crate::plan::Target;

/// The SDK configuration of a target, loaded once per process and shared: every client made from it shares its
/// credentials cache and connection pool, so a step does not reload credentials (a profile's SSO or process
/// provider can take seconds) or open new connections. Local targets get the environment's defaults.
pub async fn sdk_config(target: &Target) -> SdkConfig {
    type Key = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    static LOADED: std::sync::Mutex<Vec<(Key, SdkConfig)>> = std::sync::Mutex::new(Vec::new());
    let key: Key = match target {
        Target::Aws {
            region,
            endpoint_url,
            profile,
        } => (region.clone(), endpoint_url.clone(), profile.clone(), None),
        Target::Local { .. } => (None, None, None, None),
    };
    // AWS_ENDPOINT_URL is read by the loader: a process that changes it (tests) gets a fresh configuration.
    let key = (key.0, key.1, key.2, std::env::var("AWS_ENDPOINT_URL").ok());
    let cached = |loaded: &Vec<(Key, SdkConfig)>| {
        loaded
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.clone())
    };
    if let Some(config) = cached(&LOADED.lock().unwrap_or_else(|e| e.into_inner())) {
        return config;
    }
    let config = load(target).await;
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    // Two tasks may have loaded it at once: the first stored wins, so every client shares one.
    if let Some(first) = cached(&loaded) {
        return first;
    }
    loaded.push((key, config.clone()));
    config
}

async fn load(target: &Target) -> SdkConfig {
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
