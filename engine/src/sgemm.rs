//! f32 products with weights packed once at load (`y = x Wᵀ + b` for the sentence encoders on CPUs without
//! AMX): the weights in panels of 32 columns, each panel `k` rows of 32 values, so that a kernel reads one
//! panel front to back while it holds a tile of rows' sums in registers.
//!
//! Kernels, chosen at run time: AVX-512 (tiles of up to 12 rows × 32 columns: 24 sums in registers, one
//! broadcast input and two weight vectors per step), AVX2 (up to 6 rows × 16 columns, the classic 6×16 tile)
//! and portable code. Each output is summed over `k` in order, with fused multiply-adds on the vector paths,
//! so a row's result does not depend on the other rows of the call nor on the threads.

use std::ops::Range;

/// Columns per panel.
pub(crate) const PANEL: usize = 32;
/// Rows per AVX-512 tile.
const ROWS_512: usize = 12;
/// Rows per AVX2 tile.
const ROWS_256: usize = 6;
/// Rows per portable tile.
const ROWS_PORTABLE: usize = 4;

/// The code paths, each tested against a scalar reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    Avx512,
    Avx2,
    Portable,
}

impl Way {
    /// The fastest path this CPU runs.
    pub(crate) fn best() -> Way {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                return Way::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Way::Avx2;
            }
        }
        Way::Portable
    }

    /// Every path this CPU runs (for tests).
    #[cfg(test)]
    pub(crate) fn all_here() -> Vec<Way> {
        match Way::best() {
            Way::Avx512 => vec![Way::Avx512, Way::Avx2, Way::Portable],
            Way::Avx2 => vec![Way::Avx2, Way::Portable],
            Way::Portable => vec![Way::Portable],
        }
    }

    /// For reports: what the encoders' dense layers run on.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Way::Avx512 => "f32 AVX-512 (packed weights)",
            Way::Avx2 => "f32 AVX2 (packed weights)",
            Way::Portable => "f32 portable (packed weights)",
        }
    }

    /// Rows per tile: what a task's row count is best a multiple of.
    pub(crate) fn tile_rows(self) -> usize {
        match self {
            Way::Avx512 => ROWS_512,
            Way::Avx2 => ROWS_256,
            Way::Portable => ROWS_PORTABLE,
        }
    }
}

/// `Wᵀ` of an `[n, k]` weight matrix in panels of [`PANEL`] columns (the last one padded with zeros).
pub(crate) struct Packed {
    pub(crate) n: usize,
    pub(crate) k: usize,
    panels: Vec<f32>,
}

/// Input rows of a product: `count` rows of `k` values, each `stride` values after the one before (`stride`
/// is `k` for a dense `[count, k]` matrix; more when the rows are parts of wider rows, as a head's queries
/// are of the `[len, 3 · hidden]` QKV rows).
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) count: usize,
    pub(crate) stride: usize,
}

impl<'a> Rows<'a> {
    /// The rows of a dense `[count, k]` matrix.
    pub(crate) fn dense(data: &'a [f32], count: usize, k: usize) -> Rows<'a> {
        Rows { data, count, stride: k }
    }

    /// Rows `from..from + count`.
    fn slice(self, from: usize, count: usize) -> Rows<'a> {
        let data = if count == 0 { &self.data[..0] } else { &self.data[from * self.stride..] };
        Rows { data, count, stride: self.stride }
    }
}

impl Packed {
    /// Packs `weights` (`[n, k]`, a row per output as PyTorch stores them).
    pub(crate) fn new(weights: &[f32], n: usize, k: usize) -> Packed {
        assert_eq!(weights.len(), n * k, "weights are not [n, k]");
        Self::from_outputs(weights, k, n, k)
    }

