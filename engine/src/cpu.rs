//! What this CPU runs, detected once: the kernels of `quant`, `host_ops` and
//! `attention` each pick their path by it, so it depends on none of them.

/// AVX2, FMA and F16C: the 256-bit kernels.
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// AVX-512 F and BW besides AVX2's: the 16-bit integer products' 512-bit kernel.
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            avx2() && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
