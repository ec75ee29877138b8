//! Running a plan: `session` has `pick` choose the run under the plan's lock (new, continued, keyed, concurrency
//! rules) and hands it to the `walker`, which starts each `step` when its dependencies have ended, with `reentry`'s
//! verdicts for a continued run. Instances, volumes and teardowns go through the run's `Target`; run steps go
//! through one loop (`run_step`) on any `Host`, whose waiting is the host's own (`local_wait`, `ssm_wait`). A
//! running step is watched for stalls (`stall`, and `step_watch` on AWS); its files are shipped (`step_files`),
//! its log kept (`step_logs`), and secret outputs held in memory only (`secret_outputs`).

pub(crate) mod concurrency;
mod destroy;
mod local_wait;
mod new_run;
mod pick;
mod preview;
pub mod reentry;
pub(crate) mod run_key;
pub(crate) mod run_select;
mod run_step;
pub(crate) mod secret_outputs;
pub(crate) mod session;
mod ssm_wait;
pub(crate) mod stall;
pub(crate) mod step;
pub(crate) mod step_files;
pub(crate) mod step_logs;
pub mod step_watch;
mod unlock;
pub mod walker;
