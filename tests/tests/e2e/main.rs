//! The two services as one system: both in-process over real TCP, each on its
//! own database (SQLite, or PostgreSQL when `TEST_DATABASE_URL` is set).

mod across;
mod attacks;
mod browser;
mod grpc_web;
mod helpers;
mod observe;
mod posts;
mod races;
mod shutdown;
mod site;
mod tls;
mod website;
