//! Running a plan: `session` picks the run under the plan's lock (new, continued, keyed, concurrency rules) and
//! hands it to the `walker`, which starts each `step` (local target) or `aws_step` (AWS target) when its
//! dependencies have ended, with `reentry`'s verdicts for a continued run. A running step is watched for
//! stalls (`stall`, and `step_watch` on AWS); its files are shipped (`step_files`), its log kept
//! (`step_logs`), and secret outputs held in memory only (`secret_outputs`).

pub mod aws_step;
pub mod concurrency;
pub mod reentry;
pub mod run_key;
pub mod secret_outputs;
pub mod session;
pub mod stall;
pub mod step;
pub mod step_files;
pub mod step_logs;
pub mod step_watch;
pub mod walker;
