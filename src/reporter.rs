//! Shows events: plain lines for people, or one JSON object per line for CI (`--output json`).

use std::io::Write;

use crate::event::{Event, EventLine};
use crate::state::is_secret_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

pub struct Reporter {
    format: OutputFormat,
    /// Live progress lines when stdout is a terminal: one spinner per running step.
    live: Option<Live>,
    /// The run the events are about, from `run_started`: every JSON event names it.
    run: std::sync::Mutex<Option<String>>,
}

struct Live {
    multi: indicatif::MultiProgress,
    bars: std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
}

impl Live {
    /// Adds, updates and removes the running steps' lines.
    fn update(&self, event: &Event) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        match event {
            Event::StepStarted { step, .. } | Event::StepReattached { step, .. } => {
                let style = indicatif::ProgressStyle::with_template(
                    "  {spinner} {prefix:<14} {elapsed:>5}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
                let bar = self.multi.add(
                    indicatif::ProgressBar::new_spinner()
                        .with_style(style)
                        .with_prefix(step.clone()),
                );
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                bars.insert(step.clone(), bar);
            }
            Event::StepProgress { step, progress } => {
                if let Some(bar) = bars.get(step) {
                    bar.set_message(progress.clone());
                }
            }
            Event::StepFinished { step, .. } | Event::StepRetry { step, .. } => {
                if let Some(bar) = bars.remove(step) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
            }
            _ => {}
        }
    }
}

impl Reporter {
    pub fn new(format: OutputFormat) -> Reporter {
        use std::io::IsTerminal;
        let live =
            (format == OutputFormat::Human && std::io::stdout().is_terminal()).then(|| Live {
                multi: indicatif::MultiProgress::new(),
                bars: std::sync::Mutex::new(std::collections::HashMap::new()),
            });
        Reporter {
            format,
            live,
            run: std::sync::Mutex::new(None),
        }
    }

    pub fn emit(&self, event: &Event) {
        // Events leave the process (terminal, CI logs): scrub every known secret value from them.
        let scrubber = crate::scrub::current();
        let mut event = scrubber.value(event).unwrap_or_else(|| Event::Notice {
            // Never the unscrubbed event: its JSON text, scrubbed, is still worth showing.
            message: scrubber
                .text(&serde_json::to_string(event).unwrap_or_default())
                .into_owned(),
        });
        if let Event::StepOutput { key, value, .. } = &mut event {
            if is_secret_name(key) {
                *value = "<redacted>".into();
            }
        }
        if let Some(live) = &self.live {
            live.update(&event);
            // Progress lives on the step's line; everything else is printed above the live lines.
            if !matches!(
                event,
                Event::StepProgress { .. }
                    | Event::StepStarted { .. }
                    | Event::StepReattached { .. }
            ) {
                let _ = live.multi.println(human(&event));
            }
            return;
        }
        let line = match self.format {
            OutputFormat::Json => self.json_line(&event),
            OutputFormat::Human => human(&event),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

impl Reporter {
    /// The event as one JSON object (`EventLine`): its own fields, then `run` (when the event does not carry it
    /// already) and `ts`, when it was emitted (RFC 3339, UTC, milliseconds).
    fn json_line(&self, event: &Event) -> String {
        if let Event::RunStarted { run, .. } = event {
            if let Ok(mut current) = self.run.lock() {
                *current = Some(run.clone());
            }
        }
        let has_run = matches!(event, Event::RunStarted { .. } | Event::RunFinished { .. });
        let run = self.run.lock().ok().and_then(|r| r.clone());
        let line = EventLine {
            event,
            run: run.as_deref().filter(|_| !has_run),
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

fn human(event: &Event) -> String {
    match event {
        Event::RunStarted {
            run,
            plan,
            steps,
            resumed,
        } => {
            let verb = if *resumed { "continuing" } else { "starting" };
            format!("{verb} run {run} of plan {plan} ({steps} steps)")
        }
        Event::StepStarted { step, attempt } => format!("  start    {step} (attempt {attempt})"),
        Event::StepReattached { step, attempt } => {
            format!("  attach   {step} (attempt {attempt}, still running on the host)")
        }
        Event::HostReplaced {
            step,
            instance_id,
            reason,
            rerun,
        } => {
            let again = if rerun.is_empty() {
                String::new()
            } else {
                format!("; again on it: {}", rerun.join(", "))
            };
            format!("  replace  {step}: {instance_id} is gone ({reason}); a new host{again}")
        }
        Event::StepRetry {
            step,
            attempt,
            delay_secs,
            error,
        } => {
            // `attempt` is the one about to start; the one that failed is the one before it.
            format!(
                "  retry    {step}: attempt {} failed ({error}); attempt {attempt} in {delay_secs:.1}s",
                attempt.saturating_sub(1)
            )
        }
        Event::StepProgress { step, progress } => format!("  progress {step}: {progress}"),
        Event::StepFailover {
            step,
            instance_type,
            availability_zone,
            subnet,
            market,
            code,
            ..
        } => {
            let place = launch_place(availability_zone.as_deref(), subnet.as_deref());
            format!("  failover {step}: {market} {instance_type} in {place} failed ({code}); trying the next")
        }
        Event::StepOutput { step, key, value } => format!("  output   {step}.{key} = {value}"),
        Event::StepFinished {
            step,
            status,
            duration_secs,
            error,
            help,
            ..
        } => finished_line(step, status, *duration_secs, error, help),
        Event::Notice { message } => message.clone(),
        Event::RunFinished {
            run,
            status,
            exit_code,
        } => format!("run {run} {status} (exit {exit_code})"),
    }
}

/// Where a failed launch was tried: its zone (or any), and its subnet if the plan names subnets.
fn launch_place(availability_zone: Option<&str>, subnet: Option<&str>) -> String {
    let zone = availability_zone.unwrap_or("any zone");
    match subnet {
        Some(subnet) => format!("{zone} (subnet {subnet})"),
        None => zone.to_string(),
    }
}

/// A step's end: its status and duration, and its error and help apart.
fn finished_line(
    step: &str,
    status: &str,
    duration_secs: f64,
    error: &Option<String>,
    help: &Option<String>,
) -> String {
    match (error, help) {
        (Some(e), Some(h)) => {
            format!("  {status:<8} {step} after {duration_secs:.1}s: {e}\n           = help: {h}")
        }
        (Some(e), None) => format!("  {status:<8} {step} after {duration_secs:.1}s: {e}"),
        (None, _) => format!("  {status:<8} {step} ({duration_secs:.1}s)"),
    }
}
