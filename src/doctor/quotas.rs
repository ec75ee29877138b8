//! Which Service Quotas vCPU quota (service code `ec2`) an instance type draws from, on demand and on spot.
//!
//! From the EC2 User Guide: "On-Demand Instance quotas" (ec2-on-demand-instances.html#ec2-on-demand-instances-limits)
//! and "Spot Instance quotas" (using-spot-limits.html). Each quota caps the running vCPUs of some instance
//! families, named by the letters before the type's generation digit (`g` of `g5.2xlarge`, `inf` of `inf2.xlarge`).

use crate::plan_file::Market;

/// A vCPU quota: its Service Quotas code and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaCode {
    pub code: &'static str,
    pub name: &'static str,
}

/// family, on-demand quota, spot quota (None: AWS lists no spot quota for the family).
type Row = (&'static str, QuotaCode, Option<QuotaCode>);

const fn q(code: &'static str, name: &'static str) -> QuotaCode {
    QuotaCode { code, name }
}

/// The families outside the standard quota (`inf` and `dl` are not the standard `i` and `d`).
const FAMILIES: &[Row] = &[
    (
        "inf",
        q("L-1945791B", "Running On-Demand Inf instances"),
        Some(q("L-B5D1601B", "All Inf Spot Instance Requests")),
    ),
    (
        "trn",
        q("L-2C3B7624", "Running On-Demand Trn instances"),
        Some(q("L-6B0D517C", "All Trn Spot Instance Requests")),
    ),
    (
        "dl",
        q("L-6E869C2A", "Running On-Demand DL instances"),
        Some(q("L-85EED4F7", "All DL Spot Instance Requests")),
    ),
    (
        "vt",
        q("L-DB2E81BA", "Running On-Demand G and VT instances"),
        Some(q("L-3819A6DF", "All G and VT Spot Instance Requests")),
    ),
    (
        "hpc",
        q("L-F7808C92", "Running On-Demand HPC instances"),
        None,
    ),
    (
        "u-",
        q("L-43DA4232", "Running On-Demand High Memory instances"),
        None,
    ),
    (
        "g",
        q("L-DB2E81BA", "Running On-Demand G and VT instances"),
        Some(q("L-3819A6DF", "All G and VT Spot Instance Requests")),
    ),
    (
        "gr",
        q("L-DB2E81BA", "Running On-Demand G and VT instances"),
        Some(q("L-3819A6DF", "All G and VT Spot Instance Requests")),
    ),
    (
        "p",
        q("L-417A185B", "Running On-Demand P instances"),
        Some(q("L-7212CCBC", "All P Spot Instance Requests")),
    ),
    (
        "f",
        q("L-74FC7D96", "Running On-Demand F instances"),
        Some(q("L-88CF9481", "All F Spot Instance Requests")),
    ),
    (
        "x",
        q("L-7295265B", "Running On-Demand X instances"),
        Some(q("L-E3A00192", "All X Spot Instance Requests")),
    ),
];

const STANDARD_ON_DEMAND: QuotaCode = q(
    "L-1216C47A",
    "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
);
const STANDARD_SPOT: QuotaCode = q(
    "L-34B43A08",
    "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
);

/// The quota `instance_type` draws from in `market` (`spot` or `on-demand`), if AWS documents one.
pub fn quota_for(instance_type: &str, market: &str) -> Option<QuotaCode> {
    let family: String = instance_type
        .to_ascii_lowercase()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic() || *c == '-')
        .collect();
    let spot = market == "spot";
    if let Some((_, on_demand, on_spot)) = FAMILIES.iter().find(|(name, _, _)| *name == family) {
        return if spot { *on_spot } else { Some(*on_demand) };
    }
    // The standard families: one letter (`m5`), or one letter and attributes (`c7gn`, `r6id`, `m7i-flex`).
    let first = family.chars().next()?;
    "acdhimrtz".contains(first).then_some(if spot {
        STANDARD_SPOT
    } else {
        STANDARD_ON_DEMAND
    })
}

/// The markets a step launches in, in its order.
pub fn markets(market: Market) -> &'static [&'static str] {
    match market {
        Market::Spot => &["spot"],
        Market::OnDemand => &["on-demand"],
        Market::SpotThenOnDemand => &["spot", "on-demand"],
    }
}

#[cfg(test)]
mod tests {
    use super::quota_for;

    fn code(t: &str, market: &str) -> Option<&'static str> {
        quota_for(t, market).map(|q| q.code)
    }

    #[test]
    fn gpu_families_draw_from_the_g_and_p_quotas() {
        assert_eq!(code("g5.2xlarge", "on-demand"), Some("L-DB2E81BA"));
        assert_eq!(code("g6e.xlarge", "spot"), Some("L-3819A6DF"));
        assert_eq!(code("g4dn.xlarge", "on-demand"), Some("L-DB2E81BA"));
        assert_eq!(code("vt1.3xlarge", "on-demand"), Some("L-DB2E81BA"));
        assert_eq!(code("gr6.4xlarge", "on-demand"), Some("L-DB2E81BA"));
        assert_eq!(code("p4d.24xlarge", "on-demand"), Some("L-417A185B"));
        assert_eq!(code("p5.48xlarge", "spot"), Some("L-7212CCBC"));
    }

    #[test]
    fn multi_letter_families_are_not_read_as_standard() {
        assert_eq!(code("inf2.xlarge", "on-demand"), Some("L-1945791B"));
        assert_eq!(code("trn1.2xlarge", "spot"), Some("L-6B0D517C"));
        assert_eq!(code("dl1.24xlarge", "on-demand"), Some("L-6E869C2A"));
        assert_eq!(code("u-6tb1.metal", "on-demand"), Some("L-43DA4232"));
        assert_eq!(code("u-6tb1.metal", "spot"), None);
        assert_eq!(code("hpc7g.16xlarge", "on-demand"), Some("L-F7808C92"));
    }

    #[test]
    fn standard_families_with_attributes() {
        for t in [
            "m5.large",
            "c7gn.xlarge",
            "r6id.2xlarge",
            "t3.micro",
            "i4i.large",
            "m7i-flex.large",
        ] {
            assert_eq!(code(t, "on-demand"), Some("L-1216C47A"), "{t}");
            assert_eq!(code(t, "spot"), Some("L-34B43A08"), "{t}");
        }
        assert_eq!(code("x2idn.16xlarge", "on-demand"), Some("L-7295265B"));
        assert_eq!(code("f1.2xlarge", "spot"), Some("L-88CF9481"));
        assert_eq!(code("nonsense", "on-demand"), None);
    }
}
