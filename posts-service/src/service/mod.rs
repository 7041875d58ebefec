//! Thin tonic handlers: parse the request into domain types, call the store,
//! map the result. No SQL and no business rules live here.

mod posts;

pub use posts::PostsApi;
