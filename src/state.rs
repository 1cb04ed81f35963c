//! The shared vocabulary of states every other module speaks: a delivery's
//! state and kind, a job's stored and public status, an attempt's outcome.
//! Each is an enum with exactly one spelling, used on the wire (serde), in
//! PostgreSQL (`text` columns through [`sqlx::Type`]) and in metric labels.
//!
//! This module is a leaf: it imports nothing from the crate, so every layer
//! can depend on it without a cycle. It must not hold behaviour beyond the
//! spellings and the state machine's shape (`docs/architecture.md` draws it).

use serde::{Deserialize, Serialize};

/// Implements `sqlx::{Type, Encode, Decode}` for a fieldless enum stored as
/// `text`, through its `as_str`/`parse` pair: no type lookup per
/// connection (unlike `#[sqlx(type_name = "text")]`) and arrays bind as
/// `text[]`.
macro_rules! text_column {
    ($ty:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                <$ty>::parse(text).ok_or_else(|| {
                    format!("unknown {} {text:?} in the database", stringify!($ty)).into()
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_column;

/// Declares a fieldless enum with one spelling per variant, `ALL`,
/// `as_str` and `parse`.
macro_rules! spelled {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        $vis enum $name { $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The one spelling (wire, database, metric label).
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value spelled `text`, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        text_column!($name);
    };
}

spelled! {
    /// A delivery's state (`status` of callbacks and deliveries).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
    pub enum DeliveryState {
        /// Waiting for its next attempt (due, or scheduled later).
        Pending = "pending",
        /// Leased to a worker; an attempt is in flight (or the worker died
        /// and the lease will run out).
        Delivering = "delivering",
        /// A 2xx arrived. Final.
        Delivered = "delivered",
        /// Given up after the schedule ran out. Final.
        Failed = "failed",
    }
}

impl DeliveryState {
    /// Delivered or failed: no attempt will ever be made again (unless an
    /// operator replays it).
    pub const fn is_final(self) -> bool {
        matches!(self, DeliveryState::Delivered | DeliveryState::Failed)
    }
}

spelled! {
    /// What a delivery carries (`type` of a delivery).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
    pub enum DeliveryKind {
        /// A job's analytics callback.
        Analytics = "analytics",
        /// A job's transcript callback.
        Transcript = "transcript",
        /// A job's media callback.
        Media = "media",
        /// A delivery queued with `POST /v1/deliveries`.
        Generic = "generic",
        /// An operator event (`POSTBACK_OPERATOR_WEBHOOK`).
        Event = "event",
    }
}

spelled! {
    /// A job's status as stored (`jobs.status`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum JobState {
        /// Registered, no result yet.
        InProgress = "in_progress",
        /// A finished result arrived; its callbacks are queued.
        Completed = "completed",
        /// A failed result arrived; its analytics callbacks are queued.
        Failed = "failed",
    }
}

spelled! {
    /// A job's status as polling shows it (`JobView::status`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "api", derive(utoipa::ToSchema))]
    pub enum JobStatus {
        /// Registered, no result yet.
        InProgress = "InProgress",
        /// The result arrived; its callbacks are queued.
        Completed = "Completed",
        /// The job failed; its analytics callbacks are queued.
        Failed = "Failed",
    }
}

impl From<JobState> for JobStatus {
    fn from(state: JobState) -> Self {
        match state {
            JobState::InProgress => JobStatus::InProgress,
            JobState::Completed => JobStatus::Completed,
            JobState::Failed => JobStatus::Failed,
        }
    }
}

spelled! {
    /// Outcome class of one attempt (the `outcome` metric label and an
    /// attempt's recorded `error`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Outcome {
        /// 2xx.
        Success = "success",
        /// Any other HTTP status (3xx included: redirects are not followed).
        HttpError = "http_error",
        /// No complete answer within the attempt timeout.
        Timeout = "timeout",
        /// The connection could not be made.
        ConnectError = "connect_error",
        /// The destination resolved to a refused address.
        BlockedDestination = "blocked_destination",
        /// Anything else.
        Other = "other",
    }
}

spelled! {
    /// The final result of a delivery (the `result` metric label).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Completed {
        /// A 2xx arrived.
        Delivered = "delivered",
        /// The schedule ran out.
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_back_and_serde_agrees() {
        fn check<T>(all: &[T], as_str: fn(T) -> &'static str, parse: fn(&str) -> Option<T>)
        where
            T: Copy + PartialEq + std::fmt::Debug + Serialize,
        {
            for &v in all {
                assert_eq!(parse(as_str(v)), Some(v));
                assert_eq!(
                    serde_json::to_value(v).unwrap(),
                    serde_json::Value::from(as_str(v))
                );
            }
            assert_eq!(parse("no such state"), None);
        }
        check(
            DeliveryState::ALL,
            DeliveryState::as_str,
            DeliveryState::parse,
        );
        check(DeliveryKind::ALL, DeliveryKind::as_str, DeliveryKind::parse);
        check(JobState::ALL, JobState::as_str, JobState::parse);
        check(JobStatus::ALL, JobStatus::as_str, JobStatus::parse);
        check(Outcome::ALL, Outcome::as_str, Outcome::parse);
        check(Completed::ALL, Completed::as_str, Completed::parse);
    }

    #[test]
    fn only_delivered_and_failed_are_final() {
        let finals: Vec<_> = DeliveryState::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, [&DeliveryState::Delivered, &DeliveryState::Failed]);
    }
}
