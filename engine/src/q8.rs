//! An 8-bit weight matrix with a batched matmul kernel: each weight row is read once per call and used for
//! every input row (so a batch of B tokens costs little more memory traffic than one), integer dot products per
//! 32-value block, SIMD through `pulp`'s runtime dispatch (AVX2/FMA where the CPU has it), threads via rayon.
//! Results for one input row do not depend on the other rows in the batch.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// Values per quantisation block.
pub(crate) const BLOCK: usize = 32;
/// Below this many weight bytes times input rows a matmul runs on the calling thread (dispatch costs more).
const PARALLEL_MIN_WORK: usize = 1 << 16;
/// Parallel tasks per thread (a few, so that a thread slowed by other load does not hold up the rest).
const TASKS_PER_THREAD: usize = 4;

/// A `[n, k]` matrix stored as signed 8-bit values with one f32 scale per 32 values of a row.
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
}

/// Quantise `x` (a multiple of 32 long) into `qs` and per-block `scales`.
fn quantize_into(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    for ((xb, qb), d) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).zip(scales.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            // Round half away from zero without a libm call (the cast truncates).
            let r = v * inv;
            *q = (r + 0.5f32.copysign(r)).clamp(-127.0, 127.0) as i8;
        }
        *d = scale;
    }
}

/// Quantise `m` rows of `x` (`[m, k]`) to 8 bits per 32-value block: returns the values and per-block scales.
pub(crate) fn quantize_rows(x: &[f32], m: usize, k: usize) -> (Vec<i8>, Vec<f32>) {
    let blocks = k / BLOCK;
    let mut xq = vec![0i8; m * k];
    let mut xs = vec![0f32; m * blocks];
    for r in 0..m {
        quantize_into(&x[r * k..(r + 1) * k], &mut xq[r * k..(r + 1) * k], &mut xs[r * blocks..(r + 1) * blocks]);
    }
    (xq, xs)
}

/// Run `kernel(first_column, out)` over column ranges of an `[m, n]` result, in parallel when the work
/// (`row_bytes` of weights per column) is big enough; `out` is column-major `[columns][m]`. Returns `[m, n]`.
pub(crate) fn for_each_column_task(
    n: usize,
    m: usize,
    row_bytes: usize,
    kernel: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut tmp = vec![0f32; n * m];
    if n * m * row_bytes < PARALLEL_MIN_WORK || rayon::current_num_threads() == 1 {
        kernel(0, &mut tmp);
    } else {
        let cols = n.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD).max(1);
        tmp.par_chunks_mut(cols * m).enumerate().for_each(|(task, out)| kernel(task * cols, out));
    }
    if m == 1 {
        return tmp;
    }
    let mut out = vec![0f32; m * n];
    for (j, col) in tmp.chunks_exact(m).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            out[r * n + j] = v;
        }
    }
    out
}

impl Q8Matrix {
    /// Quantise a dense row-major `[n, k]` matrix; `k` must be a multiple of 32.
    pub(crate) fn from_f32(w: &[f32], n: usize, k: usize) -> Option<Q8Matrix> {
        if !k.is_multiple_of(BLOCK) || w.len() != n * k {
            return None;
        }
        let mut qs = vec![0i8; n * k];
        let mut scales = vec![0f32; n * k / BLOCK];
        qs.par_chunks_mut(k).zip(scales.par_chunks_mut(k / BLOCK)).zip(w.par_chunks(k)).for_each(|((q, s), row)| {
            quantize_into(row, q, s);
        });
        Some(Q8Matrix { n, k, qs, scales })
    }

    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// Dequantised row `i` (used for embedding lookups).
    pub(crate) fn row(&self, i: usize, out: &mut Vec<f32>) {
        let blocks = self.k / BLOCK;
        let q = &self.qs[i * self.k..(i + 1) * self.k];
        let s = &self.scales[i * blocks..(i + 1) * blocks];
        for (qb, &d) in q.chunks_exact(BLOCK).zip(s) {
            out.extend(qb.iter().map(|&v| v as f32 * d));
        }
    }

