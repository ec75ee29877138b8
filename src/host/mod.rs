//! Hosts: where a `run` step's script runs, under the host protocol (docs/HOST_PROTOCOL.md). `protocol` names
//! its states and exit codes; `local` is a sandbox directory whose steps the native supervisor (`native`) runs;
//! `ssm` is an EC2 instance reached through SSM Run Command, whose steps the shell wrapper (`wrapper.sh`) runs.
//! The other shell scripts here (volume.sh, ttl.sh) run on hosts too.

pub mod local;
pub(crate) mod native;
pub mod protocol;
pub mod ssm;
pub(crate) mod ssm_command_size;
pub mod ssm_files;
mod ssm_invocation;
mod ssm_log;
pub mod ssm_poll;
mod ssm_scripts;
mod ssm_staging;

use crate::error::Result;
use crate::state::Handle;

pub use local::{HostStatus, LaunchSpec};

/// Where a run step runs. Closed set, dispatched by `match`: no trait objects. What differs most, waiting for
/// the end, is the run loop's (`run::local_wait`, `run::ssm_wait`).
#[derive(Debug, Clone)]
pub enum Host {
    /// A sandbox directory; the native supervisor runs its steps.
    Local(local::LocalHost),
    /// An EC2 instance through SSM Run Command; the shell wrapper runs its steps.
    Ssm(ssm::SsmHost),
}

impl Host {
    /// The step's status on the host.
    pub async fn status(&self, step: &str) -> Result<HostStatus> {
        match self {
            Host::Local(h) => h.status(step).await,
            Host::Ssm(h) => h.status(step).await,
        }
    }

    /// Cancels the step: SIGTERM to its process group, SIGKILL after the host's grace.
    pub async fn cancel(&self, step: &str) -> Result<HostStatus> {
        match self {
            Host::Local(h) => h.cancel(step, crate::target::local::CANCEL_GRACE).await,
            Host::Ssm(h) => {
                h.cancel(step, crate::target::aws::target::CANCEL_GRACE)
                    .await
            }
        }
    }

    /// What the run's state records before the step is launched, to find it again.
    pub fn handle(&self, step: &str) -> Handle {
        match self {
            Host::Local(h) => Handle::LocalRun {
                status_dir: h.status_dir(step).display().to_string(),
            },
            Host::Ssm(h) => Handle::SsmRun {
                host: h.instance_id.clone(),
                wait_command: None,
            },
        }
    }

    /// An attempt found lost that never started its script: on a local host the launch runs inside `plan`, so a
    /// kill -9 between writing the attempt and starting its supervisor leaves it so. On SSM the launch is the
    /// host's own process, which outlives `plan`.
    pub fn never_started(&self, step: &str) -> bool {
        match self {
            Host::Local(h) => !h.status_dir(step).join("started_at").exists(),
            Host::Ssm(_) => false,
        }
    }

    /// The instance, for SSM hosts.
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            Host::Local(_) => None,
            Host::Ssm(h) => Some(&h.instance_id),
        }
    }
}
