//! Headroom under the kernel verifier's limit. How far the verifier walks a program depends on
//! the kernel (its state pruning changes between versions), so a program that verifies here at
//! 97% of the limit may be refused (E2BIG) on an operator's kernel, or after the next small
//! change to it. Every program must stay at or under half of the limit here.

use gateway_dataplane::{
    Dataplane, LoadOptions, PROGRAMS, VERIFIER_INSN_LIMIT, VERIFIER_WARN_SHARE,
};

/// Loads the data plane and returns what the verifier walked for each program, printed.
fn load_and_report() -> Vec<(&'static str, u32)> {
    let dp = Dataplane::load(&LoadOptions::default()).expect("load (run the tests as root)");
    let verified = dp.verified_instructions();
    assert_eq!(
        verified.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        PROGRAMS.to_vec(),
        "every program is loaded and reported"
    );
    verified
        .iter()
        .map(|(name, count)| {
            let n = count.expect("this kernel reports verified instructions (5.16 and later)");
            eprintln!(
                "{name}: {n} instructions walked ({:.1}% of the limit)",
                100.0 * n as f64 / VERIFIER_INSN_LIMIT as f64
            );
            assert!(n > 0, "{name}: a loaded program was walked");
            (*name, n)
        })
        .collect()
}

/// Every program passes this kernel's verifier. (`cargo xtask kernel-check` runs it under
/// another kernel.)
#[test]
fn every_program_loads() {
    assert_eq!(load_and_report().len(), PROGRAMS.len());
}

#[test]
fn every_program_verifies_with_headroom() {
    let mut over = Vec::new();
    for (name, n) in load_and_report() {
        // The share above which the load warns: none may take more of the limit.
        if 100.0 * n as f64 / VERIFIER_INSN_LIMIT as f64 > VERIFIER_WARN_SHARE {
            over.push(format!("{name} ({n})"));
        }
    }
    assert!(
        over.is_empty(),
        "programs over {VERIFIER_WARN_SHARE}% of the verifier's {VERIFIER_INSN_LIMIT}-instruction limit: {}",
        over.join(", ")
    );
}
