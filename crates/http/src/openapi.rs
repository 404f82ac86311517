//! The OpenAPI document, generated from the handlers' annotations and the wire types.

use crate::checks::{
    CheckResultOutput, CheckRunOutput, StartChecksOutput, StartChecksRequest, WebhookOutput,
};
use crate::error::{ErrorBody, ErrorDetail};
use crate::machines::{
    CreateMachineRequest, ExecInput, ExecOutput, LimitsInput, LimitsOutput, MachineList,
    MachineOutput,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
        crate::checks::start_checks,
        crate::checks::get_checks,
        crate::checks::stream_checks,
        crate::checks::activity,
    ),
    components(schemas(
        CreateMachineRequest, LimitsInput, LimitsOutput, MachineOutput, MachineList,
        ExecInput, ExecOutput, ErrorBody, ErrorDetail,
        StartChecksRequest, StartChecksOutput, CheckRunOutput, CheckResultOutput, WebhookOutput
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// The served document: the API's own paths, the gateway's when it is mounted, and those of
/// other parts (`parts`, e.g. the web UI's links), merged into one. The parts refer to the
/// API's `ErrorBody` schema and `api_key` scheme, which this document defines.
pub fn document(
    gateway: bool,
    parts: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if gateway {
        doc.merge(rnr_terminal::TerminalApiDoc::openapi());
    }
    for part in parts {
        doc.merge(part);
    }
    doc
}

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
    fn the_gateway_paths_are_merged_and_every_reference_resolves() {
        let doc = serde_json::to_value(document(true, [])).unwrap();
        assert!(doc["paths"]["/api/v1/machines"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/machines/{id}/terminals"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/terminals/{id}/recording"]["get"].is_object());
        assert_eq!(dangling(&doc), Vec::new());
        let without = serde_json::to_value(document(false, [])).unwrap();
        assert!(without["paths"]["/api/v1/machines/{id}/terminals"].is_null());
    }

    #[test]
    fn a_reference_to_a_missing_schema_is_caught() {
        // The gateway's document alone names the API's error body without defining it.
        let doc = serde_json::to_value(rnr_terminal::TerminalApiDoc::openapi()).unwrap();
        let missing = dangling(&doc);
        assert!(
            missing
                .iter()
                .any(|(_, r)| r == "#/components/schemas/ErrorBody"),
            "{missing:?}"
        );
    }
}
