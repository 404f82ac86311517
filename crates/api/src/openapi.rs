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

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
