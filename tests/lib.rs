//! Integration and end-to-end tests: one test binary, one module per feature (as in casey/just).

mod test_builder;

mod examples;
mod graph;
mod invalid_plans;
mod properties;
mod schema;
mod variables;
