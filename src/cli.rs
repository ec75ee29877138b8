//! Command-line interface: clap definitions and dispatch to the library.

mod dispatch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::compiler::{self, Compiled};
use crate::dag::GraphFormat;
use crate::error::{exit, Error, Result};
use crate::reporter::OutputFormat;
use crate::run::session::RunSelector;
use crate::variables::{self, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "plan",
    version,
    about = "Provision, run and tear down ML training runs from a YAML plan"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a plan and report every problem in it.
    Validate(PlanArgs),
    /// Print the plan's DAG in topological order.
    Graph {
        #[command(flatten)]
        plan: PlanArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
    },
    /// Run the plan: start a new run, or continue the latest unfinished one.
    Apply {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Rerun this step and everything that depends on it.
        #[arg(long, value_name = "STEP")]
        from: Option<String>,
        /// Steps that may run at once.
        #[arg(long, default_value_t = 10)]
        parallelism: usize,
        /// Do not wait for detached steps: leave them running and exit 4 (the same as `--wait 0`).
        #[arg(long, conflicts_with = "wait")]
        no_wait: bool,
        /// Advance the run for at most this long (e.g. `5h30m`), then leave its steps running on their hosts and
        /// exit 4; the next `plan apply` continues it.
        #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
        wait: Option<std::time::Duration>,
        /// Do not ask before spending (on AWS, apply shows the preview and asks on a terminal, and needs --yes
        /// without one; it never asks on the local target).
        /// SORTIE_YES=1 (or true/yes/on) does the same; 0, false, no, off or empty do not.
        #[arg(long, short = 'y', env = "SORTIE_YES", value_parser = clap::builder::FalseyValueParser::new())]
        yes: bool,
        /// Name the run: the same key again continues its run, or reports it when it has succeeded (overrides
        /// the plan's `run_key`).
        #[arg(long, value_name = "KEY", conflicts_with_all = ["new", "run"])]
        run_key: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// Check the AWS account before spending money: credentials and region, the state bucket, the instance
    /// profile, quotas, network, image, launch permission (RunInstances with DryRun) and SSM parameters.
    /// Exits 1 when a required check fails.
    Doctor {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// Show what apply would do for each step, and why. Changes nothing.
    Preview {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        run: RunArgs,
        #[arg(long, value_name = "STEP")]
        from: Option<String>,
        /// Preview the apply of this run key (see `plan apply --run-key`).
        #[arg(long, value_name = "KEY", conflicts_with_all = ["new", "run"])]
        run_key: Option<String>,
    },
    /// Show the steps of a run.
    Status {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        run: Option<String>,
        /// Keep the table updating.
        #[arg(long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "human")]
        output: OutputFormat,
    },
    /// Print a step's log.
    Logs {
        #[command(flatten)]
        plan: PlanArgs,
        /// The step.
        step: String,
        #[arg(long)]
        run: Option<String>,
        /// Keep printing until the step finishes.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print the commands that open a shell on a run's host (and forward Jupyter's port); --exec opens it.
    Connect {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        run: Option<String>,
        /// The instance step (default: the plan's only one).
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
        /// The port to forward (Jupyter's, by default).
        #[arg(long, default_value_t = 8888)]
        port: u16,
        /// Run the shell command (`aws ssm start-session`) instead of printing it.
        #[arg(long)]
        exec: bool,
    },
    /// Move a host's `ttl` deadline: it now expires this long from now (e.g. `--ttl 2h`).
    Extend {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        run: Option<String>,
        /// The instance step (default: the plan's only one).
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Print a run step's script exactly as its host would receive it, with the outputs of the latest run (or
    /// `--run`); values no run has produced yet are placeholders.
    Render {
        #[command(flatten)]
        plan: PlanArgs,
        /// The run step.
        step: String,
        #[arg(long)]
        run: Option<String>,
    },
    /// List the plan's runs.
    Runs(PlanArgs),
    /// Remove every resource a run owns. Idempotent.
    Destroy {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        run: Option<String>,
    },
    /// List cloud resources tagged with the plan that no run will clean up; --yes removes them.
    ///
    /// Garbage: resources of runs that are finished or unknown to the state store, and of runs that say running
    /// but whose instance is terminated or that wrote no checkpoint for --stale-after.
    Gc {
        #[command(flatten)]
        plan: PlanArgs,
        /// Remove what is listed as garbage.
        #[arg(long, short = 'y')]
        yes: bool,
        /// With --yes, also remove the volumes a garbage run keeps (`keep: true`); without it they are listed.
        #[arg(long, requires = "yes")]
        include_kept: bool,
        /// A run that says running but wrote no checkpoint for this long is abandoned (e.g. `72h`, `30m`). The
        /// default is beyond SSM's 48 h executionTimeout; set it above your longest step's timeout.
        #[arg(long, value_name = "DURATION", default_value = "72h", value_parser = humantime::parse_duration)]
        stale_after: std::time::Duration,
    },
    /// Break a run's lock whose holder died (S3 state).
    Unlock {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        run: Option<String>,
        /// Required: you are sure the holder is gone.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of the plan format.
    Schema {
        /// Print the schema of one `--output json` event line instead.
        #[arg(long)]
        events: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The host protocol run natively (docs/HOST_PROTOCOL.md): wrapper.sh's commands, arguments, output and
    /// exit codes. Internal: the local target's supervisors are this command.
    #[command(hide = true, disable_help_flag = true)]
    HostWrapper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Which run to act on.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Start a new run even if the latest one is unfinished.
    #[arg(long, conflicts_with = "run")]
    pub new: bool,
    /// Act on this run.
    #[arg(long)]
    pub run: Option<String>,
}

impl RunArgs {
    fn selector(&self) -> RunSelector {
        RunSelector {
            run: self.run.clone(),
            new: self.new,
        }
    }
}

/// A plan file and its variable overrides.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The plan file (YAML).
    pub file: PathBuf,
    /// Set a variable: `--var key=value` (repeatable; overrides --var-file).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = variables::parse_assignment)]
    pub vars: Vec<(String, String)>,
    /// Read variables from a YAML file (repeatable; later files win).
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
}

impl PlanArgs {
    pub fn compile(&self) -> Result<Compiled> {
        let overrides = Overrides::from_process(self.var_files.clone(), self.vars.clone());
        let compiled = compiler::compile(&self.file, &overrides).map_err(Error::Invalid)?;
        eprint!("{}", compiled.render_warnings());
        // Every command that shows or stores a string scrubs these values from it.
        crate::scrub::add_secret_vars(&compiled.plan.vars);
        Ok(compiled)
    }
}

/// `--wait`: a humantime duration (`90s`, `5h 30m`, `0`).
fn parse_wait(text: &str) -> std::result::Result<std::time::Duration, String> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like `90s`, `45m` or `5h30m`: {e}"))
}

/// `--ttl`: a positive humantime duration.
fn parse_ttl(text: &str) -> std::result::Result<std::time::Duration, String> {
    match parse_wait(text)? {
        d if d.is_zero() => {
            Err("a ttl of 0 would shut the host down at once; give e.g. `2h`".into())
        }
        d => Ok(d),
    }
}

/// Parses arguments, runs the command, prints errors, and returns the exit code.
pub fn main() -> i32 {
    // Warnings (a broken stale lock, an unmount that failed) go to stderr; RUST_LOG=sortie=debug shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sortie=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::INVALID
            } else {
                exit::OK
            };
        }
    };
    match dispatch::dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            let text = e.render();
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            e.exit_code()
        }
    }
}
