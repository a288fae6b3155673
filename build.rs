//! Compiles `proto/` with the pure-Rust `protox` compiler (no `protoc` needed): the tonic server
//! and client plus a descriptor set for reflection from `pointsman/v1/router.proto`, and plain
//! `prost` messages (no services, no descriptor) from the vendored ONNX schema
//! `onnx/onnx.proto`, which `src/learning/onnx.rs` writes router heads with.
use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = "proto/pointsman/v1/router.proto";
    let onnx = "proto/onnx/onnx.proto";
    for proto in [router, onnx] {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile([router], ["proto"])?;
    std::fs::write(out.join("pointsman_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    // Messages only, into `OUT_DIR/onnx.rs` (package `onnx`).
    tonic_prost_build::Config::new().compile_fds(protox::compile([onnx], ["proto"])?)?;
    Ok(())
}
