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

impl Packed {
    /// Packs `weights` (`[n, k]`, a row per output as PyTorch stores them).
    pub(crate) fn new(weights: &[f32], n: usize, k: usize) -> Packed {
        assert_eq!(weights.len(), n * k, "weights are not [n, k]");
        let count = n.div_ceil(PANEL);
        let mut panels = vec![0f32; count * k * PANEL];
        for (p, panel) in panels.chunks_exact_mut(k * PANEL).enumerate() {
            for c in 0..PANEL.min(n - p * PANEL) {
                let row = &weights[(p * PANEL + c) * k..][..k];
                for (i, &w) in row.iter().enumerate() {
                    panel[i * PANEL + c] = w;
                }
            }
        }
        Packed { n, k, panels }
    }

    /// How many panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Columns `panels.start * 32 ..` (clipped to `n`) of `x Wᵀ + bias` for the `rows` rows of `x`
    /// (`[rows, k]`), into `out`, a `[rows, stride]` block whose column 0 is the first of those columns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product(
        &self,
        way: Way,
        x: &[f32],
        rows: usize,
        panels: Range<usize>,
        bias: &[f32],
        out: &mut [f32],
        stride: usize,
    ) {
        self.product_then(way, x, rows, panels, bias, false, out, stride)
    }

    /// [`Self::product`], with GELU applied to each result (`gelu`) while it is in cache.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product_then(
        &self,
        way: Way,
        x: &[f32],
        rows: usize,
        panels: Range<usize>,
        bias: &[f32],
        gelu: bool,
        out: &mut [f32],
        stride: usize,
    ) {
        let k = self.k;
        assert!(x.len() >= rows * k && bias.len() == self.n && panels.end <= self.panels());
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
                let x = &x[r0 * k..(r0 + r) * k];
                tile_sums(way, x, r, k, panel, &mut sums[..r]);
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

/// The sums of `rows` rows of `x` (`[rows, k]`) with one panel, into `sums`.
fn tile_sums(way: Way, x: &[f32], rows: usize, k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
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
                            unsafe { tile_avx512::<$r>(x, k, panel, sums) }
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
                            unsafe { tile_avx2::<$r>(x, k, panel, sums) }
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
    tile_portable(x, rows, k, panel, sums);
}

/// Plain loops: each row's 32 sums over `k`, in order.
fn tile_portable(x: &[f32], rows: usize, k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    for (r, s) in sums.iter_mut().enumerate().take(rows) {
        *s = [0.0; PANEL];
        for (&a, w) in x[r * k..(r + 1) * k].iter().zip(panel.chunks_exact(PANEL)) {
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
fn tile_avx512<const R: usize>(x: &[f32], k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    use core::arch::x86_64::*;
    assert!(x.len() >= R * k && panel.len() >= k * PANEL && sums.len() >= R);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (x, w) = (x.as_ptr(), panel.as_ptr());
    for i in 0..k {
        // SAFETY: `i < k`, `r < R`: within `x` (`R·k` values) and `panel` (`k·32`), as asserted above.
        unsafe {
            let w0 = _mm512_loadu_ps(w.add(i * PANEL));
            let w1 = _mm512_loadu_ps(w.add(i * PANEL + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * k + i));
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
fn tile_avx2<const R: usize>(x: &[f32], k: usize, panel: &[f32], sums: &mut [[f32; PANEL]]) {
    use core::arch::x86_64::*;
    assert!(x.len() >= R * k && panel.len() >= k * PANEL && sums.len() >= R);
    let (x, w) = (x.as_ptr(), panel.as_ptr());
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for i in 0..k {
            // SAFETY: `i < k`, `r < R`, `half < 2`: within `x` and `panel`, as asserted above.
            unsafe {
                let w0 = _mm256_loadu_ps(w.add(i * PANEL + half * 16));
                let w1 = _mm256_loadu_ps(w.add(i * PANEL + half * 16 + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(*x.add(r * k + i));
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
mod tests {
    use super::*;

    fn random(len: usize, seed: u32) -> Vec<f32> {
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
                        packed.product(way, &x, rows, panels.clone(), &bias, &mut out, width);
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
                        packed.product(way, &x[(rows - 1) * k..], 1, panels, &bias, &mut alone, width);
                        assert_eq!(alone, out[(rows - 1) * width..], "{way:?} rows={rows}");
                    }
                }
            }
        }
    }
}
