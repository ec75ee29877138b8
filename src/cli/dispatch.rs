//! Runs a parsed command: one function per command, each compiling the plan and printing what the library
//! answers.

use std::io::Write;
use std::time::Duration;

use clap::CommandFactory;

use super::{Cli, Command, PlanArgs, RunArgs};
use crate::dag::{self, GraphFormat};
use crate::error::{exit, Error, Result};
use crate::plan_file;
use crate::reporter::OutputFormat;
use crate::run::session::{self, ApplyOptions, RunSelector};

/// Runs the command and returns its exit code.
pub(super) fn dispatch(command: Command) -> Result<i32> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Validate(args) => validate(&args, &mut out)?,
        Command::Graph { plan, format } => graph(&plan, format, &mut out)?,
        Command::Apply {
            plan,
            run,
            from,
            parallelism,
            no_wait,
            wait,
            yes,
            run_key,
            output,
        } => {
            let compiled = plan.compile()?;
            let opts = ApplyOptions {
                selector: run.selector(),
                from,
                parallelism,
                wait: if no_wait { Some(Duration::ZERO) } else { wait },
                run_key,
                yes,
                output,
            };
            return block_on(session::apply(&compiled.plan, opts));
        }
        Command::Doctor { plan, output } => return doctor(&plan, output, &mut out),
        Command::Preview {
            plan,
            run,
            from,
            run_key,
        } => preview(&plan, &run, from, run_key, &mut out)?,
        Command::Status {
            plan,
            run,
            watch,
            output,
        } => status(&plan, run, watch, output, &mut out)?,
        Command::Logs {
            plan,
            step,
            run,
            follow,
        } => return logs(&plan, &step, run, follow),
        Command::Connect {
            plan,
            run,
            step,
            port,
            exec,
        } => connect(&plan, run, step, port, exec, &mut out)?,
        Command::Extend {
            plan,
            run,
            step,
            ttl,
        } => extend(&plan, run, step, ttl, &mut out)?,
        Command::Render { plan, step, run } => render(&plan, &step, run, &mut out)?,
        Command::Runs(plan) => runs(&plan, &mut out)?,
        Command::Destroy { plan, run } => destroy(&plan, run, &mut out)?,
        Command::Gc {
            plan,
            yes,
            include_kept,
            stale_after,
        } => gc(&plan, yes, include_kept, stale_after, &mut out)?,
        Command::Unlock { plan, run, force } => unlock(&plan, run, force, &mut out)?,
        Command::Schema { events } => schema(events, &mut out)?,
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "plan", &mut out);
        }
        // wrapper.sh's exit codes, not the CLI's.
        Command::HostWrapper { args } => return Ok(crate::host::native::command::main(&args)),
    }
    Ok(exit::OK)
}

fn write(out: &mut impl Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .map_err(|e| Error::io("cannot write to stdout", e))
}

/// Runs a future on a fresh multi-threaded runtime (commands are short-lived; one runtime per command).
fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Runtime::new()
        .map_err(|e| Error::io("cannot start the async runtime", e))?
        .block_on(future)
}

fn validate(args: &PlanArgs, out: &mut impl Write) -> Result<()> {
    let compiled = args.compile()?;
    let plan = &compiled.plan;
    write(
        out,
        &format!(
            "{}: plan `{}` is valid ({} steps, {} levels, target {})\n",
            args.file.display(),
            plan.name,
            plan.steps.len(),
            plan.dag.depth(),
            plan.target.provider()
        ),
    )?;
    // The process exits next: freeing a large plan piece by piece would only add to its run time.
    std::mem::forget(compiled);
    Ok(())
}

fn graph(plan: &PlanArgs, format: GraphFormat, out: &mut impl Write) -> Result<()> {
    let compiled = plan.compile()?;
    let p = &compiled.plan;
    let names: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
    let kinds: Vec<&str> = p.steps.iter().map(|s| s.kind_name().as_str()).collect();
    write(out, &dag::render(&p.dag, &p.name, &names, &kinds, format))
}

fn doctor(plan: &PlanArgs, output: OutputFormat, out: &mut impl Write) -> Result<i32> {
    let compiled = plan.compile()?;
    let (text, code) = block_on(crate::doctor::doctor(&compiled.plan, output))?;
    write(out, &text)?;
    Ok(code)
}

