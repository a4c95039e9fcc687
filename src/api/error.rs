//! API errors: every failure maps to a status and a stable machine code,
//! answered as `{"error": {"code": "...", "message": "..."}}`.

use crate::codes::ErrorCode;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ShuttingDown(String),
    #[error("{0}")]
    StateDiskFull(String),
    #[error("{0}")]
    EngineUnavailable(String),
    #[error("{0}")]
    AtCapacity(String),
    /// Another host runs the conversation; the message names it.
    #[error("{message}")]
    HeldElsewhere { holder: String, message: String },
    /// A `Range` no byte of a file of this length satisfies.
    #[error("the range selects no byte of the file ({0} bytes)")]
    RangeNotSatisfiable(u64),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        // Every code below has a status (`codes::tests`); 500 is unreachable.
        self.code()
            .http_status()
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::NotFound => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::TooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::TooMany(_) => ErrorCode::TooManyRuns,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::ShuttingDown(_) => ErrorCode::ShuttingDown,
            Self::StateDiskFull(_) => ErrorCode::StateDiskFull,
            Self::EngineUnavailable(_) => ErrorCode::RuntimeUnavailable,
            Self::HeldElsewhere { .. } => ErrorCode::ConversationHeldElsewhere,
            Self::AtCapacity(_) => ErrorCode::AtCapacity,
            Self::RangeNotSatisfiable(_) => ErrorCode::RangeNotSatisfiable,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let Self::HeldElsewhere { holder, .. } = &self {
            error["holder"] = json!(holder);
        }
        let body = Json(json!({ "error": error }));
        let mut resp = (self.status(), body).into_response();
        match self {
            Self::Unauthorized => {
                resp.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            // RFC 9110, 15.5.17: a 416 names the current length.
            Self::RangeNotSatisfiable(len) => {
                if let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut()
                        .insert(axum::http::header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}

/// How a refused run or session start answers, the same on the SSE and
/// the session endpoint.
impl From<crate::conversations::ConversationError> for ApiError {
    fn from(e: crate::conversations::ConversationError) -> Self {
        use crate::conversations::ConversationError;
        use crate::execute::ExecuteError;
        match e {
            ConversationError::TooManyRuns { .. } => ApiError::TooMany(e.to_string()),
            ConversationError::Execute(e @ ExecuteError::Busy) => ApiError::Conflict(e.to_string()),
            ConversationError::Execute(e @ ExecuteError::ShuttingDown) => {
                ApiError::ShuttingDown(e.to_string())
            }
            ConversationError::Execute(e @ ExecuteError::StateDiskFull { .. }) => {
                ApiError::StateDiskFull(e.to_string())
            }
            ConversationError::Execute(e @ ExecuteError::EngineUnavailable) => {
                ApiError::EngineUnavailable(e.to_string())
            }
            ConversationError::Execute(e @ ExecuteError::AtCapacity { .. }) => {
                ApiError::AtCapacity(e.to_string())
            }
            ConversationError::Execute(e @ ExecuteError::HeldElsewhere { .. }) => {
                let message = e.to_string();
                let ExecuteError::HeldElsewhere { holder, .. } = e else {
                    return ApiError::Unavailable(message);
                };
                ApiError::HeldElsewhere { holder, message }
            }
            e => ApiError::Unavailable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_the_codes() {
        let all = [
            (ApiError::Unauthorized, 401),
            (ApiError::BadRequest(String::new()), 400),
            (ApiError::NotFound, 404),
            (ApiError::Conflict(String::new()), 409),
            (ApiError::TooLarge(1), 413),
            (ApiError::TooMany(String::new()), 429),
            (ApiError::Unavailable(String::new()), 503),
            (ApiError::ShuttingDown(String::new()), 503),
            (ApiError::StateDiskFull(String::new()), 503),
            (ApiError::EngineUnavailable(String::new()), 503),
            (ApiError::AtCapacity(String::new()), 503),
            (
                ApiError::HeldElsewhere {
                    holder: String::new(),
                    message: String::new(),
                },
                409,
            ),
            (ApiError::RangeNotSatisfiable(1), 416),
        ];
        for (e, status) in all {
            assert_eq!(e.code().http_status().map(|s| s.as_u16()), Some(status));
        }
    }
}
