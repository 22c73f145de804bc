// Lets the host build see this crate as a library (aya-build needs a build-dependency on it);
// the programs are in main.rs and build only for bpfel-unknown-none.
#![no_std]
