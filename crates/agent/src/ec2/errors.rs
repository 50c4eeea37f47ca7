//! EC2's errors: each has EC2's code and HTTP status, and is answered as EC2's error
//! document. The domain's [`AgentError`] becomes an EC2 code here, and only here (as
//! `crate::error` does for the JSON API).
//!
//! Authentication failures carry fixed messages: a client that fails to authenticate
//! learns the code and nothing else (not the canonical request, not whether a key exists
//! beyond what the code says).

use super::xml::Xml;
use crate::instances::AgentError;
use axum::http::StatusCode;

/// Why an EC2 request failed.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// No `Authorization` header.
    #[error("The request must contain a valid access key ID and a Signature Version 4 signature.")]
    MissingAuthenticationToken,
    /// The `Authorization` header or the signing headers are not SigV4's form.
    #[error("The request signature does not conform to AWS standards.")]
    IncompleteSignature,
    /// The access key is not in the credentials file.
    #[error("AWS was not able to validate the provided access credentials")]
    AuthFailure,
    /// The signature (or its scope) does not match the request.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.")]
    SignatureDoesNotMatch,
    /// `X-Amz-Date` is outside the window around emberd's clock.
    #[error("Request has expired.")]
    RequestExpired,
    /// No `Action`.
    #[error("The request must contain the parameter Action.")]
    MissingAction,
    /// An action emberd does not serve.
    #[error("The action {0} is not valid for this web service.")]
    InvalidAction(String),
    /// A required parameter is absent (its name).
    #[error("The request must contain the parameter {0}")]
    MissingParameter(String),
    /// A parameter emberd does not take (its name).
    #[error("The parameter {0} is not recognized")]
    UnknownParameter(String),
    /// A parameter breaks its rule; the message names both.
    #[error("{0}")]
    InvalidParameterValue(String),
    /// Parameters that cannot be given together.
    #[error("{0}")]
    InvalidParameterCombination(String),
    /// The form (body or query) is not form-encoded UTF-8.
    #[error("{0}")]
    MalformedQueryString(String),
    /// The body is over the limit (bytes).
    #[error("The request body is over {0} bytes.")]
    RequestTooLarge(usize),
    /// The body did not arrive in time (seconds).
    #[error("The request body did not arrive within {0} s.")]
    RequestTimeout(u64),
    /// Not `GET /` or `POST /`.
    #[error("{0}")]
    InvalidRequest(String),
    /// `DryRun=true` on a request that would have been carried out.
    #[error("Request would have succeeded, but DryRun flag is set.")]
    DryRunOperation,
    /// An instance id that is not one's shape.
    #[error("Invalid id: \"{0}\"")]
    InvalidInstanceIdMalformed(String),
    /// Instance ids that do not exist.
    #[error("{}", not_found("instance ID", .0))]
    InvalidInstanceIdNotFound(Vec<String>),
    /// An image id that is not one's shape.
    #[error("Invalid id: \"{0}\" (expecting \"img-...\")")]
    InvalidAmiIdMalformed(String),
    /// Image ids that do not exist.
    #[error("The image id '[{}]' does not exist", .0.join(", "))]
    InvalidAmiIdNotFound(Vec<String>),
    /// A resource id (tags) that is neither an instance's nor an image's shape.
    #[error("The ID '{0}' is not valid")]
    InvalidId(String),
    /// Instance types not in the catalogue (DescribeInstanceTypes).
    #[error("The following supplied instance types do not exist: [{}]", .0.join(", "))]
    InvalidInstanceType(Vec<String>),
    /// User data that is not base64, or too large.
    #[error("{0}")]
    InvalidUserData(String),
    /// A `NextToken` emberd did not give.
    #[error("The token '{0}' is invalid")]
    InvalidNextToken(String),
    /// A filter name the action does not have.
    #[error("The filter '{0}' is invalid")]
    InvalidFilter(String),
    /// The domain's error.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// EC2's wording for missing ids: one, or several.
fn not_found(what: &str, ids: &[String]) -> String {
    match ids {
        [one] => format!("The {what} '{one}' does not exist"),
        many => format!("The {what}s '{}' do not exist", many.join(", ")),
    }
}

