//! Compiles the gRPC contract `proto/pointsman/v1/router.proto` (at the workspace root) with the
//! pure-Rust `protox` compiler (no `protoc` needed): the tonic server and client, and a
//! descriptor set for reflection.
use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let router = root.join("pointsman/v1/router.proto");
    println!("cargo:rerun-if-changed={}", router.display());
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile([&router], [&root])?;
    std::fs::write(out.join("pointsman_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
