//! Targets: where a plan's hosts and volumes come from. A command builds its [`Target`] once (for `aws`: one SDK
//! configuration and one set of clients) and every step shares it. `local`: sandbox directories; `aws`: EC2
//! instances and EBS volumes reached through SSM.

pub mod aws;
pub(crate) mod local;

use indexmap::IndexMap;

use crate::error::Result;
use crate::host::Host;
use crate::plan::Plan;
use crate::state::{Handle, Resource};

pub use aws::target::AwsTarget;
pub use local::LocalTarget;

/// What a create made: the step's outputs, and the resources its teardown destroys.
pub struct Created {
    pub outputs: IndexMap<String, String>,
    pub resources: Vec<Resource>,
}

/// Closed set, dispatched by `match`: no trait objects.
#[derive(Debug, Clone)]
pub enum Target {
    Local(LocalTarget),
    Aws(AwsTarget),
}

impl Target {
    /// The plan's target, with its clients.
    pub async fn of(plan: &Plan) -> Target {
        match &plan.target {
            crate::plan::Target::Local { root } => {
                Target::Local(LocalTarget { root: root.clone() })
            }
            crate::plan::Target::Aws { .. } => Target::Aws(AwsTarget::new(plan).await),
        }
    }

    /// The local target, if it is.
    pub fn local(&self) -> Option<&LocalTarget> {
        match self {
            Target::Local(t) => Some(t),
            Target::Aws(_) => None,
        }
    }

    /// The host a `run` step on `on` runs on. On AWS it is the instance of `on`'s outputs.
    pub fn host(&self, run: &str, on: &str, instance_id: Option<&str>) -> Result<Host> {
        match self {
            Target::Local(t) => Ok(Host::Local(t.existing_host(run, on)?)),
            Target::Aws(t) => {
                let id = instance_id.ok_or_else(|| {
                    crate::error::Error::runtime(format!(
                        "step `{on}` has no output `instance_id` (has it succeeded in this run?)"
                    ))
                })?;
                Ok(Host::Ssm(t.host(run, id)))
            }
        }
    }

    /// Destroys resources, dependents first. Idempotent. Returns the steps whose resources are gone.
    pub async fn destroy(&self, resources: Vec<(String, Vec<Resource>)>) -> Result<Vec<String>> {
        match self {
            Target::Local(t) => t.destroy(resources).await,
            Target::Aws(t) => t.destroy(&resources).await,
        }
    }

    /// Cancels a step that is no longer in the plan but still running. True if it was cancelled (or is gone);
    /// false if it cannot be reached from here (an SSM step is left to its own timeout, and the run stays
    /// unfinished).
    pub async fn cancel_orphan(&self, step: &str, handle: &Handle) -> Result<bool> {
        match self {
            Target::Local(t) => t.cancel_orphan(step, handle).await,
            Target::Aws(_) => Ok(false),
        }
    }
}
