//! The dated AWS price table (`prices/aws.yaml`, built into the binary): on-demand USD per instance-hour and
//! EBS USD per GB-month, for one region.

use std::sync::OnceLock;

use indexmap::IndexMap;
use serde::Deserialize;

/// Hours in the month that EBS GB-month prices are quoted for (AWS's own convention).
pub const HOURS_PER_MONTH: f64 = 730.0;

const SOURCE: &str = include_str!("../prices/aws.yaml");

#[derive(Debug, Clone, Deserialize)]
pub struct PriceTable {
    pub as_of: String,
    pub region: String,
    /// The file's provenance, which its tests hold it to (USD, with sources); the estimate does not read them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub currency: String,
    #[cfg_attr(not(test), allow(dead_code))]
    pub sources: Vec<String>,
    pub spot: String,
    pub other_regions: String,
    /// Instance type → on-demand USD per hour.
    pub instances: IndexMap<String, f64>,
    /// EBS volume type → USD per GB-month.
    pub ebs_gb_month: IndexMap<String, f64>,
}

impl PriceTable {
    pub fn instance_hour(&self, instance_type: &str) -> Option<f64> {
        self.instances.get(instance_type).copied()
    }

    pub fn ebs_gb_month(&self, volume_type: &str) -> Option<f64> {
        self.ebs_gb_month.get(volume_type).copied()
    }
}

/// The built-in table. It is parsed once; the unit tests below prove that it parses, so the `expect` cannot
/// fire in a released binary.
pub fn table() -> &'static PriceTable {
    static TABLE: OnceLock<PriceTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        crate::yaml::from_str(SOURCE).expect("prices/aws.yaml is valid (unit-tested)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_and_is_dated() {
        let t = table();
        assert_eq!(t.region, "us-east-1");
        assert_eq!(t.currency, "USD");
        let date = chrono_like(&t.as_of);
        assert!(date.is_some(), "as_of is a YYYY-MM-DD date: {}", t.as_of);
        assert!(t
            .sources
            .iter()
            .any(|s| s.starts_with("https://aws.amazon.com/ec2/pricing")));
        assert!(t.instances.values().all(|p| p.is_finite() && *p > 0.0));
        assert_eq!(t.instance_hour("g5.2xlarge"), Some(1.212));
        assert_eq!(t.ebs_gb_month("gp3"), Some(0.08));
        assert_eq!(t.instance_hour("x9.nonexistent"), None);
    }

    fn chrono_like(date: &str) -> Option<(u32, u32, u32)> {
        let mut parts = date.split('-').map(|p| p.parse::<u32>().ok());
        let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
        ((2000..2100).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d))
            .then_some((y, m, d))
    }

    /// Every instance type named in the repository's plans and examples has a price: an estimate of them is
    /// never "unknown".
    #[test]
    fn every_instance_type_in_plans_and_examples_has_a_price() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seen = Vec::new();
        for dir in ["plans", "examples"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("dir").flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("read");
                for line in text.lines() {
                    let Some((_, list)) = line.split_once("instance_types:") else {
                        continue;
                    };
                    let list = list.split('#').next().unwrap_or("");
                    for ty in list
                        .trim()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .split(',')
                    {
                        let ty = ty.trim().trim_matches(['"', '\'']);
                        if !ty.is_empty() {
                            seen.push((path.display().to_string(), ty.to_string()));
                        }
                    }
                }
            }
        }
        assert!(
            seen.iter().any(|(_, t)| t == "g5.2xlarge"),
            "found the plan's types: {seen:?}"
        );
        for (file, ty) in &seen {
            assert!(
                table().instance_hour(ty).is_some(),
                "{file}: no price for {ty} in prices/aws.yaml"
            );
        }
        for ty in [
            "g5.xlarge",
            "g5.4xlarge",
            "g6.xlarge",
            "g4dn.xlarge",
            "g4dn.2xlarge",
            "t3.micro",
        ] {
            assert!(table().instance_hour(ty).is_some(), "no price for {ty}");
        }
    }
}
