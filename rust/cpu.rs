//! Which SIMD kernels this process runs: the CPU's features, probed once, and
//! the `PYCOMPAT_KERNEL` override. Every run-time choice of a SIMD path asks
//! here, so the weights' layout chosen at load (`weights.rs`) and the kernels
//! that later read it always agree.

use std::sync::OnceLock;

/// The environment variable that forces the portable kernels everywhere, with
/// the value `portable`: how a user (or a test run) rules out a SIMD bug. Any
/// other value, or none, lets each kernel pick the best the CPU runs.
pub const KERNEL_ENV: &str = "PYCOMPAT_KERNEL";

/// Whether the AVX2 kernels (with FMA and F16C) may run: the CPU has them and
/// `PYCOMPAT_KERNEL` does not ask for the portable ones. Decided once per process.
pub fn avx2_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let forced_portable = std::env::var(KERNEL_ENV).is_ok_and(|v| v == "portable");
        !forced_portable && cpu_has_avx2()
    })
}

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        return true;
    }
    false
}

/// The kernels this process runs: "avx2" or "portable".
pub fn simd_path() -> &'static str {
    if avx2_enabled() {
        "avx2"
    } else {
        "portable"
    }
}

/// Whether this CPU runs the kernels for the grouped layout
/// (`row_groups.rs`); the loader groups block-quantized weights only then.
pub fn grouped_kernels_available() -> bool {
    avx2_enabled()
}
