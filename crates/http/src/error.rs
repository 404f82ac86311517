//! The one error of the HTTP layer: every route answers failures as
//! `{"error":{"code":"…","message":"…"}}` with a stable code and the right status, whichever
//! library the failure came from (the platform core, the checker, the terminal gateway, the
//! UI) or whether the request itself was malformed.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rnr_checker::CheckerError;
use rnr_core::CoreError;
use rnr_driver::DriverError;
use rnr_terminal::GatewayError;
use rnr_ui::UiError;
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

/// A failed request: status, stable code and message, rendered as [`ErrorBody`].
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which the request may succeed (`Retry-After`).
    retry_after: Option<u64>,
}

impl HttpError {
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

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(message: String) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        // Only a missing or wrong credential asks for one; a bad terminal token does not.
        let challenge = self.code == "unauthorized";
        let retry_after = self.retry_after;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<CoreError> for HttpError {
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
            CoreError::Quota { retry_after, .. } => Self {
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
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
            CoreError::NotReady { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
            }
            CoreError::Store(_) => Self::internal(message),
        }
    }
}

impl From<CheckerError> for HttpError {
    fn from(e: CheckerError) -> Self {
        let message = e.to_string();
        match e {
            CheckerError::Core { source, .. } => source.into(),
            CheckerError::ExerciseNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "exercise_not_found", message)
            }
            CheckerError::RunNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "check_run_not_found", message)
            }
            CheckerError::Invalid { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_exercise",
                message,
            ),
            CheckerError::NoExercisesDir(_)
            | CheckerError::NoExercise { .. }
            | CheckerError::InvalidRequest { .. } => Self::invalid(message),
            CheckerError::Setup { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "setup_failed", message)
            }
            CheckerError::Store(_) | CheckerError::Sandbox { .. } => Self::internal(message),
        }
    }
}

/// Refusals before a terminal's socket exists; after it, the same errors are close codes
/// ([`GatewayError::close`], docs/terminal-protocol.md).
impl From<GatewayError> for HttpError {
    fn from(e: GatewayError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            GatewayError::Core(core) => return core.into(),
            GatewayError::MachineNotFound(_) => (StatusCode::NOT_FOUND, "machine_not_found"),
            GatewayError::MachineNotRunning { .. } => (StatusCode::CONFLICT, "machine_not_running"),
            GatewayError::LimitReached { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "terminal_limit_reached")
            }
            GatewayError::TokenInvalid(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            GatewayError::TokenExpired(_) => (StatusCode::UNAUTHORIZED, "token_expired"),
            GatewayError::TokenRevoked(_) => (StatusCode::UNAUTHORIZED, "token_revoked"),
            GatewayError::Agent { .. } => (StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable"),
            GatewayError::TerminalNotFound(_) => (StatusCode::NOT_FOUND, "terminal_not_found"),
            GatewayError::OriginRejected(_) => (StatusCode::FORBIDDEN, "origin_rejected"),
            GatewayError::Recording { .. } => (StatusCode::NOT_FOUND, "recording_not_found"),
            // Found on an open socket only; never an HTTP answer in practice.
            GatewayError::Protocol(_)
            | GatewayError::MessageTooBig(_)
            | GatewayError::BadCompression(_) => {
                (StatusCode::BAD_REQUEST, "websocket_protocol_error")
            }
        };
        Self::new(status, code, message)
    }
}

impl From<UiError> for HttpError {
    fn from(e: UiError) -> Self {
        let message = e.to_string();
        match e {
            UiError::NotFound(_) => Self::not_found(message),
            UiError::ExtendLimit(_) => {
                Self::new(StatusCode::CONFLICT, "extend_limit_reached", message)
            }
            UiError::Invalid { .. } => Self::invalid(message),
            UiError::Unauthorized(_) => Self::unauthorized(&message),
            UiError::SessionExpired(_) => {
                Self::new(StatusCode::UNAUTHORIZED, "token_expired", message)
            }
            UiError::AnonymousDisabled => {
                Self::new(StatusCode::FORBIDDEN, "anonymous_disabled", message)
            }
            UiError::WrongExercise { .. } => {
                Self::new(StatusCode::FORBIDDEN, "wrong_exercise", message)
            }
            UiError::Core(e) => e.into(),
            UiError::Checker(e) => e.into(),
            UiError::Terminal(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for HttpError {
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

impl From<PathRejection> for HttpError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
    }
}

impl From<QueryRejection> for HttpError {
    fn from(r: QueryRejection) -> Self {
        Self::invalid(r.body_text())
    }
}
