//! The OpenAPI 3 document of the API, generated from the handlers'
//! `#[utoipa::path]` annotations and the model's `ToSchema` derives, served
//! at `GET /openapi.json` and kept in the repository as `docs/openapi.json`
//! (a test fails when the two differ; `POSTBACK_BLESS=1 cargo test --test
//! it openapi` rewrites the file).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    console, customers, deliveries, destinations, jobs, ops, replays, ErrorBody, ErrorDetail,
};
use crate::error::ErrorCode;
use crate::model;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postback",
        description = "Reliable outbound callbacks for speech-to-text backends: register jobs, \
                       post their results, and Postback delivers signed callbacks, retried for 36 hours. \
                       Every `/v1` route needs `Authorization: Bearer <POSTBACK_API_TOKEN>`. \
                       Errors are `{\"error\": {\"code\", \"message\"}}` with a 4xx status."
    ),
    paths(
        jobs::create,
        jobs::get,
        jobs::post_result,
        deliveries::list,
        deliveries::create,
        deliveries::get,
        deliveries::replay,
        replays::replay,
        replays::stats,
        customers::put,
        customers::get,
        customers::delete,
        customers::rotate_secret,
        destinations::list,
        destinations::reset,
        ops::egress,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        document,
        console::page,
        console::css,
        console::js,
    ),
    components(schemas(
        model::Method,
        model::CallbackType,
        model::TranscriptFormat,
        model::Include,
        model::StreamName,
        model::CallbackAuth,
        model::CallbackSpec,
        model::Publish,
        model::NewJob,
        model::Word,
        model::Transcript,
        model::JobOutput,
        model::MediaStream,
        model::ResultStatus,
        model::JobError,
        model::JobResult,
        model::JobStatus,
        model::DeliveryState,
        model::DeliveryKind,
        model::CustomerRequest,
        model::CustomerView,
        model::SecretInfo,
        model::RotateSecret,
        model::RotatedSecret,
        model::DestinationView,
        model::DestinationList,
        model::ResetDestination,
        model::CallbackStatus,
        model::JobView,
        model::AttemptView,
        model::DeliveryView,
        model::NewDelivery,
        model::DeliveryAccepted,
        model::DeliveryFilter,
        model::DeliverySummary,
        model::DeliveryList,
        model::ReplayRequest,
        model::ReplayReport,
        model::QueueStats,
        model::EgressView,
        ErrorBody,
        ErrorDetail,
        ErrorCode,
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "The ASR flow: register a job, post its result, poll it."),
        (name = "deliveries", description = "Any callback outside the job flow, and replay."),
        (name = "operations", description = "Egress addresses, health, metrics, queue stats, this document."),
        (name = "console", description = "The operator console: a web page served by the binary."),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the document refers to.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The value of POSTBACK_API_TOKEN."))
                    .build(),
            ),
        );
    }
}

/// The document as pretty-printed JSON (what `GET /openapi.json` serves).
pub fn openapi_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    })
    .clone()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3 document of this API.", content_type = "application/json"))
)]
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_error_code_property_is_an_enum_of_exactly_every_error_code() {
        let doc: Value = serde_json::from_str(&openapi_json()).expect("the document is JSON");
        let schemas = &doc["components"]["schemas"];
        let mut code = &schemas["ErrorDetail"]["properties"]["code"];
        if let Some(pointer) = code["$ref"].as_str() {
            code = doc
                .pointer(pointer.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling {pointer}"));
        }
        assert_eq!(code["type"], "string", "{code}");
        let listed: Vec<&str> = code["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("code is not an enum: {code}"))
            .iter()
            .map(|v| v.as_str().expect("string member"))
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
        assert!(
            schemas["ErrorDetail"]["required"]
                .as_array()
                .is_some_and(|r| r.contains(&"code".into())),
            "code is required"
        );
    }
}
