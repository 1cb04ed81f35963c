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

use super::{deliveries, jobs, ops, ErrorBody, ErrorDetail};
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
        deliveries::create,
        deliveries::get,
        deliveries::replay,
        ops::egress,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        document,
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
        model::CallbackStatus,
        model::JobView,
        model::AttemptView,
        model::DeliveryView,
        model::NewDelivery,
        model::DeliveryAccepted,
        model::EgressView,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "The ASR flow: register a job, post its result, poll it."),
        (name = "deliveries", description = "Any callback outside the job flow, and replay."),
        (name = "operations", description = "Egress addresses, health, metrics, this document."),
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
