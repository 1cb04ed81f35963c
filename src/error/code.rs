//! The API's stable error codes: every `code` of an
//! `{"error": {"code", "message"}}` answer (SPEC §2) is a variant of
//! [`ErrorCode`], with its snake_case wire name. Scripts match on these
//! names, so a variant is never renamed or reused; add a new one instead.
//!
//! It owns the list and the wire names only. It must not depend on any other
//! module of the crate (it is a leaf), and it must not know HTTP statuses or
//! messages (`api` maps errors to statuses, callers write the sentences).

use std::fmt;

/// Declares [`ErrorCode`], its [`ErrorCode::ALL`] and [`ErrorCode::as_str`]
/// from one list, so none of them can miss a variant.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])+ $variant:ident = $wire:literal, )+) => {
        /// A stable, snake_case error code of the API (SPEC §2).
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize,
        )]
        #[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The wire name, as sent in `error.code`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)+
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON (or is empty).
    InvalidJson = "invalid_json",
    /// A field has the wrong type, an unknown name, or a value out of its rules.
    InvalidField = "invalid_field",
    /// A `jobId` that cannot be used (length, characters).
    InvalidJobId = "invalid_job_id",
    /// More callbacks on one job than allowed.
    TooManyCallbacks = "too_many_callbacks",
    /// A destination URL that is malformed, not http(s), or has no host.
    InvalidUrl = "invalid_url",
    /// A destination on a loopback, private or otherwise reserved address.
    BlockedDestination = "blocked_destination",
    /// A header name or value that HTTP does not allow, or given twice.
    InvalidHeader = "invalid_header",
    /// A header Postback sets itself.
    ReservedHeader = "reserved_header",
    /// A generic delivery's body is missing, doubled or not decodable; or the
    /// request body could not be read.
    InvalidBody = "invalid_body",
    /// A query parameter the route does not take.
    InvalidQuery = "invalid_query",
    /// A media callback's stream is not in the result (or not readable).
    MissingStream = "missing_stream",
    /// A `customerId` names no customer (or one being deleted).
    UnknownCustomer = "unknown_customer",
    /// A customer id is not 1–128 of `[A-Za-z0-9._:-]`.
    InvalidCustomerId = "invalid_customer_id",
    /// A result's stream would be sent by a media callback, but no
    /// `POSTBACK_MEDIA_ROOT` is configured.
    MediaDisabled = "media_disabled",
    /// The `jobId` exists with a different body.
    JobExists = "job_exists",
    /// The job already has a result.
    ResultExists = "result_exists",
    /// The delivery is being attempted right now.
    DeliveryInFlight = "delivery_in_flight",
    /// No job has this id.
    JobNotFound = "job_not_found",
    /// No delivery has this id.
    DeliveryNotFound = "delivery_not_found",
    /// No such customer.
    CustomerNotFound = "customer_not_found",
    /// No circuit breaker for that origin (it never failed).
    DestinationNotFound = "destination_not_found",
    /// The job is past its expiration time.
    JobExpired = "job_expired",
    /// No such route.
    NotFound = "not_found",
    /// The route does not take this method.
    MethodNotAllowed = "method_not_allowed",
    /// Missing or wrong bearer token.
    Unauthorized = "unauthorized",
    /// The request body is larger than `POSTBACK_MAX_BODY`.
    BodyTooLarge = "body_too_large",
    /// `/metrics` is off because another recorder is installed.
    MetricsDisabled = "metrics_disabled",
    /// The database is not reachable right now (retry).
    DatabaseUnavailable = "database_unavailable",
    /// Anything else that went wrong inside Postback.
    InternalError = "internal_error",
}

impl ErrorCode {
    /// The code whose wire name is `name`, if there is one.
    pub fn from_wire(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorCode> for String {
    fn from(code: ErrorCode) -> String {
        code.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn wire_names_are_unique_snake_case_and_agree_with_serde_and_display() {
        let mut seen = BTreeSet::new();
        for &code in ErrorCode::ALL {
            let name = code.as_str();
            assert!(seen.insert(name), "{name} is used twice");
            assert!(
                !name.is_empty()
                    && !name.starts_with('_')
                    && !name.ends_with('_')
                    && !name.contains("__")
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
            assert_eq!(code.to_string(), name);
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                name,
                "serde of {code:?}"
            );
            assert_eq!(
                serde_json::from_value::<ErrorCode>(name.into()).unwrap(),
                code
            );
            assert_eq!(ErrorCode::from_wire(name), Some(code));
        }
        assert!(ErrorCode::from_wire("no_such_code").is_none());
        assert!(serde_json::from_value::<ErrorCode>("no_such_code".into()).is_err());
    }
}