    /// Packs weights given a row per output: output `c`'s `k` weights at `src[c · stride..]`.
    pub(crate) fn from_outputs(src: &[f32], stride: usize, n: usize, k: usize) -> Packed {
        assert!(n == 0 || src.len() >= (n - 1) * stride + k, "fewer weights than [n, k] at this stride");
        let count = n.div_ceil(PANEL);
        let mut panels = vec![0f32; count * k * PANEL];
        for (p, panel) in panels.chunks_exact_mut(k * PANEL).enumerate() {
            for c in 0..PANEL.min(n - p * PANEL) {
                let row = &src[(p * PANEL + c) * stride..][..k];
                for (i, &w) in row.iter().enumerate() {
                    panel[i * PANEL + c] = w;
                }
            }
        }
        Packed { n, k, panels }
    }

    /// Packs weights given a row per input: input `i`'s `n` weights (one per output) at `src[i · stride..]`
    /// (`Wᵀ` as it is stored; each panel row is then a plain copy).
    pub(crate) fn from_inputs(src: &[f32], stride: usize, k: usize, n: usize) -> Packed {
        assert!(k == 0 || src.len() >= (k - 1) * stride + n, "fewer weights than [k, n] at this stride");
        let count = n.div_ceil(PANEL);
        let mut panels = vec![0f32; count * k * PANEL];
        for (p, panel) in panels.chunks_exact_mut(k * PANEL).enumerate() {
            let cols = PANEL.min(n - p * PANEL);
            for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                row[..cols].copy_from_slice(&src[i * stride + p * PANEL..][..cols]);
            }
        }
        Packed { n, k, panels }
    }

    /// How many panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Columns `panels.start * 32 ..` (clipped to `n`) of `x Wᵀ + bias` for the rows `x`, into `out`, a
    /// `[rows, stride]` block whose column 0 is the first of those columns.
    pub(crate) fn product(
        &self,
        way: Way,
        x: Rows<'_>,
        panels: Range<usize>,
        bias: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        self.product_then(way, x, panels, bias, false, out, stride)
    }

    /// [`Self::product`], with GELU applied to each result (`gelu`) while it is in cache.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product_then(
        &self,
        way: Way,
        x: Rows<'_>,
        panels: Range<usize>,
        bias: &[f32],
        gelu: bool,
        out: &mut [f32],
        stride: usize,
    ) {
        let (k, rows) = (self.k, x.count);
        assert!(x.stride >= k && (rows == 0 || x.data.len() >= (rows - 1) * x.stride + k));
        assert!(bias.len() == self.n && panels.end <= self.panels());
        let first = panels.start * PANEL;
        assert!(out.len() >= rows.saturating_sub(1) * stride + (panels.end * PANEL).min(self.n) - first);
        let tile = way.tile_rows();
        let mut sums = [[0f32; PANEL]; ROWS_512];
        for p in panels {
            let panel = &self.panels[p * k * PANEL..(p + 1) * k * PANEL];
            let cols = PANEL.min(self.n - p * PANEL);
            let bias = &bias[p * PANEL..p * PANEL + cols];
            for r0 in (0..rows).step_by(tile) {
                let r = tile.min(rows - r0);
                tile_sums(way, x.slice(r0, r), k, panel, &mut sums[..r]);
                let out = &mut out[r0 * stride + p * PANEL - first..];
                crate::matmul::vectorized_wide(Store { sums: &sums[..r], bias, gelu, out, stride });
            }
        }
    }
}

/// A tile's sums plus the bias (then GELU) into its rows of the output, as an operation for `vectorized_wide`.
struct Store<'a> {
    sums: &'a [[f32; PANEL]],
    /// The tile's columns' biases (as many as it has columns).
    bias: &'a [f32],
    gelu: bool,
    out: &'a mut [f32],
    stride: usize,
}

impl pulp::NullaryFnOnce for Store<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Store { sums, bias, gelu, out, stride } = self;
        let cols = bias.len();
        for (i, s) in sums.iter().enumerate() {
            let o = &mut out[i * stride..i * stride + cols];
            if gelu {
                for ((o, s), b) in o.iter_mut().zip(s).zip(bias) {
                    *o = crate::fastmath::gelu(s + b);
                }
            } else {
                for ((o, s), b) in o.iter_mut().zip(s).zip(bias) {
                    *o = s + b;
                }
            }
        }
    }
}

