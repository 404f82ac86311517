//! The gateway's errors; each names the machine or terminal it concerns, and maps to an
//! HTTP status + code before a WebSocket exists, or to a close code + reason after.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("machine {0} not found")]
    MachineNotFound(String),
    #[error("machine {machine} is {state}, not running")]
    MachineNotRunning { machine: String, state: String },
    #[error("machine {machine} already has {limit} open terminals, the most allowed")]
    LimitReached { machine: String, limit: usize },
    #[error("terminal {0}: invalid token")]
    TokenInvalid(String),
    #[error("terminal {0}: token expired; ask the API for a new one")]
    TokenExpired(String),
    #[error(
        "terminal {terminal} on machine {machine}: the agent cannot hold the session: {message}"
    )]
    Agent {
        terminal: String,
        machine: String,
        message: String,
    },
    #[error("terminal {0} not found")]
    TerminalNotFound(String),
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("origin {0:?} is not allowed to open terminals")]
    OriginRejected(String),
    #[error("terminal {terminal}: recording: {source}")]
    Recording {
        terminal: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a WebSocket handshake: {0}")]
    Handshake(String),
    /// A frame the WebSocket protocol (with the negotiated extensions) does not allow.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
    #[error("message too big: more than {0} bytes")]
    MessageTooBig(usize),
    #[error("invalid compressed message: {0}")]
    BadCompression(String),
    #[error(transparent)]
    Core(#[from] rnr_core::CoreError),
}

impl GatewayError {
    /// HTTP status and stable code for the API's error shape.
    pub fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MachineNotFound(_) => (StatusCode::NOT_FOUND, "machine_not_found"),
            Self::MachineNotRunning { .. } => (StatusCode::CONFLICT, "machine_not_running"),
            Self::LimitReached { .. } => (StatusCode::TOO_MANY_REQUESTS, "terminal_limit_reached"),
            Self::TokenInvalid(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::TokenExpired(_) => (StatusCode::UNAUTHORIZED, "token_expired"),
            Self::Agent { .. } => (StatusCode::SERVICE_UNAVAILABLE, "agent_unavailable"),
            Self::TerminalNotFound(_) => (StatusCode::NOT_FOUND, "terminal_not_found"),
            Self::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::OriginRejected(_) => (StatusCode::FORBIDDEN, "origin_rejected"),
            Self::Recording { .. } => (StatusCode::NOT_FOUND, "recording_not_found"),
            Self::Handshake(_) => (StatusCode::BAD_REQUEST, "not_a_websocket_handshake"),
            // Found on an open socket only (see `close`); never an HTTP answer.
            Self::Protocol(_) | Self::MessageTooBig(_) | Self::BadCompression(_) => {
                (StatusCode::BAD_REQUEST, "websocket_protocol_error")
            }
            Self::Core(rnr_core::CoreError::NotFound(_)) => {
                (StatusCode::NOT_FOUND, "machine_not_found")
            }
            Self::Core(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// WebSocket close code and reason, for errors found after the upgrade.
    pub fn close(&self) -> (u16, String) {
        let code = match self {
            Self::TokenInvalid(_) => crate::close::TOKEN_INVALID,
            Self::TokenExpired(_) => crate::close::TOKEN_EXPIRED,
            Self::MachineNotFound(_) | Self::MachineNotRunning { .. } => crate::close::MACHINE_GONE,
            Self::Core(rnr_core::CoreError::NotFound(_)) => crate::close::MACHINE_GONE,
            Self::LimitReached { .. } => crate::close::LIMIT_REACHED,
            Self::Agent { .. } => crate::close::AGENT_UNAVAILABLE,
            Self::Protocol(_) => crate::close::PROTOCOL_ERROR,
            Self::MessageTooBig(_) => crate::close::MESSAGE_TOO_BIG,
            Self::BadCompression(_) => crate::close::INVALID_DATA,
            _ => crate::close::INTERNAL,
        };
        (code, crate::close::reason(&self.to_string()))
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        if status.is_server_error() {
            tracing::error!(code, message = %self, "terminal request failed");
        }
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        (status, axum::Json(body)).into_response()
    }
}
