//! The blog's wire contract: messages, clients and servers generated from
//! the `.proto` files of this crate, and the descriptor set that server
//! reflection serves. Anything that only calls the services needs this crate
//! alone.
//!
//! - [`auth`]: `blog.auth.v1`, accounts, sessions, keys and user events.
//! - [`posts`]: `blog.posts.v1`, blog posts.

/// `blog.auth.v1`: users, sessions, keys and user events.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod auth {
    tonic::include_proto!("blog.auth.v1");
}

/// `blog.posts.v1`: blog posts.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod posts {
    tonic::include_proto!("blog.posts.v1");
}

/// Every file of the contract and the well-known types it imports, encoded.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blog_descriptor.bin"));
