//! Compiles `proto/` with protox (no system `protoc`) and writes the
//! descriptor set that the reflection service serves; stamps the git
//! commit (`REKEY_GIT_COMMIT`, "unknown" outside a git checkout).

use std::{env, error::Error, path::PathBuf, process::Command};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rustc-env=REKEY_GIT_COMMIT={}", git_commit());
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

/// The short hash of HEAD; "unknown" without git or a repository (a
/// source tarball): the build never fails for it.
fn git_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .filter(|out| !out.is_empty())
    };
    // Rebuild when HEAD moves: a checkout, or a commit on the branch.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for reference in std::iter::once("HEAD").chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", reference]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
}
