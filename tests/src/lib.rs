//! The privileged tests' own code: the independent oracle the differential tests check the data
//! plane against (it shares no code with the policy compiler or the kernel programs). The
//! harness, lab and packet builders they use are in `gateway-testkit`.

pub mod oracle;
