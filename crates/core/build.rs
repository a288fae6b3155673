//! Compiles the vendored ONNX schema `proto/onnx/onnx.proto` (at the workspace root) into plain
//! `prost` messages (no services) with the pure-Rust `protox` compiler (no `protoc` needed):
//! the head's graph is written by the trainer and read here in these messages.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let onnx = root.join("onnx/onnx.proto");
    println!("cargo:rerun-if-changed={}", onnx.display());
    prost_build::Config::new().compile_fds(protox::compile([&onnx], [&root])?)?;
    Ok(())
}
