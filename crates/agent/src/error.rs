//! Errors as the API reports them: an HTTP status and `{"code", "message"}`. The domain's
//! [`AgentError`] gets its status and EC2 code here, and only here.

use crate::instances::AgentError;
use agent_types::ErrorBody;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// EC2-style code (`InvalidParameterValue`, `InvalidInstanceID.NotFound`, ...).
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl ApiError {
    /// 400 with `code`.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// 404 with `code`.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message: message.into(),
        }
    }

    /// 500: the agent failed.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalError",
            message: message.into(),
        }
    }
}

/// The status and EC2 code of each domain error.
fn status_and_code(e: &AgentError) -> (StatusCode, &'static str) {
    use AgentError as E;
    match e {
        E::InstanceNotFound { .. } => (StatusCode::NOT_FOUND, "InvalidInstanceID.NotFound"),
        E::ImageNotFound { .. } => (StatusCode::NOT_FOUND, "InvalidImageID.NotFound"),
        E::UnknownImage { .. } => (StatusCode::BAD_REQUEST, "InvalidImageID.NotFound"),
        E::UnknownInstanceType { .. } => (StatusCode::BAD_REQUEST, "InvalidInstanceType"),
        E::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "InvalidParameterValue"),
        E::InsufficientCapacity { .. } => (StatusCode::BAD_REQUEST, "InsufficientInstanceCapacity"),
        E::AddressesExhausted => (StatusCode::BAD_REQUEST, "InsufficientAddressCapacity"),
        E::ImageInUse { .. } => (StatusCode::CONFLICT, "InvalidImage.InUse"),
        E::IncorrectState { .. } => (StatusCode::CONFLICT, "IncorrectInstanceState"),
        E::TagLimit { .. } => (StatusCode::BAD_REQUEST, "TagLimitExceeded"),
        E::Database(_) | E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let (status, code) = status_and_code(&e);
        if status.is_server_error() {
            log::error!("{e}");
        }
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_types::InstanceState;

    #[test]
    fn domain_errors_keep_their_statuses_codes_and_messages() {
        let cases: Vec<(AgentError, u16, &str, &str)> = vec![
            (
                AgentError::InstanceNotFound { id: "i-1".into() },
                404,
                "InvalidInstanceID.NotFound",
                "no instance i-1",
            ),
            (
                AgentError::ImageNotFound { id: "img-1".into() },
                404,
                "InvalidImageID.NotFound",
                "no image img-1",
            ),
            (
                AgentError::UnknownImage { id: "img-1".into() },
                400,
                "InvalidImageID.NotFound",
                "no image \"img-1\"",
            ),
            (
                AgentError::UnknownInstanceType {
                    name: "e9.huge".into(),
                },
                400,
                "InvalidInstanceType",
                "unknown instance type \"e9.huge\"; see GET /v1/types",
            ),
            (
                AgentError::invalid("count must be at least 1"),
                400,
                "InvalidParameterValue",
                "count must be at least 1",
            ),
            (
                AgentError::InsufficientCapacity {
                    count: 2,
                    instance_type: "e1.large".into(),
                    want_mib: 4096,
                    left_mib: 100,
                },
                400,
                "InsufficientInstanceCapacity",
                "2 x e1.large needs 4096 MiB; the host has 100 MiB left for instances",
            ),
            (
                AgentError::AddressesExhausted,
                400,
                "InsufficientAddressCapacity",
                "the subnet is full",
            ),
            (
                AgentError::ImageInUse { id: "img-1".into() },
                409,
                "InvalidImage.InUse",
                "image img-1 is used by instances that are not terminated",
            ),
            (
                AgentError::IncorrectState {
                    id: "i-1".into(),
                    state: InstanceState::Terminated,
                    allowed: "stopped",
                    done: "started",
                },
                409,
                "IncorrectInstanceState",
                "instance i-1 is terminated; only stopped instances can be started",
            ),
            (
                AgentError::Internal("disk full".into()),
                500,
                "InternalError",
                "disk full",
            ),
        ];
        for (e, status, code, message) in cases {
            let a = ApiError::from(e);
            assert_eq!(
                (a.status.as_u16(), a.code, a.message.as_str()),
                (status, code, message)
            );
        }
    }
}
