//! Hosts: where a `run` step's script runs, under the host protocol (docs/HOST_PROTOCOL.md). `protocol` names
//! its states and exit codes; `local` is a sandbox directory whose steps the native supervisor (`native`) runs;
//! `ssm` is an EC2 instance reached through SSM Run Command, whose steps the shell wrapper (`wrapper.sh`) runs.
//! The other shell scripts here (volume.sh, ttl.sh) run on hosts too.

pub mod local;
pub mod native;
pub mod protocol;
pub mod ssm;
pub mod ssm_command_size;
pub mod ssm_files;
pub mod ssm_poll;