    /// `x @ self^T` for `m` rows of `x` (`[m, k]`); returns `[m, n]`.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (xq, xs) = quantize_rows(x, m, self.k);
        let arch = Arch::new();
        #[cfg(target_arch = "x86_64")]
        let v3 = pulp::x86::V3::try_new();
        for_each_column_task(self.n, m, self.k, |col0, out| {
            let kernel = Kernel { w: self, xq: &xq, xs: &xs, m, col0, out };
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = v3 {
                v3.vectorize(move || kernel_v3(v3, kernel));
                return;
            }
            arch.dispatch(kernel);
        })
    }
}

struct Kernel<'a> {
    w: &'a Q8Matrix,
    xq: &'a [i8],
    xs: &'a [f32],
    m: usize,
    col0: usize,
    out: &'a mut [f32],
}

#[inline(always)]
fn block_dot(a: &[i8], b: &[i8]) -> i32 {
    let a = &a[..BLOCK];
    let b = &b[..BLOCK];
    let mut sum = 0i32;
    for i in 0..BLOCK {
        sum += a[i] as i32 * b[i] as i32;
    }
    sum
}

impl WithSimd for Kernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Kernel { w, xq, xs, m, col0, out } = self;
        let k = w.k;
        let blocks = k / BLOCK;
        for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
            let j = col0 + c;
            let wq = &w.qs[j * k..(j + 1) * k];
            let ws = &w.scales[j * blocks..(j + 1) * blocks];
            for (r, o) in col_out.iter_mut().enumerate() {
                let rq = &xq[r * k..(r + 1) * k];
                let rs = &xs[r * blocks..(r + 1) * blocks];
                let mut acc = 0f32;
                for b in 0..blocks {
                    let isum = block_dot(&wq[b * BLOCK..], &rq[b * BLOCK..]);
                    acc += isum as f32 * (ws[b] * rs[b]);
                }
                *o = acc;
            }
        }
    }
}

/// The same computation with explicit AVX2 instructions (llama.cpp's sign trick for signed 8-bit products).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn kernel_v3(v: pulp::x86::V3, kernel: Kernel<'_>) {
    {
        use core::arch::x86_64::{__m256, __m256i};
        let Kernel { w, xq, xs, m, col0, out } = kernel;
        let k = w.k;
        let blocks = k / BLOCK;
        let ones: __m256i = v.avx._mm256_set1_epi16(1);
        let load = |s: &[i8]| -> __m256i {
            let arr: [i8; BLOCK] = s[..BLOCK].try_into().unwrap_or([0; BLOCK]);
            pulp::cast(arr)
        };
        const ROWS: usize = 4;
        for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
            let j = col0 + c;
            let wq = &w.qs[j * k..(j + 1) * k];
            let ws = &w.scales[j * blocks..(j + 1) * blocks];
            // Up to four input rows share each loaded weight block; every row's arithmetic is the same as alone.
            for (g, group) in col_out.chunks_mut(ROWS).enumerate() {
                let r0 = g * ROWS;
                let nr = group.len();
                let mut acc: [__m256; ROWS] = [v.avx._mm256_setzero_ps(); ROWS];
                for b in 0..blocks {
                    let wb = load(&wq[b * BLOCK..]);
                    let aw = v.avx2._mm256_sign_epi8(wb, wb);
                    for (i, a) in acc.iter_mut().enumerate().take(nr) {
                        let r = r0 + i;
                        let xb = load(&xq[r * k + b * BLOCK..]);
                        let sx = v.avx2._mm256_sign_epi8(xb, wb);
                        let dot16 = v.avx2._mm256_maddubs_epi16(aw, sx);
                        let dot32 = v.avx2._mm256_madd_epi16(dot16, ones);
                        let scale = v.avx._mm256_set1_ps(ws[b] * xs[r * blocks + b]);
                        *a = v.fma._mm256_fmadd_ps(v.avx._mm256_cvtepi32_ps(dot32), scale, *a);
                    }
                }
                for (o, a) in group.iter_mut().zip(acc) {
                    let lanes: [f32; 8] = pulp::cast(a);
                    *o = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
                }
            }
        }
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
        let q = Q8Matrix::from_f32(&w, n, k).expect("quantize");
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
