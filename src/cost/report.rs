//! How costs are shown: `plan preview`'s itemised estimate, `plan status`'s line and JSON, and dollar amounts.

use std::fmt::Write as _;

use super::{estimate, Cost};
use crate::plan::Plan;
use crate::prices;

/// `$12.34`; amounts under a cent keep their first significant digits (`$0.000012`).
pub fn usd(amount: f64) -> String {
    if amount == 0.0 || amount.abs() >= 0.01 {
        format!("${amount:.2}")
    } else {
        let text = format!("{amount:.8}");
        format!("${}", text.trim_end_matches('0'))
    }
}

fn hours_text(hours: f64) -> String {
    let secs = (hours * 3600.0).round() as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The estimate, as `plan preview` shows it (and `plan apply` before it asks).
pub fn estimate_text(plan: &Plan, cost: &Cost) -> String {
    let table = prices::table();
    let mut out = format!(
        "estimated cost (upper bound; on-demand {} prices of {}):\n",
        table.region, table.as_of
    );
    let width = cost
        .lines
        .iter()
        .map(|l| l.step.len())
        .max()
        .unwrap_or(4)
        .max(5);
    for l in &cost.lines {
        let amount = l.usd.map_or_else(|| "?".to_string(), usd);
        let _ = writeln!(
            out,
            "  {:<width$}  {:<28} {:>10}  {}",
            l.step,
            l.what,
            hours_text(l.hours),
            amount
        );
    }
    match cost.total_usd {
        Some(t) => {
            let _ = writeln!(out, "  {:<width$}  {t}", "total", t = usd(t));
        }
        None => {
            let _ = writeln!(
                out,
                "  {:<width$}  unknown: {}",
                "total",
                cost.unknown.join("; ")
            );
        }
    }
    if let Some(budget) = plan.operation.budget {
        let verdict = match cost.total_usd {
            Some(t) if t <= budget => "within it",
            _ => "a new run would be refused",
        };
        let _ = writeln!(out, "  {:<width$}  {} ({verdict})", "budget", usd(budget));
    }
    for n in &cost.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// The one-line summary of `plan status`: spend so far, and the estimate and budget beside it.
pub fn status_line(plan: &Plan, spent: &Cost) -> String {
    let so_far = match spent.total_usd {
        Some(t) => usd(t),
        None => format!("unknown ({})", spent.unknown.join("; ")),
    };
    let mut out = format!("cost so far: {so_far} (on-demand prices)");
    if let Some(e) = estimate(plan).and_then(|e| e.total_usd) {
        let _ = write!(out, "; estimate {}", usd(e));
    }
    if let Some(b) = plan.operation.budget {
        let _ = write!(out, "; budget {}", usd(b));
    }
    out + "\n"
}

/// The `cost` field of `plan status --output json`.
pub fn status_json(plan: &Plan, spent: &Cost) -> serde_json::Value {
    serde_json::json!({
        "spent_usd": spent.total_usd,
        "estimate_usd": estimate(plan).and_then(|e| e.total_usd),
        "budget_usd": plan.operation.budget,
        "lines": spent.lines,
        "unknown": spent.unknown,
        "prices_as_of": prices::table().as_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_in_dollars() {
        assert_eq!(usd(28.8849), "$28.88");
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(0.0000125), "$0.0000125");
        assert_eq!(usd(0.5), "$0.50");
    }
}
