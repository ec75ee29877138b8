//! The one converter from an AWS SDK error (EC2, SSM, S3: all share smithy's `SdkError`) to sortie's: the
//! operation, the service's error code and message, and the request id, as fields. EC2's errors are unmodeled,
//! and the SDK's `DisplayErrorContext` would print the whole raw response for them; an error with no answer
//! (network, timeout, credentials) has no code and keeps the chain of causes as its message.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::RequestId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {}", self.cause())]
pub struct AwsError {
    /// What sortie was doing, e.g. `RunInstances g5.2xlarge in us-east-1a` or `S3 PutObject s3://b/k`.
    pub op: String,
    /// The service's error code (`InsufficientInstanceCapacity`, `AccessDenied`, ...), when it answered.
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
    pub help: Option<String>,
}

impl AwsError {
    pub fn from_sdk<E>(op: impl Into<String>, err: &SdkError<E>) -> AwsError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        let op = op.into();
        match (err.as_service_error(), err.code()) {
            (Some(_), Some(code)) => AwsError {
                op,
                code: Some(code.to_string()),
                message: err.message().unwrap_or("(no message)").to_string(),
                // EC2 puts it in the error body (the metadata), S3 and SSM in a header.
                request_id: err
                    .meta()
                    .request_id()
                    .or_else(|| err.request_id())
                    .map(str::to_string),
                help: None,
            },
            _ => AwsError {
                op,
                code: None,
                message: DisplayErrorContext(err).to_string(),
                request_id: None,
                help: None,
            },
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> AwsError {
        self.help = Some(help.into());
        self
    }

    pub fn help(&self) -> Option<String> {
        self.help.clone()
    }

    /// `CODE: message (request id …)`, or the message alone when the service did not answer.
    pub fn cause(&self) -> String {
        let mut text = match &self.code {
            Some(code) => format!("{code}: {}", self.message),
            None => self.message.clone(),
        };
        if let Some(id) = &self.request_id {
            text.push_str(&format!(" (request id {id})"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::config::http::HttpResponse;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_s3::primitives::SdkBody;

    fn service_error(code: &str, message: &str) -> SdkError<ErrorMetadata> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message(message)
            .custom("aws_request_id", "req-1")
            .build();
        let raw = HttpResponse::new(
            400u16.try_into().expect("status"),
            SdkBody::from("<raw xml/>"),
        );
        SdkError::service_error(meta, raw)
    }

    #[test]
    fn a_service_error_keeps_code_message_and_request_id_as_fields() {
        let e = AwsError::from_sdk(
            "RunInstances g5.2xlarge",
            &service_error("Unsupported", "not here"),
        );
        assert_eq!(e.code.as_deref(), Some("Unsupported"));
        assert_eq!(e.message, "not here");
        assert_eq!(
            e.to_string(),
            "RunInstances g5.2xlarge: Unsupported: not here (request id req-1)"
        );
        assert!(
            !e.to_string().contains("raw xml"),
            "the raw response leaked: {e}"
        );
        let e: crate::error::Error = e.with_help("try another zone").into();
        assert_eq!(e.help().as_deref(), Some("try another zone"));
        assert_eq!(
            e.render(),
            "error: RunInstances g5.2xlarge: Unsupported: not here (request id req-1)\n  = help: try another zone"
        );
    }
}
