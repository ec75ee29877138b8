//! The kind-specific part of a step: an instance's placement and lifetimes, a volume and its mount, a teardown.

use super::step::StepCtx;
use super::Compiler;
use crate::plan::{InstanceSpec, StepKind, Target, TeardownSpec, VolumeSpec};
use crate::plan_file::RawStep;
use crate::template;

const VOLUME_TYPES: &[&str] = &["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

impl Compiler {
    pub(super) fn instance(
        &mut self,
        path: &str,
        raw: &RawStep,
        ctx: &StepCtx<'_>,
    ) -> Option<StepKind> {
        let max_lifetime = self.duration(
            &format!("{path}.max_lifetime"),
            raw.max_lifetime.as_deref(),
            ctx.vars_ctx,
        );
        let ttl = self.duration(&format!("{path}.ttl"), raw.ttl.as_deref(), ctx.vars_ctx);
        let root_size_bytes = self.size(
            &format!("{path}.root_size"),
            raw.root_size.as_deref(),
            ctx.vars_ctx,
        );
        // Every string the provider sends to AWS is rendered now: only `vars` are known, and a literal
        // `{{ vars.image }}` would reach EC2 as an AMI id.
        let types = self.texts(
            &format!("{path}.instance_types"),
            raw.instance_types.as_deref(),
            ctx,
        );
        let image = self.text(&format!("{path}.image"), raw.image.as_deref(), ctx);
        let profile = self.text(&format!("{path}.profile"), raw.profile.as_deref(), ctx);
        let subnets = self.subnets(path, raw, ctx);
        let security_groups = self.texts(
            &format!("{path}.security_groups"),
            raw.security_groups.as_deref(),
            ctx,
        );
        let availability_zones = self.texts(
            &format!("{path}.availability_zones"),
            raw.availability_zones.as_deref(),
            ctx,
        );
        if matches!(ctx.target, Some(Target::Aws { .. })) {
            if types.is_empty() {
                self.error_help(
                    self.key_at(path),
                    "an instance step on the aws target needs `instance_types`",
                    "e.g. `instance_types: [g5.2xlarge, g6.2xlarge]` (tried in order)",
                );
            }
            if raw.image.is_none() {
                self.error_help(
                    self.key_at(path),
                    "an instance step on the aws target needs `image`",
                    "an AMI id, or `ssm:/aws/service/...` for a public SSM parameter",
                );
            }
        }
        Some(StepKind::Instance(InstanceSpec {
            instance_types: types,
            image,
            profile,
            market: raw.market.unwrap_or_default(),
            max_lifetime,
            ttl,
            subnets,
            security_groups,
            availability_zones,
            root_size_bytes,
        }))
    }

    /// A string field rendered at compile time (`vars` only).
    pub(super) fn text(
        &mut self,
        path: &str,
        text: Option<&str>,
        ctx: &StepCtx<'_>,
    ) -> Option<String> {
        self.render_compile_time(path, text?, ctx.vars_ctx)
    }

    /// `subnets`, or the one `subnet`; each decides its zone, so neither goes with `availability_zones`.
    pub(super) fn subnets(&mut self, path: &str, raw: &RawStep, ctx: &StepCtx<'_>) -> Vec<String> {
        if raw.subnet.is_some() && raw.subnets.is_some() {
            self.error_help(
                self.key_at(&format!("{path}.subnets")),
                "`subnet` and `subnets` together",
                "list every subnet under `subnets` (one per availability zone)",
            );
        }
        let zones_too = raw.availability_zones.is_some();
        let subnets = match (&raw.subnet, &raw.subnets) {
            (Some(one), None) => self
                .text(&format!("{path}.subnet"), Some(one.as_str()), ctx)
                .into_iter()
                .collect(),
            _ => self.texts(&format!("{path}.subnets"), raw.subnets.as_deref(), ctx),
        };
        if let Some(i) = (1..subnets.len()).find(|&i| subnets[..i].contains(&subnets[i])) {
            self.error_help(
                self.at(&format!("{path}.subnets[{i}]")),
                format!("subnet `{}` is listed twice", subnets[i]),
                "list each subnet once, one per availability zone",
            );
        }
        if zones_too && (raw.subnet.is_some() || raw.subnets.is_some()) {
            self.error_help(
                self.key_at(&format!("{path}.availability_zones")),
                "`availability_zones` with a subnet: a subnet lies in one zone, and decides it",
                "drop `availability_zones`, and list one subnet per zone under `subnets` in the order to try",
            );
        }
        subnets
    }

    /// A list of strings rendered at compile time; an entry that fails is reported and left out.
    pub(super) fn texts(
        &mut self,
        path: &str,
        list: Option<&[String]>,
        ctx: &StepCtx<'_>,
    ) -> Vec<String> {
        list.unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| self.render_compile_time(&format!("{path}[{i}]"), t, ctx.vars_ctx))
            .collect()
    }

    /// The instance a step runs on or attaches to: the named one, or the only one.
    pub(super) fn host_ref(
        &mut self,
        me: &str,
        path: &str,
        field: &str,
        given: Option<&String>,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
    ) -> Option<String> {
        let origin = format!("{path}.{field}");
        match given {
            Some(host) => {
                if !self.step_ref(me, host, &origin, ctx, field) {
                    return None;
                }
                if !ctx.names.instances.contains(host) {
                    self.error_help(
                        self.at(&origin),
                        format!("`{field}` must name an instance step, but `{host}` is not one"),
                        format!("the instance steps are: {}", ctx.names.instances.join(", ")),
                    );
                    return None;
                }
                deps.push((host.clone(), origin));
                Some(host.clone())
            }
            None if ctx.names.instances.len() == 1 => {
                deps.push((ctx.names.instances[0].clone(), origin));
                Some(ctx.names.instances[0].clone())
            }
            None => {
                let help = if ctx.names.instances.is_empty() {
                    "add a step with `kind: instance`".to_string()
                } else {
                    format!(
                        "set `{field}:` to one of: {}",
                        ctx.names.instances.join(", ")
                    )
                };
                self.error_help(
                    self.key_at(path),
                    format!("step `{me}` needs `{field}`: which instance?"),
                    help,
                );
                None
            }
        }
    }

    pub(super) fn volume(
        &mut self,
        me: &str,
        path: &str,
        raw: &RawStep,
        ctx: &StepCtx<'_>,
        deps: &mut Vec<(String, String)>,
    ) -> Option<StepKind> {
        let attach_to = self.host_ref(me, path, "attach_to", raw.attach_to.as_ref(), ctx, deps);
        let size = match &raw.size {
            Some(s) => self.size(&format!("{path}.size"), Some(s), ctx.vars_ctx),
            None => {
                self.error_help(
                    self.key_at(path),
                    format!("volume step `{me}` needs `size`"),
                    "e.g. `size: 300GiB`",
                );
                None
            }
        };
        let volume_type = raw.volume_type.clone().unwrap_or_else(|| "gp3".to_string());
        if !VOLUME_TYPES.contains(&volume_type.as_str()) {
            self.error_help(
                self.at(&format!("{path}.type")),
                format!("unknown EBS volume type `{volume_type}`"),
                format!("expected one of: {}", VOLUME_TYPES.join(", ")),
            );
        }
        let mount = match &raw.mount {
            Some(m) if template::is_template(m) => Some(m.clone()),
            Some(m) if m.starts_with('/') => self.safe_mount(path, m).then(|| m.clone()),
            Some(m) => {
                self.error_help(
                    self.at(&format!("{path}.mount")),
                    format!("mount point `{m}` is not an absolute path"),
                    "e.g. `mount: /mnt/training`",
                );
                None
            }
            None => {
                self.error_help(
                    self.key_at(path),
                    format!("volume step `{me}` needs `mount`"),
                    "e.g. `mount: /mnt/training`",
                );
                None
            }
        };
        Some(StepKind::Volume(VolumeSpec {
            attach_to: attach_to?,
            size_bytes: size?,
            volume_type,
            iops: raw.iops,
            throughput: raw.throughput,
            mount: mount?,
            keep: raw.keep.unwrap_or(false),
        }))
    }

    /// A step's `env:` cannot set the host wrapper's own protocol variables (docs/HOST_PROTOCOL.md): a step that
    /// set `SORTIE_HOME` or `SORTIE_STEP_DIR` would point the wrapper somewhere else.
    pub(super) fn reserved_env(&mut self, path: &str, key: &str) {
        if key.to_ascii_uppercase().starts_with("SORTIE_") {
            self.error_help(
                self.key_at(&format!("{path}.env.{key}")),
                format!("`{key}` is reserved for the host wrapper"),
                "variables starting with `SORTIE_` belong to sortie; choose another name",
            );
        }
    }

    /// A mount point is where a volume is linked (local) or mounted (AWS) on its host: `..` could reach outside
    /// the sandbox, and `/` would cover the whole host.
    pub(super) fn safe_mount(&mut self, path: &str, mount: &str) -> bool {
        let problem = if mount.split('/').any(|c| c == "..") {
            "contains `..`"
        } else if mount.split('/').all(|c| c.is_empty() || c == ".") {
            "is the root directory"
        } else {
            return true;
        };
        self.error_help(
            self.at(&format!("{path}.mount")),
            format!("mount point `{mount}` {problem}"),
            "mount a volume on its own directory, e.g. `mount: /mnt/training`",
        );
        false
    }

    pub(super) fn teardown(
        &mut self,
        me: &str,
        path: &str,
        raw: &RawStep,
        ctx: &StepCtx<'_>,
    ) -> Option<StepKind> {
        let destroys = match &raw.destroys {
            None => ctx.names.resources.to_vec(),
            Some(list) => {
                for (i, id) in list.iter().enumerate() {
                    let origin = format!("{path}.destroys[{i}]");
                    if self.step_ref(me, id, &origin, ctx, "destroys")
                        && !ctx.names.resources.contains(id)
                    {
                        self.error(
                            self.at(&origin),
                            format!("`{id}` is not an instance or volume step"),
                        );
                    }
                }
                list.clone()
            }
        };
        Some(StepKind::Teardown(TeardownSpec { destroys }))
    }
}
