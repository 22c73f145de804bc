use which::which;

/// Makes cargo rebuild the eBPF object when bpf-linker changes (a new linker can change the
/// output). Same as the aya project template.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask deps`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
