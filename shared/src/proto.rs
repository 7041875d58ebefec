//! The generated wire contract: messages, clients and servers for every
//! package under `proto/`, and the descriptor set that reflection serves.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `blog.auth.v1`: users, sessions, keys and user events.
pub mod auth {
    tonic::include_proto!("blog.auth.v1");
}

/// `blog.posts.v1`: blog posts.
pub mod posts {
    tonic::include_proto!("blog.posts.v1");
}

/// Every file of the contract and the well-known types it imports, encoded.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/blog_descriptor.bin"));
