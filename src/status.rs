//! `plan status` and `plan runs`: the step table of a run (with the live progress of running steps and, on AWS,
//! the cost), or its state as JSON; the list of a plan's runs.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::heartbeat::Heartbeat;
use crate::plan::Plan;
use crate::reporter::OutputFormat;
use crate::run::run_select::{require, store, RunSelector};
use crate::state::{self, RunState, StepState, StepStatus};

/// The status text, and whether the run is finished (`status --watch` stops then).
pub async fn status_of(
    plan: &Plan,
    sel: &RunSelector,
    output: OutputFormat,
) -> Result<(String, bool)> {
    let store = store(plan).await?;
    let run = require(&store, plan, sel).await?;
    let finished = run.status.is_finished();
    status_text(plan, run, output)
        .await
        .map(|text| (text, finished))
}

async fn status_text(plan: &Plan, run: RunState, output: OutputFormat) -> Result<String> {
    let now = state::now();
    let spent = crate::cost::spent(plan, &run, now);
    if output == OutputFormat::Json {
        return status_json(plan, &run, spent.as_ref())
            .await
            .map(|s| crate::scrub::text(&s) + "\n");
    }
    let mut rows = vec![[
        "STEP",
        "STATUS",
        "ATTEMPT",
        "STARTED",
        "DURATION",
        "PROGRESS",
        "HEARTBEAT",
        "ERROR",
    ]
    .map(String::from)
    .to_vec()];
    for &i in plan.dag.order() {
        let id = &plan.steps[i].id;
        let st = run.step(id);
        let started = st.started_at.map(fmt_time).unwrap_or_default();
        let duration = match (st.started_at, st.finished_at) {
            (Some(a), Some(b)) => fmt_secs(b - a),
            (Some(a), None) if st.status == StepStatus::Running => fmt_secs(now - a),
            _ => String::new(),
        };
        // A running step's latest heartbeat: from its status directory, or from S3 on AWS (no SSM needed).
        let beat = if st.status == StepStatus::Running {
            heartbeat(plan, &run.run_id, id, st).await
        } else {
            None
        };
        let progress = beat
            .as_ref()
            .map(|b| crate::progress::from_heartbeat(b).cell())
            .filter(|p| !p.is_empty())
            .or_else(|| st.progress.clone())
            .unwrap_or_default();
        let age = beat
            .as_ref()
            .and_then(|b| b.ts)
            .map(|ts| format!("{} ago", fmt_secs(now - ts)))
            .unwrap_or_default();
        rows.push(vec![
            id.clone(),
            st.status.as_str().into(),
            st.attempt.to_string(),
            started,
            duration,
            progress,
            age,
            st.error.clone().unwrap_or_default(),
        ]);
    }
    let mut out = format!(
        "run {} of plan {}: {}\n",
        run.run_id,
        run.plan,
        run.status.as_str()
    );
    out.push_str(&table(&rows));
    // Advice is kept apart from the error, so it goes below the table instead of breaking its rows.
    for (id, st) in &run.steps {
        if let (Some(help), true) = (&st.help, st.error.is_some()) {
            out.push_str(&format!("  = help ({id}): {help}\n"));
        }
    }
    if let Some(spent) = &spent {
        out.push_str(&crate::cost::status_line(plan, spent));
    }
    // A step's error or progress line may quote a secret (state from before scrubbing, or a live heartbeat).
    Ok(crate::scrub::text(&out))
}

/// The run's state, with `cost` (AWS) and `live`: what the heartbeats of its running steps say (progress, rate, ETA, metrics).
async fn status_json(
    plan: &Plan,
    run: &RunState,
    spent: Option<&crate::cost::Cost>,
) -> Result<String> {
    let mut doc = serde_json::to_value(run).map_err(|e| Error::runtime(e.to_string()))?;
    if let (Some(spent), Some(map)) = (spent, doc.as_object_mut()) {
        map.insert("cost".into(), crate::cost::status_json(plan, spent));
    }
    let mut live = serde_json::Map::new();
    for (id, st) in run
        .steps
        .iter()
        .filter(|(_, st)| st.status == StepStatus::Running)
    {
        if let Some(beat) = heartbeat(plan, &run.run_id, id, st).await {
            let l = crate::progress::from_heartbeat(&beat);
            live.insert(id.clone(), serde_json::to_value(l).unwrap_or_default());
        }
    }
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("live".into(), serde_json::Value::Object(live));
    }
    serde_json::to_string_pretty(&doc).map_err(|e| Error::runtime(e.to_string()))
}

/// The heartbeat JSON of a running step, if it can be read.
async fn heartbeat(plan: &Plan, run: &str, step: &str, st: &StepState) -> Option<Heartbeat> {
    if let Some(dir) = st.handle.status_dir() {
        return Heartbeat::read(&std::path::Path::new(dir).join("heartbeat.json"));
    }
    let key = crate::target::aws::objects::heartbeat_key(&plan.state, &plan.name, run, step)?;
    let crate::plan::StateLocation::S3 { bucket, .. } = &plan.state else {
        return None;
    };
    let s3 = crate::target::aws::config::s3_client(
        &crate::target::aws::config::sdk_config(&plan.target).await,
    );
    let got = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    Heartbeat::parse(&got.body.collect().await.ok()?.into_bytes())
}

pub async fn runs(plan: &Plan) -> Result<String> {
    let store = store(plan).await?;
    let mut rows = vec![["RUN", "STATUS", "STARTED", "DURATION"]
        .map(String::from)
        .to_vec()];
    for id in store.runs().await? {
        // One unreadable state document must not hide the other runs: list it as corrupt.
        let run = match store.load(&id).await {
            Ok(Some(run)) => run,
            Ok(None) => continue,
            Err(e @ Error::CorruptState { .. }) => {
                tracing::warn!("{e}");
                rows.push(vec![id, "corrupt".into(), String::new(), String::new()]);
                continue;
            }
            Err(e) => return Err(e),
        };
        let duration = fmt_secs(run.finished_at.unwrap_or_else(state::now) - run.started_at);
        rows.push(vec![
            run.run_id,
            run.status.as_str().into(),
            fmt_time(run.started_at),
            duration,
        ]);
    }
    Ok(table(&rows))
}

pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
                .collect();
            cells.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

pub(crate) fn fmt_time(epoch: f64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs_f64(epoch.max(0.0));
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn fmt_secs(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0).round() as u64)).to_string()
}