fn preview(
    plan: &PlanArgs,
    run: &RunArgs,
    from: Option<String>,
    run_key: Option<String>,
    out: &mut impl Write,
) -> Result<()> {
    let compiled = plan.compile()?;
    write(
        out,
        &block_on(session::preview(
            &compiled.plan,
            &run.selector(),
            from.as_deref(),
            run_key.as_deref(),
        ))?,
    )
}

fn status(
    plan: &PlanArgs,
    run: Option<String>,
    watch: bool,
    output: OutputFormat,
    out: &mut impl Write,
) -> Result<()> {
    let compiled = plan.compile()?;
    let sel = RunSelector::named(run);
    // Clearing the screen is for a terminal only; a pipe gets one table after another.
    let clear = watch && std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let (text, finished) = block_on(session::status_of(&compiled.plan, &sel, output))?;
        if clear {
            write(out, "\x1b[2J\x1b[H")?;
        }
        write(out, &text)?;
        out.flush()
            .map_err(|e| Error::io("cannot write to stdout", e))?;
        // A finished run will not change: the watch ends with it.
        if !watch || finished {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(())
}

fn logs(plan: &PlanArgs, step: &str, run: Option<String>, follow: bool) -> Result<i32> {
    let compiled = plan.compile()?;
    block_on(session::logs(
        &compiled.plan,
        &RunSelector::named(run),
        step,
        follow,
    ))
}

fn connect(
    plan: &PlanArgs,
    run: Option<String>,
    step: Option<String>,
    port: u16,
    exec: bool,
    out: &mut impl Write,
) -> Result<()> {
    let compiled = plan.compile()?;
    let text = block_on(crate::devenv::connect(
        &compiled.plan,
        &RunSelector::named(run),
        step.as_deref(),
        port,
        exec,
    ))?;
    write(out, &text)
}

fn extend(
    plan: &PlanArgs,
    run: Option<String>,
    step: Option<String>,
    ttl: Duration,
    out: &mut impl Write,
) -> Result<()> {
    let compiled = plan.compile()?;
    let text = block_on(crate::devenv::extend(
        &compiled.plan,
        &RunSelector::named(run),
        step.as_deref(),
        ttl,
    ))?;
    write(out, &text)
}

fn render(plan: &PlanArgs, step: &str, run: Option<String>, out: &mut impl Write) -> Result<()> {
    let compiled = plan.compile()?;
    let rendered = block_on(crate::render::render(
        &compiled.plan,
        &RunSelector::named(run),
        step,
    ))?;
    eprintln!("{}", rendered.note);
    write(out, &rendered.script)
}

fn runs(plan: &PlanArgs, out: &mut impl Write) -> Result<()> {
    let compiled = plan.compile()?;
    write(out, &block_on(session::runs(&compiled.plan))?)
}

fn destroy(plan: &PlanArgs, run: Option<String>, out: &mut impl Write) -> Result<()> {
    let compiled = plan.compile()?;
    write(
        out,
        &block_on(session::destroy(&compiled.plan, &RunSelector::named(run)))?,
    )
}

fn gc(
    plan: &PlanArgs,
    yes: bool,
    include_kept: bool,
    stale_after: Duration,
    out: &mut impl Write,
) -> Result<()> {
    let compiled = plan.compile()?;
    let opts = crate::gc::GcOptions {
        yes,
        include_kept,
        stale_after,
    };
    write(out, &block_on(crate::gc::gc(&compiled.plan, opts))?)
}

fn unlock(plan: &PlanArgs, run: Option<String>, force: bool, out: &mut impl Write) -> Result<()> {
    if !force {
        return Err(Error::Usage(
            "`plan unlock` breaks another process's lock; pass --force if its holder is gone"
                .into(),
        ));
    }
    let compiled = plan.compile()?;
    write(
        out,
        &block_on(session::unlock(&compiled.plan, &RunSelector::named(run)))?,
    )
}

fn schema(events: bool, out: &mut impl Write) -> Result<()> {
    let schema = if events {
        crate::event::schema()
    } else {
        plan_file::schema()
    };
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    write(out, &format!("{text}\n"))
}
