//! The S3 state store. NOT IMPLEMENTED YET: a helper is writing it (see the note in state_store.rs).

use std::path::Path;

use crate::error::{Error, Result};
use crate::state::RunState;

pub struct S3Store {
    _client: aws_sdk_s3::Client,
}

pub struct S3Lock;

fn missing() -> Error {
    Error::Runtime("the S3 state store is not implemented yet".into())
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, _bucket: &str, _prefix: &str, _plan: &str) -> S3Store {
        S3Store { _client: client }
    }
    pub async fn runs(&self) -> Result<Vec<String>> {
        Err(missing())
    }
    pub async fn load(&self, _run: &str) -> Result<Option<RunState>> {
        Err(missing())
    }
    pub async fn lock(&self, _run: &str, _plan_file: &Path) -> Result<S3Lock> {
        Err(missing())
    }
    pub async fn unlock(&self, _run: &str) -> Result<bool> {
        Err(missing())
    }
    pub async fn save(&self, _state: &mut RunState) -> Result<()> {
        Err(missing())
    }
}

impl S3Lock {
    pub async fn release(self) -> Result<()> {
        Err(missing())
    }
}
