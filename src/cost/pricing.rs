//! The price of each item: an instance step's types, an EBS volume by size and hours, and the note on a region
//! priced as another.

use super::Cost;
use crate::plan::{InstanceSpec, Plan, Target};
use crate::prices::{PriceTable, HOURS_PER_MONTH};

/// The dearest of an instance step's types (failover launches any of them): the price, and the type.
pub(super) fn dearest(
    table: &PriceTable,
    spec: &InstanceSpec,
    cost: &mut Cost,
) -> Option<(f64, String)> {
    let mut best: Option<(f64, String)> = None;
    for ty in &spec.instance_types {
        match table.instance_hour(ty) {
            Some(p) if best.as_ref().is_none_or(|(b, _)| p > *b) => best = Some((p, ty.clone())),
            Some(_) => {}
            None => cost.unknown.push(format!("no price for {ty}")),
        }
    }
    if spec.instance_types.len() > 1 {
        if let Some((_, ty)) = &best {
            cost.note(format!(
                "failover between {}: priced as the dearest, {ty}",
                spec.instance_types.join(", ")
            ));
        }
    }
    if spec.market == crate::plan_file::Market::Spot {
        cost.note(format!("spot: {}", table.spot));
    }
    best.filter(|_| cost.unknown.is_empty())
}

pub(super) fn ebs(
    table: &PriceTable,
    volume_type: &str,
    bytes: u64,
    hours: f64,
    cost: &mut Cost,
) -> Option<f64> {
    let gib = crate::target::aws::gib_ceil(bytes) as f64;
    match table.ebs_gb_month(volume_type) {
        Some(p) => Some(gib * p * hours / HOURS_PER_MONTH),
        None => {
            cost.unknown.push(format!("no price for EBS {volume_type}"));
            None
        }
    }
}

pub(super) fn region_note(plan: &Plan, table: &PriceTable, cost: &mut Cost) {
    let Target::Aws { region, .. } = &plan.target else {
        return;
    };
    match region.as_deref() {
        Some(r) if r == table.region => {}
        Some(r) => cost.note(format!(
            "region {r}: priced as {} ({})",
            table.region, table.other_regions
        )),
        None => cost.note(format!(
            "the plan names no region: priced as {}",
            table.region
        )),
    }
}

pub(super) fn gib(bytes: u64) -> i32 {
    crate::target::aws::gib_ceil(bytes)
}

/// An instance's root volume (gp3), if the plan sizes it.
pub(super) fn push_root(
    cost: &mut Cost,
    table: &PriceTable,
    step: &str,
    bytes: Option<u64>,
    hours: f64,
) {
    if let Some(bytes) = bytes {
        let usd = ebs(table, "gp3", bytes, hours, cost);
        cost.push(
            step,
            format!("root volume {} GiB gp3", gib(bytes)),
            hours,
            usd,
        );
    }
}

/// A data volume's line, priced by its type and size for `hours`.
pub(super) fn push_volume(
    cost: &mut Cost,
    table: &PriceTable,
    step: &str,
    v: &crate::plan::VolumeSpec,
    hours: f64,
) {
    let usd = ebs(table, &v.volume_type, v.size_bytes, hours, cost);
    cost.push(
        step,
        format!("volume {} GiB {}", gib(v.size_bytes), v.volume_type),
        hours,
        usd,
    );
}
