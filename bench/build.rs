//! Builds the benchmark's kernel programs (bench/ebpf) and leaves the object in OUT_DIR for
//! embedding, as dataplane/build.rs does for the gateway's.
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir
        .join("ebpf")
        .canonicalize()
        .context("bench/ebpf directory")?;
    let root_dir = root_dir.to_str().context("bench/ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "bench-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
