//! Shows events: plain lines for people, or one JSON object per line for CI (`--output json`).

use std::io::Write;

use crate::event::Event;
use crate::state::is_secret_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

pub struct Reporter {
    format: OutputFormat,
}

impl Reporter {
    pub fn new(format: OutputFormat) -> Reporter {
        Reporter { format }
    }

    pub fn emit(&self, event: &Event) {
        let mut event = event.clone();
        if let Event::StepOutput { key, value, .. } = &mut event {
            if is_secret_name(key) {
                *value = "<redacted>".into();
            }
        }
        let line = match self.format {
            OutputFormat::Json => serde_json::to_string(&event).unwrap_or_default(),
            OutputFormat::Human => human(&event),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
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
        Event::StepRetry {
            step,
            attempt,
            delay_secs,
            error,
        } => {
            format!("  retry    {step}: attempt {attempt} failed ({error}); retrying in {delay_secs:.1}s")
        }
        Event::StepProgress { step, progress } => format!("  progress {step}: {progress}"),
        Event::StepOutput { step, key, value } => format!("  output   {step}.{key} = {value}"),
        Event::StepFinished {
            step,
            status,
            duration_secs,
            error,
            ..
        } => match error {
            Some(e) => format!("  {status:<8} {step} after {duration_secs:.1}s: {e}"),
            None => format!("  {status:<8} {step} ({duration_secs:.1}s)"),
        },
        Event::Notice { message } => message.clone(),
        Event::RunFinished {
            run,
            status,
            exit_code,
        } => format!("run {run} {status} (exit {exit_code})"),
    }
}
