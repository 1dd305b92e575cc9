//! Batched matmul of block-quantised weight matrices (the formats are in `q4` and `q8`): the input rows are
//! quantised to 8 bits per 32-value block, each weight block is read once per call and used for every input row
//! (so a batch of B tokens costs little more memory traffic than one), integer dot products per block with f32
//! scales, explicit AVX2 through `pulp` where the CPU has it (a portable loop elsewhere), threads via rayon over
//! column ranges. Results for one input row do not depend on the other rows in the batch, nor on the threads.
//! Also `vectorized`, which compiles other hot loops for AVX2 where the CPU has it.

use pulp::{Arch, NullaryFnOnce, Simd, WithSimd};
use rayon::prelude::*;

/// Values per quantisation block.
pub(crate) const BLOCK: usize = 32;
/// Below this many weight bytes times input rows a matmul runs on the calling thread (dispatch costs more).
const PARALLEL_MIN_WORK: usize = 1 << 16;
/// Parallel tasks per thread (a few, so that a thread slowed by other load does not hold up the rest).
const TASKS_PER_THREAD: usize = 4;
/// Input rows that share each loaded weight block in the kernels (the accumulators of 8 rows fill half the
/// AVX2 registers).
const ROWS: usize = 8;

/// Run `op` compiled for AVX2/FMA where the CPU has it (the loops inlined into its `call`, which must be
/// `#[inline(always)]`, then use 256-bit vectors; the default x86-64 target only has 128-bit SSE2).
/// Floating-point results are the same either way: no operations are fused or reordered.
#[inline(always)]
pub(crate) fn vectorized<Op: NullaryFnOnce>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new() {
        return v3.vectorize(op);
    }
    op.call()
}

/// Input rows quantised to 8 bits per 32-value block (value = `d * q`; `s = d * sum(q)` serves the weight
/// formats with an offset), in groups of 8, 4, 2 or 1 rows that the kernels process together. Within a group
/// the data is block-major: block `b` of row `i` is entry `b * rows + i`, so the scales of all the group's rows
/// for one block are adjacent (one vector operation for all of them).
struct XGroup {
    /// First input row.
    row0: usize,
    rows: usize,
    q: Vec<[i8; BLOCK]>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Quantise `m` rows of `x` (`[m, k]`) into groups of at most `ROWS` rows.
fn quantize_groups(x: &[f32], m: usize, k: usize) -> Vec<XGroup> {
    let blocks = k / BLOCK;
    let mut groups = Vec::new();
    let mut row0 = 0;
    while row0 < m {
        let left = m - row0;
        let rows = if left >= ROWS { ROWS } else { 1 << left.ilog2() };
        let n = blocks * rows;
        let mut g = XGroup { row0, rows, q: vec![[0; BLOCK]; n], d: vec![0.0; n], s: vec![0.0; n] };
        for (i, row) in x[row0 * k..(row0 + rows) * k].chunks_exact(k).enumerate() {
            for (b, xb) in row.chunks_exact(BLOCK).enumerate() {
                let (q, d) = quantize_block(xb);
                let sum: i32 = q.iter().map(|&v| v as i32).sum();
                let at = b * rows + i;
                (g.q[at], g.d[at], g.s[at]) = (q, d, d * sum as f32);
            }
        }
        groups.push(g);
        row0 += rows;
    }
    groups
}

/// Symmetric 8-bit quantisation of one block: values in -127..=127 and the scale.
fn quantize_block(xb: &[f32]) -> ([i8; BLOCK], f32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (q, &v) in q.iter_mut().zip(xb) {
        // Round half away from zero without a libm call (the cast truncates).
        let r = v * inv;
        *q = (r + 0.5f32.copysign(r)).clamp(-127.0, 127.0) as i8;
    }
    (q, scale)
}

/// A weight block format: 32 values `d * q (+ m)` with integer `q`.
pub(crate) trait WeightBlock: Copy + Send + Sync {
    /// Whether values carry an offset `m` (multiplied by the input block's `s`).
    const OFFSET: bool;
    /// Bytes read per block (for the parallel-work threshold).
    const BYTES: usize;
    fn scale(&self) -> f32;
    fn offset(&self) -> f32;
    /// Integer dot product of the `q` values with an input block.
    fn dot(&self, x: &[i8; BLOCK]) -> i32;
    /// Appends the 32 dequantised values.
    fn dequantize(&self, out: &mut Vec<f32>);
    /// The block loaded into registers, once for all input rows.
    #[cfg(target_arch = "x86_64")]
    type Loaded: Copy;
    #[cfg(target_arch = "x86_64")]
    fn load_v3(&self, v: pulp::x86::V3) -> Self::Loaded;
    /// Integer dot product with an input block as eight i32 partial sums.
    #[cfg(target_arch = "x86_64")]
    fn dot_v3(v: pulp::x86::V3, w: Self::Loaded, x: core::arch::x86_64::__m256i) -> core::arch::x86_64::__m256i;
}

/// A `[n, k]` matrix of weight blocks, row-major (`k / 32` blocks per row).
pub(crate) struct BlockMatrix<B> {
    n: usize,
    k: usize,
    blocks: Vec<B>,
}

impl<B: WeightBlock> BlockMatrix<B> {
    /// From `n * k / 32` row-major blocks; `k` must be a multiple of 32.
    pub(crate) fn new(n: usize, k: usize, blocks: Vec<B>) -> Option<Self> {
        (k.is_multiple_of(BLOCK) && blocks.len() == n * k / BLOCK).then_some(BlockMatrix { n, k, blocks })
    }

    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    fn row_blocks(&self, j: usize) -> &[B] {
        let per_row = self.k / BLOCK;
        &self.blocks[j * per_row..(j + 1) * per_row]
    }

