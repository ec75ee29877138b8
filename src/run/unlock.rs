//! `plan unlock`: breaks the locks a holder that died left behind (S3).

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::run::run_select::{check_run_id, existing, require, store, RunSelector};

/// Breaks a run's lock: for a holder that died without releasing it (S3). Directory locks end with their process.
pub async fn unlock(plan: &Plan, sel: &RunSelector) -> Result<String> {
    if let Some(id) = &sel.run {
        check_run_id(id)?;
    }
    let store = store(plan).await?;
    // The plan's lock too: an apply that died while picking its run leaves it behind on S3.
    let plan_note = if store.unlock_plan().await? {
        format!("plan {}: lock broken\n", plan.name)
    } else {
        String::new()
    };
    // A named run needs no readable state: its lock may be all that is left of it.
    let run_id = match &sel.run {
        Some(id) => id.clone(),
        None if !plan_note.is_empty() => match existing(&store, sel).await? {
            Some(run) => run.run_id,
            None => return Ok(plan_note),
        },
        None => require(&store, plan, sel).await?.run_id,
    };
    // A live directory lock cannot be broken (it ends with its process): say who holds it.
    if let Some(holder) = store.live_holder(&run_id) {
        return Err(Error::Locked {
            run: run_id,
            holder,
            plan: plan.file.display().to_string(),
        });
    }
    Ok(plan_note
        + &if store.unlock(&run_id).await? {
            format!("run {run_id}: lock broken\n")
        } else {
            format!(
            "run {run_id}: no lock to break (a directory lock is released when its process ends)\n"
        )
        })
}