/// The sums of the rows `x` (of `k` inputs each) with one panel, into `sums`.
fn tile_sums(way: Way, x: Rows<'_>, k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    let rows = x.count;
    #[cfg(target_arch = "x86_64")]
    match way {
        Way::Avx512 => {
            macro_rules! rows512 {
                ($($r:literal)*) => {
                    match rows {
                        $($r => {
                            #[allow(unsafe_code)]
                            // SAFETY: `Way::Avx512` is chosen (`best`, `all_here`) only where the CPU has
                            // AVX-512F, AVX2 and FMA.
                            unsafe { tile_avx512::<$r>(x.data, x.stride, k, panel, sums) }
                        })*
                        _ => unreachable!("at most {ROWS_512} rows per tile"),
                    }
                };
            }
            return rows512!(1 2 3 4 5 6 7 8 9 10 11 12);
        }
        Way::Avx2 => {
            macro_rules! rows256 {
                ($($r:literal)*) => {
                    match rows {
                        $($r => {
                            #[allow(unsafe_code)]
                            // SAFETY: `Way::Avx2` is chosen only where the CPU has AVX2 and FMA.
                            unsafe { tile_avx2::<$r>(x.data, x.stride, k, panel, sums) }
                        })*
                        _ => unreachable!("at most {ROWS_256} rows per tile"),
                    }
                };
            }
            return rows256!(1 2 3 4 5 6);
        }
        Way::Portable => {}
    }
    let _ = way;
    tile_portable(x, k, panel, sums);
}

/// Plain loops: each row's 32 sums over `k`, in order.
fn tile_portable(x: Rows<'_>, k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    for (r, s) in sums.iter_mut().enumerate().take(x.count) {
        *s = [0.0; PANEL];
        for (&a, w) in x.data[r * x.stride..r * x.stride + k].iter().zip(panel.chunks_exact(PANEL)) {
            for (s, w) in s.iter_mut().zip(w) {
                *s += a * w;
            }
        }
    }
}

/// `R` rows × 32 columns on AVX-512: two 16-lane sums per row held in registers over the whole of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(unsafe_code)]
fn tile_avx512<const R: usize>(x: &[f32], stride: usize, k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    use core::arch::x86_64::*;
    assert!(stride >= k && x.len() >= (R - 1) * stride + k && panel.len() >= k * PANEL && sums.len() >= R);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (x, w) = (x.as_ptr(), panel.as_ptr());
    for i in 0..k {
        // SAFETY: `i < k`, `r < R`: within `x` (`(R - 1)·stride + k` values) and `panel` (`k·32`), as asserted
        // above.
        unsafe {
            let w0 = _mm512_loadu_ps(w.add(i * PANEL));
            let w1 = _mm512_loadu_ps(w.add(i * PANEL + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * stride + i));
                acc[0] = _mm512_fmadd_ps(a, w0, acc[0]);
                acc[1] = _mm512_fmadd_ps(a, w1, acc[1]);
            }
        }
    }
    for (s, acc) in sums.iter_mut().zip(&acc) {
        // SAFETY: each row of `sums` holds 32 values: two stores of 16.
        unsafe {
            _mm512_storeu_ps(s.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(s.as_mut_ptr().add(16), acc[1]);
        }
    }
}

