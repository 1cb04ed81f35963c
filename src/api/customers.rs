//! `/v1/customers` routes (SPEC §2 "Customers"): a thin layer over the
//! library's customer calls. It must not touch the database itself.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::JsonBody;
use super::{ApiError, AppState, ErrorBody};
use crate::intake::CustomerPut;
use crate::model::{CustomerRequest, CustomerView, RotateSecret, RotatedSecret};

/// The `{customerId}` of the path (checked by the library).
fn customer_id(path: Result<Path<String>, PathRejection>) -> String {
    path.map(|Path(id)| id).unwrap_or_default()
}

/// Register a customer, or update its name and metadata.
///
/// A new customer gets the given `signingSecret` or a generated one, shown
/// in this answer only.
#[utoipa::path(
    put,
    path = "/v1/customers/{customerId}",
    operation_id = "putCustomer",
    tag = "customers",
    params(("customerId" = String, Path, description = "1 to 128 of A-Z a-z 0-9 . _ : -")),
    request_body(content = CustomerRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; carries the signing secret.", body = CustomerView),
        (status = 200, description = "Updated.", body = CustomerView),
        (status = 400, description = "Bad input; the message names the field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 409, description = "The customer is being deleted.", body = ErrorBody),
    )
)]
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(request): JsonBody<CustomerRequest>,
) -> Result<Response, ApiError> {
    let id = customer_id(path);
    let (view, put) = state
        .postback
        .put_customer(&state.pool, &id, request)
        .await?;
    let status = match put {
        CustomerPut::Created => StatusCode::CREATED,
        CustomerPut::Updated => StatusCode::OK,
    };
    Ok((status, Json(view)).into_response())
}

/// A customer with its live secrets (never their values).
#[utoipa::path(
    get,
    path = "/v1/customers/{customerId}",
    operation_id = "getCustomer",
    tag = "customers",
    params(("customerId" = String, Path, description = "The customer id.")),
    responses(
        (status = 200, description = "The customer.", body = CustomerView),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such customer (`customer_not_found`).", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let view = state
        .postback
        .customer(&state.pool, &customer_id(path))
        .await?;
    Ok(Json(view).into_response())
}

/// Erase a customer with its secrets, jobs, deliveries, payloads and
/// attempts.
#[utoipa::path(
    delete,
    path = "/v1/customers/{customerId}",
    operation_id = "deleteCustomer",
    tag = "customers",
    params(("customerId" = String, Path, description = "The customer id.")),
    responses(
        (status = 204, description = "Erased."),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such customer (`customer_not_found`).", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state
        .postback
        .delete_customer(&state.pool, &customer_id(path))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Rotate the signing secret: the new one signs from now on, the one it
/// replaces also signs until the grace period ends.
#[utoipa::path(
    post,
    path = "/v1/customers/{customerId}/rotate-secret",
    operation_id = "rotateCustomerSecret",
    tag = "customers",
    params(("customerId" = String, Path, description = "The customer id.")),
    request_body(content = RotateSecret, content_type = "application/json"),
    responses(
        (status = 200, description = "Rotated; the new secret, shown once.", body = RotatedSecret),
        (status = 400, description = "Bad input; the message names the field.", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 404, description = "No such customer (`customer_not_found`).", body = ErrorBody),
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(request): JsonBody<RotateSecret>,
) -> Result<Response, ApiError> {
    let rotated = state
        .postback
        .rotate_secret(&state.pool, &customer_id(path), request)
        .await?;
    Ok(Json(rotated).into_response())
}
