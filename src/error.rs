//! The library's error type: what an embedder (and the HTTP layer) can match
//! on. It owns the classification of failures into validation, not found,
//! conflict and database errors; it must not know about HTTP status codes
//! (the `api` module maps them). The stable codes themselves are
//! [`ErrorCode`] (in `error/code.rs`).

mod code;
#[cfg(test)]
mod code_scan;

pub use code::ErrorCode;

/// Everything a library call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong; `field` names what to fix (a JSON path such as
    /// `publish.callbacks[0].url`).
    #[error("{field}: {reason}")]
    Validation {
        /// Where in the input the problem is.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
        /// Stable code for scripts.
        code: ErrorCode,
    },
    /// No such job or delivery.
    #[error("{what} {id} was not found")]
    NotFound {
        /// `job` or `delivery`.
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The job existed but is past its expiration time.
    #[error("job {id} expired at {expired_at}")]
    Expired {
        /// The job id.
        id: String,
        /// When it expired (RFC 3339).
        expired_at: String,
    },
    /// The request contradicts what is already stored.
    #[error("{message}")]
    Conflict {
        /// Stable code for scripts.
        code: ErrorCode,
        /// Human sentence.
        message: String,
    },
    /// The database could not be reached (retryable; the API answers 503).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl Error {
    /// True when the database could not be reached (an outage, a restart,
    /// a dropped connection): retrying later can succeed, and nothing was
    /// refused on its merits.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Database(e) => is_connectivity(e),
            _ => false,
        }
    }

    /// The stable code an answer to this error carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Validation { code, .. } | Error::Conflict { code, .. } => *code,
            Error::NotFound { what, .. } => not_found_code(what),
            Error::Expired { .. } => ErrorCode::JobExpired,
            Error::Unavailable(_) => ErrorCode::DatabaseUnavailable,
            Error::Database(_) => ErrorCode::InternalError,
        }
    }

    /// A validation error for `field`.
    pub fn invalid(code: ErrorCode, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            reason: reason.into(),
            code,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if is_connectivity(&err) {
            Error::Unavailable(err)
        } else {
            Error::Database(err)
        }
    }
}

/// The code of [`Error::NotFound`] for `what` (`job`, `delivery`).
fn not_found_code(what: &str) -> ErrorCode {
    match what {
        "job" => ErrorCode::JobNotFound,
        "delivery" => ErrorCode::DeliveryNotFound,
        "customer" => ErrorCode::CustomerNotFound,
        "destination" => ErrorCode::DestinationNotFound,
        _ => ErrorCode::NotFound,
    }
}

/// True when the error means "the database is not there right now" rather
/// than "the statement is wrong": callers retry the former.
pub fn is_connectivity(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            // Class 08 (connection exception) and 57P0x (admin/crash shutdown,
            // cannot connect now) are the server going away under us.
            db.code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0"))
        }
        _ => false,
    }
}

/// Library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectivity_failures_are_unavailable_whichever_variant_holds_them() {
        let converted = Error::from(sqlx::Error::PoolTimedOut);
        assert!(matches!(converted, Error::Unavailable(_)));
        assert!(converted.is_unavailable());
        assert!(Error::Database(sqlx::Error::PoolClosed).is_unavailable());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!Error::invalid(ErrorCode::InvalidField, "f", "r").is_unavailable());
    }

    #[test]
    fn every_variant_has_its_code() {
        let not_found = |what| Error::NotFound {
            what,
            id: "x".into(),
        };
        assert_eq!(not_found("job").code(), ErrorCode::JobNotFound);
        assert_eq!(not_found("delivery").code(), ErrorCode::DeliveryNotFound);
        let expired = Error::Expired {
            id: "x".into(),
            expired_at: "then".into(),
        };
        assert_eq!(expired.code(), ErrorCode::JobExpired);
        assert_eq!(
            Error::invalid(ErrorCode::InvalidUrl, "url", "bad").code(),
            ErrorCode::InvalidUrl
        );
        assert_eq!(
            Error::from(sqlx::Error::PoolTimedOut).code(),
            ErrorCode::DatabaseUnavailable
        );
        assert_eq!(
            Error::Database(sqlx::Error::RowNotFound).code(),
            ErrorCode::InternalError
        );
    }
}