/// `R` rows × 32 columns on AVX2, as two halves of 16 columns (`R` rows × two 8-lane sums each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(unsafe_code)]
fn tile_avx2<const R: usize>(x: &[f32], stride: usize, k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    use core::arch::x86_64::*;
    assert!(stride >= k && x.len() >= (R - 1) * stride + k && panel.len() >= k * PANEL && sums.len() >= R);
    let (x, w) = (x.as_ptr(), panel.as_ptr());
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for i in 0..k {
            // SAFETY: `i < k`, `r < R`, `half < 2`: within `x` and `panel`, as asserted above.
            unsafe {
                let w0 = _mm256_loadu_ps(w.add(i * PANEL + half * 16));
                let w1 = _mm256_loadu_ps(w.add(i * PANEL + half * 16 + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(*x.add(r * stride + i));
                    acc[0] = _mm256_fmadd_ps(a, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(a, w1, acc[1]);
                }
            }
        }
        for (s, acc) in sums.iter_mut().zip(&acc) {
            // SAFETY: each row of `sums` holds 32 values; this half's 16 start at `half · 16`.
            unsafe {
                _mm256_storeu_ps(s.as_mut_ptr().add(half * 16), acc[0]);
                _mm256_storeu_ps(s.as_mut_ptr().add(half * 16 + 8), acc[1]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` values in [-1, 1) from a seeded linear congruential generator (also used by the dense tests).
    pub(crate) fn random(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 8) as f32 / (1 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Every path, on every row count of a tile and past it, whole and partial panels, a column range
    /// starting past panel 0: against f64 sums, and a row alone gives the same bits as in the batch.
    #[test]
    fn every_way_matches_f64_sums() {
        for (n, k) in [(64, 96), (40, 7), (100, 33)] {
            let w = random(n * k, 1);
            let bias = random(n, 2);
            let packed = Packed::new(&w, n, k);
            for way in Way::all_here() {
                for rows in [1, 2, 5, 6, 7, 11, 12, 13, 25] {
                    let x = random(rows * k, 3 + rows as u32);
                    for panels in [0..packed.panels(), 1..packed.panels()] {
                        let first = panels.start * PANEL;
                        let width = n - first;
                        let mut out = vec![f32::NAN; rows * width];
                        packed.product(way, Rows::dense(&x, rows, k), panels.clone(), &bias, &mut out, width);
                        for r in 0..rows {
                            for c in first..n {
                                let want =
                                    (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i])).sum::<f64>()
                                        + f64::from(bias[c]);
                                let got = f64::from(out[r * width + c - first]);
                                assert!(
                                    (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                                    "{way:?} n={n} k={k} rows={rows} ({r}, {c}): {got} vs {want}"
                                );
                            }
                        }
                        let mut alone = vec![0f32; width];
                        let last = Rows::dense(&x[(rows - 1) * k..], 1, k);
                        packed.product(way, last, panels, &bias, &mut alone, width);
                        assert_eq!(alone, out[(rows - 1) * width..], "{way:?} rows={rows}");
                    }
                }
            }
        }
    }

    /// Rows read at a stride from wider rows, and weights packed from `Wᵀ` at a stride, give the same bits as
    /// the dense forms.
    #[test]
    fn strided_rows_and_transposed_weights_match_the_dense_forms() {
        let (n, k, rows, wide) = (40, 19, 13, 50);
        let w = random(n * k, 7);
        let bias = random(n, 8);
        let x = random(rows * k, 9);
        // `x` inside rows of `wide` values, from column 5; `Wᵀ` inside rows of `wide` values, from column 3.
        let mut x_wide = random(rows * wide, 10);
        for r in 0..rows {
            x_wide[r * wide + 5..r * wide + 5 + k].copy_from_slice(&x[r * k..(r + 1) * k]);
        }
        let mut wt_wide = random(k * wide, 11);
        for i in 0..k {
            for c in 0..n {
                wt_wide[i * wide + 3 + c] = w[c * k + i];
            }
        }
        let dense = Packed::new(&w, n, k);
        let from_inputs = Packed::from_inputs(&wt_wide[3..], wide, k, n);
        for way in Way::all_here() {
            let mut want = vec![0f32; rows * n];
            dense.product(way, Rows::dense(&x, rows, k), 0..dense.panels(), &bias, &mut want, n);
            let strided = Rows { data: &x_wide[5..], count: rows, stride: wide };
            let mut got = vec![0f32; rows * n];
            dense.product(way, strided, 0..dense.panels(), &bias, &mut got, n);
            assert_eq!(got, want, "{way:?}: strided rows");
            let mut got = vec![0f32; rows * n];
            from_inputs.product(way, Rows::dense(&x, rows, k), 0..from_inputs.panels(), &bias, &mut got, n);
            assert_eq!(got, want, "{way:?}: weights packed from their transpose");
        }
    }
}
