//! Integration and end-to-end tests: one test binary, one module per feature (as in casey/just).

mod aws_endpoint;

mod test_builder;

mod apply;
mod aws_apply;
mod aws_command_size;
mod aws_delays;
mod aws_gc;
mod aws_host_slots;
mod aws_iam;
mod aws_logs_follow;
mod aws_mistral;
mod aws_pacing;
mod aws_provider;
mod aws_reentry;
mod aws_spot;
mod budget;
mod confirm;
mod devenv;
mod doctor;
mod event_schema;
mod examples;
mod files;
mod fuzz_corpus;
mod graph;
mod host_watch;
mod injection;
mod invalid_plans;
mod notify;
mod properties;
mod quickstart;
mod reentry;
mod render;
mod robustness;
mod run_keys;
mod run_safety;
mod s3_apply;
mod schedule_examples;
mod schema;
mod secrets;
mod stall;
mod status_live;
mod store_suite;
mod variables;
mod wait_deadline;
