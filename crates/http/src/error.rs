//! API errors: one JSON shape, a stable machine-readable code, the right status.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rnr_core::CoreError;
use rnr_driver::DriverError;
use serde::Serialize;
use utoipa::ToSchema;

/// `{"error":{"code":"…","message":"…"}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `machine_not_found`, `capacity_exceeded`, `invalid_request`.
    pub code: String,
    /// What went wrong and where, for a person.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let message = e.to_string();
        match e {
            CoreError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "machine_not_found", message)
            }
            CoreError::Capacity { .. } => Self {
                retry_after: Some(10),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "capacity_exceeded",
                    message,
                )
            },
            CoreError::Invalid { .. } => Self::invalid(message),
            CoreError::ImageNotFound(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "image_not_found", message)
            }
            CoreError::NotRunning { .. } => {
                Self::new(StatusCode::CONFLICT, "machine_not_running", message)
            }
            CoreError::Driver {
                source: DriverError::Unavailable(_),
                ..
            } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "driver_unavailable",
                message,
            ),
            CoreError::Driver { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "driver_error", message)
            }
            CoreError::Store(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let message = r.body_text();
        match r {
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
            }
            JsonRejection::JsonDataError(_) => Self::invalid(message),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is larger than {} bytes",
                    crate::MAX_BODY_BYTES
                ),
            ),
            other => Self::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
    }
}
