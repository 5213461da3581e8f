//! Launch-measurement recomputation (SNP launch digest, TDX MRTD and RTMRs,
//! config digest) from image artifacts: what `make measure` runs.
//!
//! Empty until the guest-image work lands; nothing here claims to measure yet.
