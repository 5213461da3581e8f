//! Weights kept in their stored GGUF precision, and matrix products that
//! dequantise them on the fly.
//!
//! Decoding reads every weight once per token, so its speed is the speed at
//! which weights stream from memory: a Q4_1 weight is 0.625 bytes where the
//! widened f32 was 4. By default the activations stay f32, so a packed
//! product differs from the f32 reference only in summation order; with
//! [`PackedLinear::with_int16_activations`] (what the engine serves with) the
//! fused kernel takes the activations of Q8_0/Q4_0/Q4_1 matrices rounded to
//! 16-bit integers per block of 32 and multiplies the stored values as
//! integers, which is about twice as fast as converting each weight to f32.
//! llama.cpp rounds activations to 8 bits instead: on SmolLM2 that moved
//! logits by up to 3.2 and changed its answers; 16 bits moved them by 0.011.
//!
//! Two kernels, picked by the number of activation rows `n`:
//! - `n <= FUSED_MAX_ROWS` (decoding one to four sequences), or up to
//!   `INT16_MAX_ROWS` (eight) with 16-bit activations: each weight block is
//!   converted in registers once and multiplied with every activation row
//!   (AVX-512 for the 16-bit products, AVX2 + FMA otherwise, checked at run
//!   time; portable code where neither is there);
//! - more rows (prefill, larger batches): a tile of weight rows is dequantised
//!   into a small f32 buffer and multiplied by `gemm`, so the conversion is paid
//!   once per tile rather than once per activation row.
//!
//! Work is split over rayon's pool by tiles of output rows.

/// `kernel::<N>(args)` with `N` the row count `n` (1 to 8; more is taken as
/// 8): the 16-bit kernels take their row count as a constant, so that their
/// accumulators are registers.
#[cfg(target_arch = "x86_64")]
macro_rules! with_rows {
    ($n:expr, $($kernel:ident)::+ ($($arg:expr),* $(,)?)) => {
        match $n {
            1 => $($kernel)::+::<1>($($arg),*),
            2 => $($kernel)::+::<2>($($arg),*),
            3 => $($kernel)::+::<3>($($arg),*),
            4 => $($kernel)::+::<4>($($arg),*),
            5 => $($kernel)::+::<5>($($arg),*),
            6 => $($kernel)::+::<6>($($arg),*),
            7 => $($kernel)::+::<7>($($arg),*),
            _ => $($kernel)::+::<8>($($arg),*),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dequant;
mod dot;
mod format;
mod int16;
mod linear;
#[cfg(test)]
mod tests;

pub use dequant::dequantize_bytes;
pub use format::{PackedMatrix, QuantKind};
pub use int16::{INT16_TOP, Int16Rows};
pub use linear::PackedLinear;

/// Elements per block of the simple formats (and per sub-block of the K-quants).
pub const BLOCK: usize = 32;

/// Elements per K-quant super-block.
pub const SUPER_BLOCK: usize = 256;

/// Activation rows up to which the fused kernel is used: beyond, widening a
/// tile once for `gemm` wins (measured: 8-row products about 1.8x faster, and
/// batch-8 decoding about 1.3x, than four-row groups of the fused kernel).
const FUSED_MAX_ROWS: usize = 4;

/// Activation rows the fused kernel multiplies per weight block conversion.
const GROUP: usize = 4;

/// Activation rows up to which matrices whose every part is multiplied with
/// 16-bit activations use the fused kernel: one weight block unpacked for
/// eight rows costs less than widening it for `gemm` (a SmolLM2 batch-8 step
/// 65-70 -> 48-57 ms with the AVX-512 kernel; on AVX2, 8-row products of
/// SmolLM2's MLP shapes 0.86 ms against 1.05 ms through `gemm`). Not beyond:
/// with 128 rows (prefill) the fused kernel was slower than `gemm` (79
/// against 100 tokens/s), every weight row reading all the activations again
/// from L2.
const INT16_MAX_ROWS: usize = 8;

/// The most activation rows the fused kernels take in one product.
const FUSED_ROWS_LIMIT: usize = if FUSED_MAX_ROWS > INT16_MAX_ROWS { FUSED_MAX_ROWS } else { INT16_MAX_ROWS };

/// Output rows per parallel task.
const TILE_ROWS: usize = 32;

/// Output rows per parallel task when a tile is widened for `gemm`: larger,
/// so that each call amortises its packing of the activations.
const GEMM_TILE_ROWS: usize = 128;

/// Whether the AVX2 kernels (AVX2, FMA and F16C) run on this CPU.
pub(crate) fn simd() -> bool {
    crate::cpu::avx2()
}
