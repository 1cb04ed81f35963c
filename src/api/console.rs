//! The operator console at `GET /console` (SPEC §2 "Console"): one HTML
//! page, its stylesheet and its script, embedded in the binary with
//! `include_str!` (plain files under `src/api/console/`, no build step) and
//! served without a token: the page asks for the API token and sends it as
//! the bearer of every `/v1` call it makes.
//!
//! It owns serving those files and their headers; it must not answer any
//! data itself (the page reads the `/v1` API like any other client), and
//! nothing it serves may load anything from outside this server (the
//! Content-Security-Policy says so to the browser too).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::error::ErrorCode;

const INDEX: &str = include_str!("console/index.html");
const CSS: &str = include_str!("console/console.css");
const JS: &str = include_str!("console/console.js");

/// Only this server, no inline script, no framing: a page that holds an
/// operator's token loads nothing it did not ship with.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary only; a short cache keeps an
    // upgraded server's console fresh.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The operator console (HTML; asks for the API token).
#[utoipa::path(
    get,
    path = "/console",
    operation_id = "console",
    tag = "console",
    security(()),
    responses((status = 200, description = "The console page.", content_type = "text/html"))
)]
pub async fn page() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// A file of the console page (`console.css`, `console.js`).
#[utoipa::path(
    get,
    path = "/console/assets/{name}",
    operation_id = "consoleAsset",
    tag = "console",
    security(()),
    params(("name" = String, Path, description = "`console.css` or `console.js`.")),
    responses(
        (status = 200, description = "The file."),
        (status = 404, description = "No such file (`not_found`).", body = super::ErrorBody),
    )
)]
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "console.css" => file("text/css; charset=utf-8", CSS),
        "console.js" => file("text/javascript; charset=utf-8", JS),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "the console has console.css and console.js only",
        )
        .into_response(),
    }
}