    /// Dequantised row `i` (used for embedding lookups).
    pub(crate) fn row(&self, i: usize, out: &mut Vec<f32>) {
        for b in self.row_blocks(i) {
            b.dequantize(out);
        }
    }

    /// `x @ self^T` for `m` rows of `x` (`[m, k]`); returns `[m, n]`.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, true)
    }

    /// `matmul`, on the explicit AVX2 kernel when `simd` and the CPU allow, else on the portable one.
    fn matmul_with(&self, x: &[f32], m: usize, simd: bool) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let groups = quantize_groups(x, m, k);
        let arch = Arch::new();
        #[cfg(target_arch = "x86_64")]
        let v3 = pulp::x86::V3::try_new().filter(|_| simd);
        let work = n * m * (k / BLOCK) * B::BYTES;
        let kernel = |col0: usize, out: &mut [f32]| {
            let kernel = Kernel { w: self, groups: &groups, m, col0, out };
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = v3 {
                v3.vectorize(move || kernel_v3(v3, kernel));
                return;
            }
            if simd {
                arch.dispatch(kernel);
            } else {
                pulp::Scalar::new().vectorize(kernel);
            }
        };
        // Column-major result: each task owns a contiguous run of columns.
        let mut tmp = vec![0f32; n * m];
        let threads = rayon::current_num_threads();
        if work < PARALLEL_MIN_WORK || threads == 1 {
            kernel(0, &mut tmp);
        } else {
            let cols = n.div_ceil(threads * TASKS_PER_THREAD).max(1);
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
}

/// One column task: columns `col0..` of the result for all `m` input rows.
struct Kernel<'a, B> {
    w: &'a BlockMatrix<B>,
    groups: &'a [XGroup],
    m: usize,
    col0: usize,
    /// Column-major results `[columns][m]`.
    out: &'a mut [f32],
}

