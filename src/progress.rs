//! A running step's progress from its heartbeat: step k/N, percent, this attempt's rate, ETA and last metrics,
//! for `plan status` (a column in the table, a `live` object in JSON).

use serde::Serialize;

/// What a heartbeat says about a running step.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Live {
    pub progress: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Units of progress per second in this attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metrics: String,
}

/// The last `k/N` in a progress string (`step 1234/30969`, `12/40 files`).
pub fn fraction(progress: &str) -> Option<(u64, u64)> {
    let slash = progress.rfind('/')?;
    let before = &progress[..slash];
    let start = before
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let after = &progress[slash + 1..];
    let end = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    let done = before[start..].parse().ok()?;
    let total: u64 = after[..end].parse().ok()?;
    (total > 0 && done <= total).then_some((done, total))
}

/// Reads a heartbeat document (docs/HOST_PROTOCOL.md, "Heartbeat").
pub fn from_heartbeat(beat: &crate::heartbeat::Heartbeat) -> Live {
    let progress = beat.progress.clone();
    let mut live = Live {
        metrics: metrics(&beat.metrics),
        ..Live::default()
    };
    if let Some((done, total)) = fraction(&progress) {
        live.done = Some(done);
        live.total = Some(total);
        live.percent = Some((done as f64 * 1000.0 / total as f64).round() / 10.0);
        let first = fraction(&beat.first_progress).map(|(d, _)| d);
        let since = beat.first_at.parse::<f64>().ok();
        let now = beat.ts;
        if let (Some(first), Some(since), Some(now)) = (first, since, now) {
            if done > first && now > since {
                let rate = (done - first) as f64 / (now - since);
                live.rate = Some((rate * 100.0).round() / 100.0);
                live.eta_secs = Some(((total - done) as f64 / rate).round() as u64);
            }
        }
    }
    live.progress = progress;
    live
}

/// The metrics line, short enough for a table cell: from its first `key=value` on, at most 60 characters.
fn metrics(line: &str) -> String {
    let from = line
        .split_whitespace()
        .find(|w| w.contains('='))
        .and_then(|w| line.find(w))
        .unwrap_or(0);
    line[from..].trim().chars().take(60).collect()
}

impl Live {
    /// The table cell: `step 20/40 (50.0%) 2.5/s ETA 8s loss=0.83`.
    pub fn cell(&self) -> String {
        let mut out = self.progress.clone();
        if let Some(p) = self.percent {
            out.push_str(&format!(" ({p:.1}%)"));
        }
        if let Some(r) = self.rate {
            out.push_str(&format!(" {r}/s"));
        }
        if let Some(eta) = self.eta_secs {
            out.push_str(&format!(
                " ETA {}",
                humantime::format_duration(std::time::Duration::from_secs(eta))
            ));
        }
        if !self.metrics.is_empty() {
            out.push(' ');
            out.push_str(&self.metrics);
        }
        out.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_takes_the_last_k_of_n() {
        assert_eq!(fraction("step 1234/30969"), Some((1234, 30969)));
        assert_eq!(fraction("12/40 files"), Some((12, 40)));
        assert_eq!(fraction("epoch 1/3 step 5/10"), Some((5, 10)));
        assert_eq!(fraction("50/0"), None);
        assert_eq!(fraction("60/50"), None);
        assert_eq!(fraction("no progress"), None);
        assert_eq!(fraction("/"), None);
    }

    fn hb(v: serde_json::Value) -> crate::heartbeat::Heartbeat {
        serde_json::from_value(v).expect("a heartbeat")
    }

    #[test]
    fn rate_and_eta_count_only_this_attempt() {
        // Resumed at 1000: 200 steps in 100 s is 2/s, and 29,769 left is about 4h08m.
        let beat = hb(serde_json::json!({
            "ts": 1_000_100, "progress": "step 1200/30969", "metrics": "{'loss': 0.83} loss=0.83 lr=2e-4",
            "first_progress": "step 1000/30969", "first_at": "1000000"
        }));
        let live = from_heartbeat(&beat);
        assert_eq!(live.done, Some(1200));
        assert_eq!(live.percent, Some(3.9));
        assert_eq!(live.rate, Some(2.0));
        assert_eq!(live.eta_secs, Some(14_885));
        assert_eq!(live.metrics, "loss=0.83 lr=2e-4");
        assert_eq!(
            live.cell(),
            "step 1200/30969 (3.9%) 2/s ETA 4h 8m 5s loss=0.83 lr=2e-4"
        );
    }

    #[test]
    fn no_rate_before_the_second_sample() {
        let beat = hb(serde_json::json!({
            "ts": 1_000_000, "progress": "3/10", "first_progress": "3/10", "first_at": "1000000"
        }));
        let live = from_heartbeat(&beat);
        assert_eq!((live.rate, live.eta_secs), (None, None));
        assert_eq!(live.cell(), "3/10 (30.0%)");
        assert_eq!(from_heartbeat(&hb(serde_json::json!({}))).cell(), "");
    }
}
