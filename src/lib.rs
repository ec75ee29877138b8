//! sortie: a YAML plan becomes a DAG of steps that provision, run and tear down a training run.
//!
//! See docs/ARCHITECTURE.md for the map of modules.

pub mod backoff;
pub mod cli;
pub mod compiler;
pub mod confirm;
pub mod cost;
pub mod dag;
pub mod devenv;
pub mod diagnostic;
pub mod doctor;
pub mod error;
pub mod event;
pub mod gc;
pub mod heartbeat;
pub mod host;
pub mod lifetime_check;
pub mod loader;
pub mod log_follow;
pub mod logs;
pub mod notify;
pub mod plan;
pub mod plan_file;
pub mod prices;
pub mod progress;
pub mod render;
pub mod reporter;
pub mod run;
pub mod s3_scrub;
pub mod script_template;
pub mod scrub;
pub mod shell_context;
pub mod shell_escape;
pub mod source;
pub mod state;
pub mod status;
pub mod target;
pub mod template;
pub mod ttl;
pub mod variables;
pub mod yaml;

/// Runs the `plan` command line and returns the process exit code.
pub fn run() -> i32 {
    cli::main()
}
