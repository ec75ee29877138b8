//! What sortie's tags find: every live resource of a run, or of any tag (teardown's last check, `plan gc`).

use aws_sdk_ec2::types::{Filter, Tag};

use super::*;
use crate::error::Result;

impl AwsProvider {
    /// Every instance and volume tagged `sortie:run=<run>` that is not terminated or deleted, as
    /// `(kind, id)` with kind [`KIND_INSTANCE`] or [`KIND_VOLUME`]. Instances come first. A live instance's root
    /// volume is listed too (it carries the instance step's tags): terminate instances before deleting volumes.
    pub async fn resources_of_run(&self, run: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .resources_tagged(TAG_RUN, run)
            .await?
            .into_iter()
            .map(|r| (r.kind, r.id))
            .collect())
    }

    /// Every live instance and existing volume whose tag `key` is `value`, with the run it is tagged with. A
    /// `deleting` volume is not listed: it goes by itself (a terminated instance's root volume stays `deleting`
    /// for a while), so it is neither a leak nor garbage.
    pub async fn resources_tagged(&self, key: &str, value: &str) -> Result<Vec<TaggedResource>> {
        let run_of = |tags: &[Tag]| {
            tags.iter()
                .find(|t| t.key() == Some(TAG_RUN))
                .and_then(|t| t.value())
                .unwrap_or_default()
                .to_string()
        };
        let mut found = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(filter(&format!("tag:{key}"), [value]))
            .filters(filter(
                "instance-state-name",
                ["pending", "running", "shutting-down", "stopping", "stopped"],
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                aws_error(
                    &format!("could not list the instances tagged {key}={value}"),
                    &err,
                    "check ec2:DescribeInstances",
                )
            })?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    if let Some(id) = instance.instance_id() {
                        found.push(TaggedResource {
                            kind: KIND_INSTANCE.to_string(),
                            id: id.to_string(),
                            run: run_of(instance.tags()),
                        });
                    }
                }
            }
        }
        let mut pages = self
            .ec2
            .describe_volumes()
            .filters(filter(&format!("tag:{key}"), [value]))
            .filters(filter(
                "status",
                ["creating", "available", "in-use", "error"],
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                aws_error(
                    &format!("could not list the volumes tagged {key}={value}"),
                    &err,
                    "check ec2:DescribeVolumes",
                )
            })?;
            for volume in page.volumes() {
                if let Some(id) = volume.volume_id() {
                    found.push(TaggedResource {
                        kind: KIND_VOLUME.to_string(),
                        id: id.to_string(),
                        run: run_of(volume.tags()),
                    });
                }
            }
        }
        Ok(found)
    }
}

pub(crate) fn filter<'a>(name: &str, values: impl IntoIterator<Item = &'a str>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().map(str::to_string).collect()))
        .build()
}
