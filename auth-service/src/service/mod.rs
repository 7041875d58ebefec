//! Thin tonic handlers: parse the request into domain types, call the domain,
//! map the result. No SQL and no business rules live here.

mod auth;
mod events;
mod users;

pub use auth::AuthApi;
pub use events::UserEventsApi;
pub use users::UsersApi;

use prost_types::Timestamp;

/// A protobuf timestamp from microseconds since the epoch.
pub(crate) fn timestamp(micros: i64) -> Option<Timestamp> {
    Some(shared::db::timestamp(micros))
}
