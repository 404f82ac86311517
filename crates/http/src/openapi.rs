//! The OpenAPI document, generated from the handlers' annotations and the wire types:
//! one document for every route that is part of the API — machines, checks, terminals,
//! links, the learner API the pages call, health and metrics. Only the pages, their
//! assets and the operator page's own calls are left out (the route table lists them).

use crate::checks::{
    CheckResultOutput, CheckRunOutput, StartChecksOutput, StartChecksRequest, WebhookOutput,
};
use crate::error::{ErrorBody, ErrorDetail};
use crate::learner::{
    CheckInfo, LearnerToken, LinkRequest, LinkResponse, Session, SessionMachine, SessionTerminal,
    Started,
};
use crate::machines::{
    CreateMachineRequest, ExecInput, ExecOutput, ExtendInput, LimitsInput, LimitsOutput,
    MachineList, MachineOutput,
};
use rnr_terminal::{CreateTerminal, TerminalCreated};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `rnr apikey create NAME`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "learner",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Rnr-Learner",
                "The learner token of the exercise page (data-learner): one learner, one \
                 exercise, an expiry; `?learner=` on the event stream",
            ))),
        );
    }
}

/// The errors an operation answers whatever its handler, added where its annotation does
/// not say them, so that the document cannot forget one: every route with a credential is
/// refused with 401 without it (the API-key middleware, the learner and token extractors);
/// every JSON body is read by one extractor (400 malformed, 413 too large, 415 not sent as
/// JSON, 422 a field wrong); path parameters that do not decode are 400, query parameters
/// that do not fit 422. All in the one error shape.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let item_params = item.parameters.clone().unwrap_or_default();
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let params: Vec<_> = op
                    .parameters
                    .iter()
                    .flatten()
                    .chain(&item_params)
                    .map(|p| p.parameter_in.clone())
                    .collect();
                let mut add = Vec::new();
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add.push((
                        "401",
                        "`unauthorized`, `token_expired` or `token_revoked`: no valid credential",
                    ));
                }
                if op.request_body.is_some() {
                    add.extend([
                        ("400", "`invalid_json`: the body is not JSON"),
                        ("413", "`payload_too_large`: the body is over the limit"),
                        ("415", "`unsupported_media_type`: the body is not sent as `application/json`"),
                        ("422", "`invalid_request`: a field is missing, unknown or wrong; the message names it"),
                    ]);
                }
                if params.iter().any(|p| matches!(p, ParameterIn::Path)) {
                    add.push(("400", "`bad_request`: a path parameter does not decode"));
                }
                if params.iter().any(|p| matches!(p, ParameterIn::Query)) {
                    add.push(("422", "`invalid_request`: a query parameter does not fit"));
                }
                for (status, description) in add {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description));
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "rootnroll API", description = "Throwaway Linux machines for interactive exercises."),
    paths(
        crate::machines::create_machine,
        crate::machines::list_machines,
        crate::machines::get_machine,
        crate::machines::delete_machine,
        crate::machines::exec_machine,
        crate::machines::extend_machine,
        crate::checks::start_checks,
        crate::checks::get_checks,
        crate::checks::stream_checks,
        crate::checks::activity,
        crate::terminals::create_terminal,
        crate::terminals::delete_terminal,
        crate::terminals::recording_by_key,
        crate::terminals::recording_by_token,
        crate::learner::create_link,
        crate::learner::session,
        crate::learner::refresh_token,
        crate::learner::reset,
        crate::learner::extend,
        crate::learner::start_checks,
        crate::learner::get_checks,
        crate::learner::events,
        crate::healthz,
        crate::readyz,
        crate::metrics,
        crate::openapi_json,
    ),
    components(schemas(
        CreateMachineRequest, LimitsInput, LimitsOutput, MachineOutput, MachineList,
        ExecInput, ExecOutput, ExtendInput, ErrorBody, ErrorDetail,
        StartChecksRequest, StartChecksOutput, CheckRunOutput, CheckResultOutput, WebhookOutput,
        CreateTerminal, TerminalCreated, LinkRequest, LinkResponse,
        Session, SessionMachine, SessionTerminal, CheckInfo, LearnerToken, Started
    )),
    tags(
        (name = "terminals", description = "Root shells in the browser (docs/terminal-protocol.md)"),
        (name = "links", description = "Signed learner links for an LMS (docs/embedding.md)"),
        (name = "learner", description = "What the exercise page calls, with its learner token (docs/embedding.md)"),
        (name = "ops", description = "Health, readiness, metrics and this document (public)"),
    ),
    modifiers(&BearerAuth, &CommonErrors),
)]
pub struct ApiDoc;

/// `(where, target)` of every `$ref` in an OpenAPI document as JSON, so that tests (and
/// anyone assembling a document from several crates' parts) can check each one resolves.
pub fn references(doc: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push((at.to_string(), r.clone())),
                        _ => walk(v, &format!("{at}/{k}"), out),
                    }
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn dangling(doc: &Value) -> Vec<(String, String)> {
        let all = references(doc);
        assert!(!all.is_empty(), "the document has references");
        all.into_iter()
            .filter(|(_, r)| r.strip_prefix('#').and_then(|p| doc.pointer(p)).is_none())
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_reference_resolves() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, method) in [
            ("/api/v1/machines", "post"),
            ("/api/v1/machines/{id}/extend", "post"),
            ("/api/v1/machines/{id}/terminals", "post"),
            ("/api/v1/terminals/{id}/recording", "get"),
            ("/terminals/{id}/recording", "get"),
            ("/api/v1/links", "post"),
            ("/learn/api/exercises/{name}/session", "post"),
            ("/learn/api/token", "post"),
            ("/healthz", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
        assert_eq!(dangling(&doc), Vec::new());
    }

    /// Found by schemathesis (crates/cli/tests/schemathesis.rs): 401 without a key, 415
    /// for a body not sent as JSON and 400 for one that is not JSON were answered by
    /// operations whose documentation did not list them.
    #[test]
    fn every_operation_documents_its_credential_and_body_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let has = |status: &str| {
                    op["responses"][status]["content"]["application/json"].is_object()
                };
                if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                    assert!(has("401"), "{method} {path}");
                }
                if op.get("requestBody").is_some() {
                    for status in ["400", "413", "415", "422"] {
                        assert!(has(status), "{status} of {method} {path}");
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen >= 6, "{seen} operations with a body");
        let checks = &doc["paths"]["/api/v1/checks/{id}"]["get"]["responses"];
        assert!(
            checks["401"].is_object() && checks["400"].is_object(),
            "{checks}"
        );
    }

    #[test]
    fn a_reference_to_a_missing_schema_is_caught() {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        doc["components"]["schemas"]
            .as_object_mut()
            .unwrap()
            .remove("ErrorBody");
        let missing = dangling(&doc);
        assert!(
            missing
                .iter()
                .any(|(_, r)| r == "#/components/schemas/ErrorBody"),
            "{missing:?}"
        );
    }
}
