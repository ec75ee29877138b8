//! The `local` target: hosts are sandbox directories under `root`, volumes are directories in them, and steps
//! run under the native supervisor (`host::native`). Everything it deletes is read back from state, which may
//! come from S3 or a CI artifact, so it deletes only what resolves strictly under `root`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use crate::error::{Error, Result};
use crate::host::local::{LocalHost, LocalVolume};
use crate::state::{Handle, Resource, ResourceKind};
use crate::target::Created;

/// How long a cancelled local step gets between SIGTERM and SIGKILL.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct LocalTarget {
    pub root: PathBuf,
}

impl LocalTarget {
    /// The sandbox of host step `on` in `run`.
    pub fn host(&self, run: &str, on: &str) -> LocalHost {
        LocalHost::at(&self.root, run, on)
    }

    /// The same sandbox, which must exist: a step cannot run on a host that is gone.
    pub fn existing_host(&self, run: &str, on: &str) -> Result<LocalHost> {
        let host = self.host(run, on);
        if host.exists() {
            Ok(host)
        } else {
            Err(Error::runtime(format!(
                "host `{on}` is gone ({})",
                host.home.display()
            )))
        }
    }

    /// An `instance` step: its sandbox, adopted if it exists, with its `ttl` armed.
    pub fn create_instance(&self, run: &str, step: &str, ttl: Option<Duration>) -> Result<Created> {
        let host = self.host(run, step);
        host.create()?;
        let home = host.home.display().to_string();
        let mut outputs = IndexMap::from([
            ("instance_id".to_string(), format!("local-{run}-{step}")),
            ("instance_type".to_string(), "local".to_string()),
            ("availability_zone".to_string(), "local".to_string()),
            ("private_ip".to_string(), "127.0.0.1".to_string()),
            ("market".to_string(), "local".to_string()),
            ("home".to_string(), home.clone()),
        ]);
        if let Some(ttl) = ttl {
            let deadline = crate::ttl::arm_local(&host.home, ttl)?;
            outputs.insert("expires_at".into(), crate::ttl::rfc3339(deadline));
        }
        let resources = vec![Resource::new(ResourceKind::LocalSandbox, home)];
        Ok(Created { outputs, resources })
    }

    /// What an `instance` step records before it creates anything.
    pub fn instance_handle(&self, run: &str, step: &str) -> Handle {
        Handle::LocalSandbox {
            home: self.host(run, step).home.display().to_string(),
        }
    }

    /// A `volume` step: a directory in its host's sandbox, linked at `mount`.
    pub fn volume(&self, run: &str, step: &str, attach_to: &str, mount: &str) -> LocalVolume {
        LocalVolume::at(&self.host(run, attach_to), step, mount)
    }

    pub fn create_volume(
        &self,
        run: &str,
        step: &str,
        attach_to: &str,
        mount: &str,
    ) -> Result<Created> {
        self.existing_host(run, attach_to)?;
        let volume = self.volume(run, step, attach_to, mount);
        volume.create()?;
        let outputs = IndexMap::from([
            ("volume_id".to_string(), format!("local-{run}-{step}")),
            ("device".to_string(), volume.dir.display().to_string()),
            (
                "mount_path".to_string(),
                volume.mount_path.display().to_string(),
            ),
        ]);
        let resources = vec![Resource::new(
            ResourceKind::LocalVolume,
            volume.dir.display().to_string(),
        )];
        Ok(Created { outputs, resources })
    }

    /// Destroys resources in the order given (dependents first), volumes before the hosts that hold them.
    /// Idempotent: missing things are fine. Returns the steps whose resources are gone.
    pub async fn destroy(&self, resources: Vec<(String, Vec<Resource>)>) -> Result<Vec<String>> {
        let mut done = Vec::new();
        let mut ordered = resources;
        ordered.sort_by_key(|(_, rs)| rs.iter().any(|r| r.kind == ResourceKind::LocalSandbox));
        for (step, rs) in ordered {
            for (i, r) in rs.iter().enumerate().filter(|(_, r)| !r.destroyed) {
                self.destroy_one(&format!("steps.{step}.resources[{i}].id"), r)
                    .await?;
            }
            done.push(step);
        }
        Ok(done)
    }

    async fn destroy_one(&self, key: &str, r: &Resource) -> Result<()> {
        if !matches!(
            r.kind,
            ResourceKind::LocalSandbox | ResourceKind::LocalVolume
        ) {
            return Err(Error::runtime(format!(
                "cannot destroy a `{}` resource on this target",
                r.kind
            )));
        }
        if !self.inside(key, &r.id)? {
            return Ok(()); // Already gone.
        }
        if r.kind == ResourceKind::LocalSandbox {
            return LocalHost {
                home: r.id.clone().into(),
            }
            .destroy()
            .await;
        }
        match std::fs::remove_dir_all(&r.id) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("cannot delete volume {}", r.id), e)),
        }
    }

    /// Cancels a step that is no longer in the plan but still running on a local host (the plan was edited while
    /// it ran). True if it was cancelled, or its host is gone and the step with it.
    pub async fn cancel_orphan(&self, step: &str, handle: &Handle) -> Result<bool> {
        let Some(dir) = handle.status_dir() else {
            return Ok(false);
        };
        // `<home>/.sortie/steps/<step>`
        let Some(home) = Path::new(dir).ancestors().nth(3) else {
            return Ok(false);
        };
        let key = format!("steps.{step}.handle.status_dir");
        if !self.inside(&key, &home.to_string_lossy())? {
            return Ok(true);
        }
        let host = LocalHost { home: home.into() };
        host.cancel(step, CANCEL_GRACE).await?;
        Ok(true)
    }

    /// Whether a local path read from state still exists, refusing (exit 2) one that does not resolve, symlinks
    /// followed, strictly under the sandbox root: a path such as `/home/me/data`, or a sandbox linked elsewhere,
    /// must never be deleted.
    fn inside(&self, key: &str, id: &str) -> Result<bool> {
        let real = match std::fs::canonicalize(id) {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(format!("cannot resolve {id}"), e)),
        };
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        if real.starts_with(&root) && real != root {
            return Ok(true);
        }
        Err(Error::Usage(format!(
            "refusing to delete {id} (`{key}` in the run's state): it resolves to {}, which is not under the sandbox root {}",
            real.display(),
            root.display()
        )))
    }
}
