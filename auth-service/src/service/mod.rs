//! Thin tonic handlers: parse the request into domain types, call the domain,
//! map the result. No SQL and no business rules live here.

mod auth;
mod events;
mod users;

pub use auth::AuthApi;
pub use events::{INTERNAL_TOKEN_HEADER, UserEventsApi};
pub use users::UsersApi;
