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

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

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

/// The console's stylesheet.
#[utoipa::path(
    get,
    path = "/console/assets/console.css",
    operation_id = "consoleCss",
    tag = "console",
    security(()),
    responses((status = 200, description = "The stylesheet.", content_type = "text/css"))
)]
pub async fn css() -> Response {
    file("text/css; charset=utf-8", CSS)
}

/// The console's script.
#[utoipa::path(
    get,
    path = "/console/assets/console.js",
    operation_id = "consoleJs",
    tag = "console",
    security(()),
    responses((status = 200, description = "The script.", content_type = "text/javascript"))
)]
pub async fn js() -> Response {
    file("text/javascript; charset=utf-8", JS)
}
