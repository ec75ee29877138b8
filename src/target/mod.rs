//! Targets: where a plan's hosts and volumes come from. `aws`: EC2 instances and EBS volumes (the local target's
//! sandboxes are in local_host.rs).

pub mod aws;
