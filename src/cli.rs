//! Command-line interface: clap definitions and dispatch to the library.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::compiler::{self, Compiled};
use crate::dag::{self, GraphFormat};
use crate::error::{exit, Error, Result};
use crate::plan_file;
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
    /// Print the JSON Schema of the plan format.
    Schema,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
        compiler::compile(&self.file, &overrides).map_err(Error::Invalid)
    }
}

/// Parses arguments, runs the command, prints errors, and returns the exit code.
pub fn main() -> i32 {
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
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            let text = e.to_string();
            eprint!("{text}");
            if !text.ends_with('\n') {
                eprintln!();
            }
            e.exit_code()
        }
    }
}

fn dispatch(command: Command) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    let write = |out: &mut std::io::StdoutLock<'_>, text: &str| {
        out.write_all(text.as_bytes())
            .map_err(|e| Error::io("cannot write to stdout", e))
    };
    match command {
        Command::Validate(args) => {
            let compiled = args.compile()?;
            let plan = &compiled.plan;
            write(
                &mut out,
                &format!(
                    "{}: plan `{}` is valid ({} steps, {} levels, target {})\n",
                    args.file.display(),
                    plan.name,
                    plan.steps.len(),
                    plan.dag.depth(),
                    plan.target.provider()
                ),
            )?;
        }
        Command::Graph { plan, format } => {
            let compiled = plan.compile()?;
            let p = &compiled.plan;
            let names: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
            let kinds: Vec<&str> = p.steps.iter().map(|s| s.kind_name().as_str()).collect();
            write(
                &mut out,
                &dag::render(&p.dag, &p.name, &names, &kinds, format),
            )?;
        }
        Command::Schema => {
            let text = serde_json::to_string_pretty(&plan_file::schema()).unwrap_or_default();
            write(&mut out, &format!("{text}\n"))?;
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "plan", &mut out);
        }
    }
    Ok(exit::OK)
}
