//! The OpenAPI description of the gateway's HTTP endpoints, merged by the API crate into
//! the one document it serves (the socket itself is described in `create_terminal`'s text:
//! OpenAPI has no words for a WebSocket).

use crate::{CreateTerminal, TerminalCreated};
use utoipa::OpenApi;

/// The API's error body `{"error":{"code","message"}}`, named rather than typed: its type
/// lives in rnr-http, which depends on this crate, and the served document defines it.
pub(crate) const ERROR_BODY: &str = "#/components/schemas/ErrorBody";

#[derive(OpenApi)]
#[openapi(
    paths(
        crate::create_terminal,
        crate::delete_terminal,
        crate::recording_by_key,
        crate::recording_by_token,
    ),
    components(schemas(CreateTerminal, TerminalCreated)),
    tags((name = "terminals", description = "Root shells in the browser (docs/terminal-protocol.md)")),
)]
pub struct TerminalApiDoc;