impl<B: WeightBlock> WithSimd for Kernel<'_, B> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Kernel { w, groups, m, col0, out } = self;
        for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
            let wrow = w.row_blocks(col0 + c);
            for g in groups {
                for (i, o) in col_out[g.row0..g.row0 + g.rows].iter_mut().enumerate() {
                    let mut acc = 0f32;
                    let mut macc = 0f32;
                    for (b, wb) in wrow.iter().enumerate() {
                        let at = b * g.rows + i;
                        acc += wb.dot(&g.q[at]) as f32 * (wb.scale() * g.d[at]);
                        if B::OFFSET {
                            macc += wb.offset() * g.s[at];
                        }
                    }
                    *o = acc + macc;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn kernel_v3<B: WeightBlock>(v: pulp::x86::V3, kernel: Kernel<'_, B>) {
    let Kernel { w, groups, m, col0, out } = kernel;
    let (mut s8, mut s4, mut s2, mut s1) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
        let wrow = w.row_blocks(col0 + c);
        // The rows of a group share each loaded weight block; every row's arithmetic is the same as alone.
        for g in groups {
            let o = &mut col_out[g.row0..g.row0 + g.rows];
            match g.rows {
                8 => o.copy_from_slice(&column_v3::<B, 8>(v, wrow, g, &mut s8)),
                4 => o.copy_from_slice(&column_v3::<B, 4>(v, wrow, g, &mut s4)),
                2 => o.copy_from_slice(&column_v3::<B, 2>(v, wrow, g, &mut s2)),
                _ => o.copy_from_slice(&column_v3::<B, 1>(v, wrow, g, &mut s1)),
            }
        }
    }
}

/// Dot products of one weight row with the `R` input rows of a group; `scales` is scratch space.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn column_v3<B: WeightBlock, const R: usize>(
    v: pulp::x86::V3,
    wrow: &[B],
    g: &XGroup,
    scales: &mut Vec<[f32; R]>,
) -> [f32; R] {
    use core::arch::x86_64::__m256;
    let (q, _) = g.q.as_chunks::<R>();
    let (d, _) = g.d.as_chunks::<R>();
    let (s, _) = g.s.as_chunks::<R>();
    let mut macc = [0f32; R];
    if R == 1 {
        // One row: everything in one pass (the scale goes from a register straight to the broadcast).
        let mut acc = v.avx._mm256_setzero_ps();
        for (((wb, q), d), s) in wrow.iter().zip(q).zip(d).zip(s) {
            let dot = B::dot_v3(v, wb.load_v3(v), pulp::cast(q[0]));
            let scale = v.avx._mm256_set1_ps(wb.scale() * d[0]);
            acc = v.fma._mm256_fmadd_ps(v.avx._mm256_cvtepi32_ps(dot), scale, acc);
            if B::OFFSET {
                macc[0] += wb.offset() * s[0];
            }
        }
        let l: [f32; 8] = pulp::cast(acc);
        return [(((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + macc[0]; R];
    }
    // Several rows: first the per-block scales of all rows and the offset terms (short loops over R that
    // become vector operations), so that the dot-product loop only loads them (computing them in the loop
    // costs a stalled store-to-load round trip per row).
    scales.clear();
    for ((wb, d), s) in wrow.iter().zip(d).zip(s) {
        let dw = wb.scale();
        scales.push(core::array::from_fn(|i| dw * d[i]));
        if B::OFFSET {
            let mw = wb.offset();
            for i in 0..R {
                macc[i] += mw * s[i];
            }
        }
    }
    let mut acc: [__m256; R] = [v.avx._mm256_setzero_ps(); R];
    for ((wb, q), scale) in wrow.iter().zip(q).zip(scales.iter()) {
        let loaded = wb.load_v3(v);
        for i in 0..R {
            let dot = B::dot_v3(v, loaded, pulp::cast(q[i]));
            acc[i] = v.fma._mm256_fmadd_ps(v.avx._mm256_cvtepi32_ps(dot), v.avx._mm256_set1_ps(scale[i]), acc[i]);
        }
    }
    let mut out = [0f32; R];
    for i in 0..R {
        let l: [f32; 8] = pulp::cast(acc[i]);
        out[i] = (((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + macc[i];
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks a matrix against its dequantised values: close to the exact product, the same for a row alone
    /// as in a batch (for every batch size up to `x`'s rows), and the portable kernel close to the SIMD one.
    pub(crate) fn check_matmul<B: WeightBlock>(q: &BlockMatrix<B>, x: &[f32]) {
        let (n, k) = (q.n, q.k);
        let m = x.len() / k;
        let mut dense = Vec::new();
        for j in 0..n {
            q.row(j, &mut dense);
        }
        let y = q.matmul(x, m);
        let portable = q.matmul_with(x, m, false);
        for r in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * dense[j * k + i]).sum();
                let got = y[r * n + j];
                assert!((got - exact).abs() < 0.05 * (1.0 + exact.abs()), "{r},{j}: {got} vs {exact}");
                assert!((portable[r * n + j] - got).abs() < 1e-3 * (1.0 + got.abs()), "{r},{j}");
            }
        }
        for rows in 1..m {
            let part = q.matmul(&x[..rows * k], rows);
            assert_eq!(part, y[..rows * n].to_vec(), "batch of {rows}");
        }
        for r in 0..m {
            assert_eq!(q.matmul(&x[r * k..(r + 1) * k], 1), y[r * n..(r + 1) * n].to_vec(), "row {r} alone");
        }
    }
}
