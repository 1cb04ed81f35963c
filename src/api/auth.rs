//! Bearer-token authentication for `/v1/*`, compared in constant time,
//! before routing (an unknown `/v1` path without a token is 401). The
//! configured token may be a comma list (rotation): every listed token
//! works.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::error::ErrorCode;

/// Refuses `/v1` requests (any path under it, routed or not) without one
/// of the configured bearer tokens; other paths pass.
pub async fn require_token_for_v1(
    state: State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        require_token(state, request, next).await
    } else {
        next.run(request).await
    }
}

/// Refuses requests without one of the configured bearer tokens.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    if given.is_some_and(|g| token_matches(g, expected)) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "send Authorization: Bearer <POSTBACK_API_TOKEN>",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares digests so neither the content nor the length of a token
/// leaks through timing; every token of the comma list is compared (no
/// early exit), empty entries ignored.
fn token_matches(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let mut matched = subtle::Choice::from(0);
    for token in expected.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        matched |= a.ct_eq(&Sha256::digest(token.as_bytes()));
    }
    matched.into()
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn every_token_of_the_list_works_and_empty_entries_match_nothing() {
        assert!(token_matches("old", "new, old,"));
        assert!(token_matches("new", "new, old,"));
        assert!(!token_matches("", "new,,old"));
        assert!(!token_matches("new,old", "new,old"));
        assert!(!token_matches("other", "new"));
    }
}
