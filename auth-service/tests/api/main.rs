//! The auth-service over real gRPC: one test binary, a module per behaviour
//! family. Runs on SQLite, or on PostgreSQL when `TEST_DATABASE_URL` is set.

mod attacks;
mod auth;
mod avatars;
mod events;
mod helpers;
mod limits;
mod reset;
mod store;
mod users;
