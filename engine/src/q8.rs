//! The engine's 8-bit weight format, GGML's Q8_0: per 32 values a half-precision scale `d` and signed 8-bit
//! `q` (value = `d * q`). Q8_0 tensors are taken unchanged; weight types the kernels do not read as stored are
//! quantised to it at load, and Q5_0 blocks widened to it for a prefill (see `matmul` for the kernel).

use rayon::prelude::*;

use crate::half::{f16_to_f32, f32_to_f16};
use crate::matmul::{BlockMatrix, WeightBlock, XBlock, BLOCK};

/// 32 weights: value = `d * q` (`d` in half precision).
#[derive(Clone, Copy)]
pub(crate) struct Q8Block {
    d: u16,
    q: [i8; BLOCK],
}

impl Q8Block {
    /// From a half-precision scale and 32 values.
    pub(crate) fn new(d: u16, q: [i8; BLOCK]) -> Q8Block {
        Q8Block { d, q }
    }
}

pub(crate) type Q8Matrix = BlockMatrix<Q8Block>;

/// Quantise a dense row-major `[n, k]` matrix; `k` must be a multiple of 32.
pub(crate) fn q8_from_f32(w: &[f32], n: usize, k: usize) -> Option<Q8Matrix> {
    if !k.is_multiple_of(BLOCK) || w.len() != n * k {
        return None;
    }
    let blocks = w
        .par_chunks_exact(BLOCK)
        .map(|xb| {
            // As GGML does: round the scale to half precision first, then quantise with it.
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = f32_to_f16(amax / 127.0);
            let scale = f16_to_f32(d);
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut q = [0i8; BLOCK];
            for (q, &v) in q.iter_mut().zip(xb) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            Q8Block { d, q }
        })
        .collect();
    BlockMatrix::new(n, k, blocks)
}

/// From GGML Q8_0 blocks (34 bytes each: f16 `d`, 32 signed bytes) of a `[n, k]` matrix.
pub(crate) fn q8_from_q8_0(data: &[u8], n: usize, k: usize) -> Option<Q8Matrix> {
    if !k.is_multiple_of(BLOCK) || data.len() != n * k / BLOCK * 34 {
        return None;
    }
    BlockMatrix::new(n, k, q8_blocks_from_q8_0(data)?)
}

/// GGML Q8_0 blocks as they are (`None`: not whole blocks).
pub(crate) fn q8_blocks_from_q8_0(data: &[u8]) -> Option<Vec<Q8Block>> {
    data.len().is_multiple_of(34).then(|| {
        data.chunks_exact(34)
            .map(|b| Q8Block { d: u16::from_le_bytes([b[0], b[1]]), q: core::array::from_fn(|i| b[2 + i] as i8) })
            .collect()
    })
}

impl WeightBlock for Q8Block {
    const OFFSET: bool = false;
    const BYTES: usize = 34;

    #[inline(always)]
    fn scale(&self, _part: usize) -> f32 {
        f16_to_f32(self.d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scales_offsets_f16c(&self) -> ([f32; 8], [f32; 8]) {
        ([crate::half::f16_pair_f16c(u32::from(self.d)).0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0; 8])
    }

    #[inline(always)]
    fn offset(&self, _part: usize) -> f32 {
        0.0
    }

    #[inline(always)]
    fn dot(&self, _part: usize, x: &[i8; BLOCK]) -> i32 {
        self.q.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    fn dequantize(&self, out: &mut Vec<f32>) {
        let d = self.scale(0);
        out.extend(self.q.iter().map(|&v| v as f32 * d));
    }

    /// `(|q|, q)`.
    #[cfg(target_arch = "x86_64")]
    type Loaded = (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn load_v3<const VNNI: bool>(&self, v: pulp::x86::V3, _part: usize) -> Self::Loaded {
        let w: core::arch::x86_64::__m256i = pulp::cast(self.q);
        (v.avx2._mm256_sign_epi8(w, w), w)
    }

    /// llama.cpp's sign trick: `maddubs` wants one unsigned operand, so multiply `|q|` by `x` with `q`'s sign
    /// (at most 2 * 128 * 127 per 16-bit lane: no saturation; `|-128|` wraps to -128, read as unsigned 128).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_v3<const VNNI: bool>(
        v: pulp::x86::V3,
        (abs, w): Self::Loaded,
        x: XBlock<'_>,
    ) -> core::arch::x86_64::__m256i {
        if VNNI {
            // The inputs as unsigned bytes (`x + 128`, made once per input block) against the signed weights,
            // started from `-128 * sum(q)` so that the sum is exactly `q . x`: one instruction per input row,
            // where the sign trick takes two (the start depends on the weights only: made once per block for all
            // rows).
            let start = v.avx2._mm256_sub_epi32(
                v.avx._mm256_setzero_si256(),
                crate::matmul::vnni_dot(v, v.avx._mm256_set1_epi8(i8::MIN), w),
            );
            return crate::matmul::vnni_dot_from(start, x.unsigned_v3(), w);
        }
        let sx = v.avx2._mm256_sign_epi8(x.v3(), w);
        v.avx2._mm256_madd_epi16(v.avx2._mm256_maddubs_epi16(abs, sx), v.avx._mm256_set1_epi16(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_dense_and_is_batch_invariant() {
        let (n, k, m) = (100, 96, 13);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        let q = q8_from_f32(&w, n, k).expect("quantize");
        let mut row = Vec::new();
        q.row(3, &mut row);
        assert!(row.iter().zip(&w[3 * k..4 * k]).all(|(a, b)| (a - b).abs() < 0.01));
        crate::matmul::tests::check_matmul(&q, &x);
    }

    #[test]
    fn q8_0_blocks_dequantise_as_ggml_and_multiply_on_every_path() {
        use crate::matmul::tests::{check_against_candle, random_blocks};
        let (n, k) = (40, 96);
        let data = random_blocks(n * k / BLOCK, 34, &[0], 6);
        let q = q8_from_q8_0(&data, n, k).expect("q8_0");
        check_against_candle(q, &data, candle_core::quantized::GgmlDType::Q8_0, n, k);
    }

    #[test]
    fn q8_0_blocks_are_taken_unchanged() {
        let mut data = Vec::new();
        for b in 0..4u8 {
            data.extend(f32_to_f16(0.5 + b as f32).to_le_bytes());
            data.extend((0..32).map(|i| (i as i8 - 16 - b as i8) as u8));
        }
        let q = q8_from_q8_0(&data, 2, 64).expect("q8_0");
        let mut row = Vec::new();
        q.row(1, &mut row);
        assert_eq!(row[0], -18.0 * 2.5);
        assert_eq!(row[63], 12.0 * 3.5);
        assert!(q8_from_q8_0(&data[1..], 2, 64).is_none());
    }
}
