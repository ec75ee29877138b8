//! sortie: a YAML plan becomes a DAG of steps that provision, run and tear down a training run.
//!
//! See docs/ARCHITECTURE.md for the map of modules.

pub mod backoff;
pub(crate) mod cli;
pub mod compiler;
pub(crate) mod confirm;
pub(crate) mod cost;
pub(crate) mod dag;
pub(crate) mod devenv;
pub(crate) mod diagnostic;
pub(crate) mod doctor;
pub mod error;
pub(crate) mod event;
pub(crate) mod gc;
pub(crate) mod heartbeat;
pub mod host;
pub(crate) mod lifetime_check;
pub(crate) mod loader;
pub(crate) mod log_follow;
pub(crate) mod logs;
pub(crate) mod notify;
pub mod plan;
pub mod plan_file;
pub(crate) mod prices;
pub(crate) mod progress;
pub(crate) mod render;
pub(crate) mod reporter;
pub mod run;
pub(crate) mod s3_scrub;
pub mod script_template;
pub(crate) mod scrub;
pub(crate) mod shell_context;
pub(crate) mod shell_escape;
pub(crate) mod source;
pub mod state;
pub(crate) mod status;
pub mod target;
pub mod template;
pub(crate) mod ttl;
pub mod variables;
pub mod yaml;

/// Runs the `plan` command line and returns the process exit code.
pub fn run() -> i32 {
    cli::main()
}
