//! S3 objects that hold what a step printed (SSM command output, the heartbeat) are written by the SSM agent or
//! the host, not by sortie, so they cannot be scrubbed on the way in. Once a step has ended they are rewritten
//! scrubbed (only those that change), and a staged script, which holds the rendered secrets, is deleted.

use aws_sdk_s3::Client;

use crate::scrub::LineScrubber;

/// Rewrites every object under `prefix` whose text holds a known secret; errors are logged, not fatal: the
/// step's outcome does not depend on them.
pub async fn scrub_prefix(s3: &Client, bucket: &str, prefix: &str) {
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "cannot list s3://{bucket}/{prefix} to scrub secrets: {}",
                    crate::target::aws::error::AwsError::from_sdk("", &e).cause()
                );
                return;
            }
        };
        for key in page.contents().iter().filter_map(|o| o.key()) {
            scrub_object(s3, bucket, key).await;
        }
    }
}

/// Rewrites one object scrubbed, if scrubbing changes it.
pub async fn scrub_object(s3: &Client, bucket: &str, key: &str) {
    let Ok(got) = s3.get_object().bucket(bucket).key(key).send().await else {
        return;
    };
    let Ok(body) = got.body.collect().await else {
        return;
    };
    let bytes = body.into_bytes();
    let mut scrub = LineScrubber::new();
    let clean: Vec<u8> = bytes
        .split_inclusive(|&b| b == b'\n')
        .flat_map(|line| scrub.line(line))
        .collect();
    if clean[..] == bytes[..] {
        return;
    }
    if let Err(e) = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(clean.into())
        .send()
        .await
    {
        tracing::warn!(
            "cannot rewrite s3://{bucket}/{key} without its secrets: {}",
            crate::target::aws::error::AwsError::from_sdk("", &e).cause()
        );
    }
}

/// Deletes an object (a staged script the host has already copied); a missing one is fine.
pub async fn delete(s3: &Client, bucket: &str, key: &str) {
    let _ = s3.delete_object().bucket(bucket).key(key).send().await;
}
