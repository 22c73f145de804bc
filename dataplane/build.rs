//! Builds the kernel programs (gateway-ebpf, for bpfel-unknown-none with nightly) and leaves the
//! object in OUT_DIR, from where `include_bytes_aligned!` embeds it in this crate (and so in the
//! `gateway` binary).
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir
        .join("../gateway-ebpf")
        .canonicalize()
        .context("gateway-ebpf directory")?;
    let root_dir = root_dir
        .to_str()
        .context("gateway-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "gateway-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
