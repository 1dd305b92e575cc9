//! The engine's 8-bit weight format: per 32 values a f32 scale `d` and signed 8-bit `q` (value = `d * q`),
//! quantised at load from any weight type (see `matmul` for the kernel).

use rayon::prelude::*;

use crate::matmul::{quantize_block, BlockMatrix, WeightBlock, BLOCK};

/// 32 weights: value = `d * q`, `q` in -127..=127.
#[derive(Clone, Copy)]
pub(crate) struct Q8Block {
    d: f32,
    q: [i8; BLOCK],
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
            let (q, d) = quantize_block(xb);
            Q8Block { d, q }
        })
        .collect();
    BlockMatrix::new(n, k, blocks)
}

impl WeightBlock for Q8Block {
    const OFFSET: bool = false;
    const BYTES: usize = 36;

    #[inline(always)]
    fn scale(&self) -> f32 {
        self.d
    }

    #[inline(always)]
    fn offset(&self) -> f32 {
        0.0
    }

    #[inline(always)]
    fn dot(&self, x: &[i8; BLOCK]) -> i32 {
        self.q.iter().zip(x).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    fn dequantize(&self, out: &mut Vec<f32>) {
        out.extend(self.q.iter().map(|&v| v as f32 * self.d));
    }

    /// `(|q|, q)`.
    #[cfg(target_arch = "x86_64")]
    type Loaded = (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn load_v3(&self, v: pulp::x86::V3) -> Self::Loaded {
        let w: core::arch::x86_64::__m256i = pulp::cast(self.q);
        (v.avx2._mm256_sign_epi8(w, w), w)
    }

    /// llama.cpp's sign trick: `maddubs` wants one unsigned operand, so multiply `|q|` by `x` with `q`'s sign
    /// (at most 2 * 127 * 127 per 16-bit lane: no saturation).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_v3(v: pulp::x86::V3, (abs, w): Self::Loaded, x: core::arch::x86_64::__m256i) -> core::arch::x86_64::__m256i {
        let sx = v.avx2._mm256_sign_epi8(x, w);
        v.avx2._mm256_madd_epi16(v.avx2._mm256_maddubs_epi16(abs, sx), v.avx._mm256_set1_epi16(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_dense_and_is_batch_invariant() {
        let (n, k, m) = (100, 96, 5);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        let q = q8_from_f32(&w, n, k).expect("quantize");
        let y = q.matmul(&x, m);
        for r in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[j * k + i]).sum();
                assert!((y[r * n + j] - exact).abs() < 0.05 * (1.0 + exact.abs()), "{r},{j}");
            }
            let alone = q.matmul(&x[r * k..(r + 1) * k], 1);
            assert_eq!(alone, y[r * n..(r + 1) * n].to_vec());
        }
        let mut row = Vec::new();
        q.row(3, &mut row);
        assert!(row.iter().zip(&w[3 * k..4 * k]).all(|(a, b)| (a - b).abs() < 0.01));
    }
}