impl Ec2Error {
    /// EC2's code and HTTP status.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use Ec2Error as E;
        use StatusCode as S;
        match self {
            E::MissingAuthenticationToken => ("MissingAuthenticationToken", S::UNAUTHORIZED),
            E::IncompleteSignature => ("IncompleteSignature", S::BAD_REQUEST),
            E::AuthFailure => ("AuthFailure", S::UNAUTHORIZED),
            E::SignatureDoesNotMatch => ("SignatureDoesNotMatch", S::FORBIDDEN),
            E::RequestExpired => ("RequestExpired", S::BAD_REQUEST),
            E::MissingAction => ("MissingAction", S::BAD_REQUEST),
            E::InvalidAction(_) => ("InvalidAction", S::BAD_REQUEST),
            E::MissingParameter(_) => ("MissingParameter", S::BAD_REQUEST),
            E::UnknownParameter(_) => ("UnknownParameter", S::BAD_REQUEST),
            E::InvalidParameterValue(_) => ("InvalidParameterValue", S::BAD_REQUEST),
            E::InvalidParameterCombination(_) => ("InvalidParameterCombination", S::BAD_REQUEST),
            E::MalformedQueryString(_) => ("MalformedQueryString", S::BAD_REQUEST),
            E::RequestTooLarge(_) => ("RequestTooLarge", S::PAYLOAD_TOO_LARGE),
            E::RequestTimeout(_) => ("RequestTimeout", S::REQUEST_TIMEOUT),
            E::InvalidRequest(_) => ("InvalidRequest", S::BAD_REQUEST),
            E::DryRunOperation => ("DryRunOperation", S::PRECONDITION_FAILED),
            E::InvalidInstanceIdMalformed(_) => ("InvalidInstanceID.Malformed", S::BAD_REQUEST),
            E::InvalidInstanceIdNotFound(_) => ("InvalidInstanceID.NotFound", S::BAD_REQUEST),
            E::InvalidAmiIdMalformed(_) => ("InvalidAMIID.Malformed", S::BAD_REQUEST),
            E::InvalidAmiIdNotFound(_) => ("InvalidAMIID.NotFound", S::BAD_REQUEST),
            E::InvalidId(_) => ("InvalidID", S::BAD_REQUEST),
            E::InvalidInstanceType(_) => ("InvalidInstanceType", S::BAD_REQUEST),
            E::InvalidUserData(_) => ("InvalidUserData.Malformed", S::BAD_REQUEST),
            E::InvalidNextToken(_) => ("InvalidNextToken", S::BAD_REQUEST),
            E::InvalidFilter(_) => ("InvalidParameterValue", S::BAD_REQUEST),
            E::Agent(e) => agent_code(e),
        }
    }

    /// The message the client gets: the domain's own, except for the agent's failures,
    /// whose detail is logged rather than answered.
    pub fn message(&self) -> String {
        match self {
            Ec2Error::Agent(AgentError::Database(_) | AgentError::Internal(_)) => {
                "An internal error has occurred".into()
            }
            Ec2Error::Agent(AgentError::UnknownInstanceType { name }) => {
                format!("Invalid value '{name}' for InstanceType.")
            }
            Ec2Error::Agent(AgentError::InstanceNotFound { id }) => {
                not_found("instance ID", std::slice::from_ref(id))
            }
            Ec2Error::Agent(AgentError::UnknownImage { id } | AgentError::ImageNotFound { id }) => {
                format!("The image id '[{id}]' does not exist")
            }
            e => e.to_string(),
        }
    }

    /// An [`Ec2Error::InvalidParameterValue`].
    pub fn invalid(message: impl Into<String>) -> Ec2Error {
        Ec2Error::InvalidParameterValue(message.into())
    }
}

