//! What an AWS run costs: the estimate before it starts (an upper bound from the step timeouts), its spend so
//! far (from the times in its state), and `budget:` (refuse a new run that may cost more; the runner stops one
//! whose spend reaches it). Prices come from the dated table in `prices/aws.yaml`.

mod budget;
mod estimate;
mod pricing;
mod report;
mod spend;
#[cfg(test)]
mod test_plans;

use serde::Serialize;

pub use budget::{check_new_run, over_budget};
pub use estimate::estimate;
pub use report::{estimate_text, status_json, status_line, usd};
pub use spend::spent;

/// One priced item: an instance, its root volume, or a volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub step: String,
    /// `g5.2xlarge`, `root volume 100 GiB gp3`, `volume 300 GiB gp3`.
    pub what: String,
    pub hours: f64,
    /// None when the item has no price.
    pub usd: Option<f64>,
}

/// An estimate or a spend: its lines, and a total only when every line has a price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub lines: Vec<Line>,
    pub total_usd: Option<f64>,
    /// Why there is no total ("no price for x1.large").
    pub unknown: Vec<String>,
    /// Caveats the reader must see (spot, failover, region, extras not counted).
    pub notes: Vec<String>,
}

impl Cost {
    fn new() -> Cost {
        Cost {
            lines: Vec::new(),
            total_usd: None,
            unknown: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn push(&mut self, step: &str, what: String, hours: f64, usd: Option<f64>) {
        self.lines.push(Line {
            step: step.to_string(),
            what,
            hours,
            usd,
        });
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn close(mut self) -> Cost {
        self.total_usd = (self.unknown.is_empty() && self.lines.iter().all(|l| l.usd.is_some()))
            .then(|| self.lines.iter().filter_map(|l| l.usd).sum());
        self
    }
}
