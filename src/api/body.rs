//! Request bodies: read within POSTBACK_MAX_BODY (413 above it) and parsed
//! with errors that name the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::error::ErrorCode;
use crate::validate::{parse_json, JsonObjects};

/// A JSON body of type `T` (an empty body is refused unless `T` is `Option`).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// The raw body, possibly empty.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    ErrorCode::BodyTooLarge,
                    "the request body is larger than POSTBACK_MAX_BODY allows; send less or raise the limit",
                )
            } else {
                ApiError::new(status, ErrorCode::InvalidBody, rejection.body_text())
            }
        })?;
        Ok(RawBody(bytes))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + JsonObjects> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                "the request body is empty; send a JSON object",
            ));
        }
        Ok(JsonBody(parse_json(&bytes)?))
    }
}