/// The EC2 code and status of each domain error.
fn agent_code(e: &AgentError) -> (&'static str, StatusCode) {
    use AgentError as E;
    use StatusCode as S;
    match e {
        E::InstanceNotFound { .. } => ("InvalidInstanceID.NotFound", S::BAD_REQUEST),
        E::ImageNotFound { .. } | E::UnknownImage { .. } => {
            ("InvalidAMIID.NotFound", S::BAD_REQUEST)
        }
        // EC2 answers a run of a type it does not have this way.
        E::UnknownInstanceType { .. } => ("InvalidParameterValue", S::BAD_REQUEST),
        E::InvalidParameter { .. } => ("InvalidParameterValue", S::BAD_REQUEST),
        // A server error in EC2 (botocore retries it, as it does EC2's).
        E::InsufficientCapacity { .. } => {
            ("InsufficientInstanceCapacity", S::INTERNAL_SERVER_ERROR)
        }
        E::AddressesExhausted => ("InsufficientFreeAddressesInSubnet", S::BAD_REQUEST),
        E::ImageInUse { .. } => ("InvalidParameterValue", S::BAD_REQUEST),
        E::IncorrectState { .. } => ("IncorrectInstanceState", S::BAD_REQUEST),
        E::TagLimit { .. } => ("TagLimitExceeded", S::BAD_REQUEST),
        E::Database(_) | E::Internal(_) => ("InternalError", S::INTERNAL_SERVER_ERROR),
    }
}

/// EC2's error document: `<Response><Errors><Error><Code>..</Code><Message>..</Message>
/// </Error></Errors><RequestID>..</RequestID></Response>`.
pub fn document(code: &str, message: &str, request_id: &str) -> Vec<u8> {
    let mut x = Xml::new();
    x.open("Response");
    x.open("Errors");
    x.open("Error");
    x.leaf("Code", code);
    x.leaf("Message", message);
    x.close("Error");
    x.close("Errors");
    x.leaf("RequestID", request_id);
    x.close("Response");
    x.finish()
}

/// A whole HTTP answer with EC2's error document, for requests the router never saw (a
/// malformed, oversized or late head: `crate::serve`'s checks).
pub fn head_error(status: u16, code: &str, message: &str) -> Vec<u8> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = document(code, message, &super::request_id());
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/xml;charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_types::InstanceState;

    #[test]
    fn domain_errors_get_ec2s_codes_and_internal_detail_stays_in() {
        let cases: Vec<(AgentError, &str, u16, &str)> = vec![
            (
                AgentError::InstanceNotFound { id: "i-1".into() },
                "InvalidInstanceID.NotFound",
                400,
                "The instance ID 'i-1' does not exist",
            ),
            (
                AgentError::UnknownImage { id: "img-1".into() },
                "InvalidAMIID.NotFound",
                400,
                "The image id '[img-1]' does not exist",
            ),
            (
                AgentError::UnknownInstanceType {
                    name: "m5.large".into(),
                },
                "InvalidParameterValue",
                400,
                "Invalid value 'm5.large' for InstanceType.",
            ),
            (
                AgentError::InsufficientCapacity {
                    count: 2,
                    instance_type: "e1.large".into(),
                    want_mib: 4096,
                    left_mib: 100,
                },
                "InsufficientInstanceCapacity",
                500,
                "2 x e1.large needs 4096 MiB; the host has 100 MiB left for instances",
            ),
            (
                AgentError::AddressesExhausted,
                "InsufficientFreeAddressesInSubnet",
                400,
                "the subnet is full",
            ),
            (
                AgentError::IncorrectState {
                    id: "i-1".into(),
                    state: InstanceState::Terminated,
                    allowed: "stopped",
                    done: "started",
                },
                "IncorrectInstanceState",
                400,
                "instance i-1 is terminated; only stopped instances can be started",
            ),
            (
                AgentError::TagLimit {
                    id: "i-1".into(),
                    count: 51,
                    limit: 50,
                },
                "TagLimitExceeded",
                400,
                "instance i-1 would have 51 tags; at most 50 are allowed",
            ),
            (
                AgentError::Internal("/var/lib/emberd: disk full".into()),
                "InternalError",
                500,
                "An internal error has occurred",
            ),
        ];
        for (e, code, status, message) in cases {
            let e = Ec2Error::from(e);
            let (c, s) = e.code_and_status();
            assert_eq!(
                (c, s.as_u16(), e.message().as_str()),
                (code, status, message)
            );
        }
        let doc = String::from_utf8(document("C", "a < b", "r-1")).unwrap();
        assert!(doc.ends_with(
            "<Response><Errors><Error><Code>C</Code><Message>a &lt; b</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
        ));
    }
}
