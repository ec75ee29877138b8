//! Running a plan: `session` picks the run under the plan's lock (new, continued, keyed, concurrency rules) and
//! hands it to the `walker`, which starts each `step` when its dependencies have ended, with `reentry`'s
//! verdicts for a continued run. Instances, volumes and teardowns go through the run's `Target`; run steps go
//! through one loop (`run_step`) on any `Host`, whose waiting is the host's own (`local_wait`, `ssm_wait`). A
//! running step is watched for stalls (`stall`, and `step_watch` on AWS); its files are shipped (`step_files`),
//! its log kept (`step_logs`), and secret outputs held in memory only (`secret_outputs`).

pub mod concurrency;
mod local_wait;
pub mod reentry;
pub mod run_key;
mod run_step;
pub mod secret_outputs;
pub mod session;
mod ssm_wait;
pub mod stall;
pub mod step;
pub mod step_files;
pub mod step_logs;
pub mod step_watch;
pub mod walker;
