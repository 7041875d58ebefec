//! Compiles the contract (the `.proto` files beside this script) with
//! protox, so no system `protoc` is needed, and keeps the encoded descriptor
//! set, imports included, for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "blog/auth/v1/users.proto",
    "blog/auth/v1/auth.proto",
    "blog/auth/v1/events.proto",
    "blog/posts/v1/posts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    println!("cargo:rerun-if-changed={}", root.join("blog").display());

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let descriptors = protox::compile(&files, [&root])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("blog_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
