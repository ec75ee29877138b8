//! Asking before spending: `plan apply` on AWS shows what it will create, run, skip or rerun, and asks on a
//! terminal; without a terminal it needs `--yes`. The local target spends nothing and never asks.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::{Error, Result};
use crate::plan::{Plan, Target};

/// Whether an apply of this plan asks first (unless `--yes`).
pub fn asks(plan: &Plan) -> bool {
    matches!(plan.target, Target::Aws { .. })
}

/// Shows `preview` and asks on the terminal. True only for `yes` (or `y`); anything else, or end of input, is no.
pub fn ask(plan: &Plan, preview: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage("plan apply on AWS shows what it will create and asks before it spends money, and there is no terminal to ask on".into()).with_help(format!("see what it would do with `plan preview {file}`, then pass --yes (as a CI job does)", file = plan.file.display())));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "{preview}\nApply this on AWS (region {})? Type `yes` to go on: ",
        region(plan)
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::io("cannot read the answer from the terminal", e))?;
    Ok(matches!(line.trim(), "yes" | "y"))
}

fn region(plan: &Plan) -> String {
    match &plan.target {
        Target::Aws { region, .. } => region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "from the AWS config".into()),
        Target::Local { .. } => "local".into(),
    }
}
