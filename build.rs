//! Compiles `proto/` with protox (no system `protoc`) and writes the
//! descriptor set that the reflection service serves.

use std::{env, error::Error, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    // google.rpc is described for reflection only; rekey's code uses tonic-types.
    let descriptors = protox::compile(
        [
            "rekey/v1/rekey.proto",
            "rekey/v1/admin.proto",
            "google/rpc/error_details.proto",
        ],
        ["proto"],
    )?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("rekey_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Every generated service decodes with rekey's codec: a message that does
    // not decode is INVALID_ARGUMENT, not tonic's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
