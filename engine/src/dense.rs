//! Dense layers of the sentence encoders (`y = x Wᵀ + b`, optionally GELU), on the fastest path the CPU has:
//! AMX tiles where present, in split bf16 (inputs and weights each a bf16 value and a bf16 residual, see
//! `amx::Tiles::product_split`; the weights packed once at load, f32 sums),
//! otherwise f32 with the weights packed once at load (`sgemm`: AVX-512, AVX2 or portable kernels). On either
//! path the results for one input row do not depend on the other rows, nor on the threads.

use rayon::prelude::*;

use crate::amx::{self, BLOCK, DEPTH, TILE};
use crate::error::EngineError;
use crate::sgemm::{self, Rows, Way};

/// What a layer applies to its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    Identity,
    Gelu,
}

/// The code paths of [`Dense`], each tested against a scalar reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DensePath {
    /// f32 weights (packed at load) and inputs, f32 sums.
    F32,
    /// Split bf16 weights and inputs on AMX tiles, f32 sums.
    AmxBf16,
}

impl DensePath {
    /// The fastest path this CPU runs for a `[n, k]` layer.
    pub(crate) fn best(n: usize, k: usize) -> DensePath {
        if amx::wanted_for_encoders() && n.is_multiple_of(BLOCK) && k.is_multiple_of(DEPTH) {
            DensePath::AmxBf16
        } else {
            DensePath::F32
        }
    }
}

/// What the sentence encoders' dense layers run on this CPU (for benchmark reports).
pub fn encoder_path() -> &'static str {
    if amx::wanted_for_encoders() {
        "AMX bf16 tiles"
    } else {
        Way::best().describe()
    }
}

enum Weights {
    /// 32-column blocks, each `k / 32` steps of two AMX B tiles (see `amx::pack_step`): the weights rounded to
    /// bf16, and what the rounding lost (see `amx::Tiles::product_split`).
    Packed([amx::Packed; 2]),
    /// f32 panels of 32 columns, and the kernels that read them.
    F32(sgemm::Packed, Way),
}

/// A dense layer with `n` outputs of `k` inputs.
pub(crate) struct Dense {
    n: usize,
    k: usize,
    bias: Vec<f32>,
    weights: Weights,
}

impl Dense {
    /// A layer from its weights `[n, k]` (a row per output, as PyTorch stores them) and bias `[n]`.
    /// A wrong shape is refused with what was given.
    pub(crate) fn new(weights: &[f32], bias: Vec<f32>, n: usize, k: usize) -> Result<Dense, String> {
        Self::with_path(weights, bias, n, k, DensePath::best(n, k))
    }

    pub(crate) fn with_path(
        weights: &[f32],
        bias: Vec<f32>,
        n: usize,
        k: usize,
        path: DensePath,
    ) -> Result<Dense, String> {
        if weights.len() != n * k || bias.len() != n {
            return Err(format!("dense layer [{n}, {k}] given {} weights and {} biases", weights.len(), bias.len()));
        }
        let weights = match path {
            DensePath::AmxBf16 => {
                let steps = k / DEPTH;
                let step_len = 2 * TILE * DEPTH;
                let hi: Vec<u16> = weights.iter().map(|&w| amx::to_bf16(w)).collect();
                let lo: Vec<u16> = weights.iter().map(|&w| amx::to_bf16(amx::residual(w))).collect();
                let pack = |rounded: &[u16]| {
                    let rows: Vec<&[u16]> = rounded.chunks_exact(k).collect();
                    let mut packed = amx::Packed::zeroed(n * k);
                    for (cb, block) in packed.chunks_exact_mut(steps * step_len).enumerate() {
                        let cols = &rows[cb * BLOCK..(cb + 1) * BLOCK];
                        for (s, out) in block.chunks_exact_mut(step_len).enumerate() {
                            amx::pack_step(cols, s, out);
                        }
                    }
                    packed
                };
                Weights::Packed([pack(&hi), pack(&lo)])
            }
            DensePath::F32 => Weights::F32(sgemm::Packed::new(weights, n, k), Way::best()),
        };
        Ok(Dense { n, k, bias, weights })
    }

    /// An f32 layer on the kernels of `way` (for tests of each).
    #[cfg(test)]
    fn with_way(weights: &[f32], bias: Vec<f32>, n: usize, k: usize, way: Way) -> Dense {
        let mut layer = Self::with_path(weights, bias, n, k, DensePath::F32).expect("layer");
        layer.weights = Weights::F32(sgemm::Packed::new(weights, n, k), way);
        layer
    }

    pub(crate) fn outputs(&self) -> usize {
        self.n
    }

    /// `act(x Wᵀ + b)` for `m` rows of `x` (`[m, k]`), as `[m, n]`.
    #[cfg(test)]
    pub(crate) fn forward(&self, x: &[f32], m: usize, act: Activation) -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        self.forward_into(x, m, act, &mut amx::Packed::zeroed(0), &mut out)?;
        Ok(out)
    }

    /// `act(x Wᵀ + b)` for `m` rows of `x` (`[m, k]`) into `out` (`[m, n]`); `scratch` holds the packed inputs.
    /// Buffers kept from call to call are not zeroed or faulted in again.
    pub(crate) fn forward_into(
        &self,
        x: &[f32],
        m: usize,
        act: Activation,
        scratch: &mut amx::Packed,
        out: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        assert_eq!(x.len(), m * self.k, "input is not [m, k]");
        match &self.weights {
            Weights::Packed(packed) => self.forward_amx(packed, x, m, act, scratch, out),
            Weights::F32(packed, way) => self.forward_f32(packed, *way, x, m, act, out),
        }
        Ok(())
    }

    fn forward_f32(&self, packed: &sgemm::Packed, way: Way, x: &[f32], m: usize, act: Activation, out: &mut Vec<f32>) {
        let (n, k) = (self.n, self.k);
        let threads = rayon::current_num_threads();
        let panels = packed.panels();
        out.resize(m * n, 0.0);
        let gelu = act == Activation::Gelu;
        if m <= F32_COLUMN_SPLIT_ROWS && threads > 1 && panels > 1 {
            // A few rows (a query, a sentence): every thread on its share of the columns, so that each reads
            // only its share of the weights, which is what such a call waits for.
            let groups = threads.min(panels);
            let parts: Vec<(usize, Vec<f32>)> = (0..groups)
                .into_par_iter()
                .map(|g| {
                    let range = panels * g / groups..panels * (g + 1) / groups;
                    let first = range.start * sgemm::PANEL;
                    let width = (range.end * sgemm::PANEL).min(n) - first;
                    let mut o = vec![0f32; m * width];
                    packed.product_then(way, Rows::dense(x, m, k), range, &self.bias, gelu, &mut o, width);
                    (first, o)
                })
                .collect();
            for (first, part) in &parts {
                let width = part.len() / m;
                for (row, p) in out.chunks_exact_mut(n).zip(part.chunks_exact(width)) {
                    row[*first..first + width].copy_from_slice(p);
                }
            }
            return;
        }
        // Row blocks: each task takes every panel in turn over a block of rows small enough to stay in L2
        // while the panel's weights pass by.
        let tile = way.tile_rows();
        let most = (F32_BLOCK_BYTES / (4 * k) / tile).max(1);
        let rows = m.div_ceil(2 * threads).div_ceil(tile).clamp(1, most) * tile;
        out.par_chunks_mut(rows * n).zip(x.par_chunks(rows * k)).for_each(|(o, x)| {
            packed.product_then(way, Rows::dense(x, o.len() / n, k), 0..panels, &self.bias, gelu, o, n);
        });
    }

    fn forward_amx(
        &self,
        packed: &[amx::Packed; 2],
        x: &[f32],
        m: usize,
        act: Activation,
        a: &mut amx::Packed,
        out: &mut Vec<f32>,
    ) {
        let (n, k) = (self.n, self.k);
        let blocks = m.div_ceil(BLOCK);
        // The inputs as the tiles read them, padded with zero rows to whole 32-row blocks: each block as its
        // bf16 values, then their residuals. Packing writes every value of a whole block; only a last,
        // partial block needs its padding zeroed.
        a.fit(blocks * 2 * BLOCK * k);
        if !m.is_multiple_of(BLOCK) {
            a[(blocks - 1) * 2 * BLOCK * k..].fill(0);
        }
        a.par_chunks_mut(2 * BLOCK * k)
            .zip(x.par_chunks(BLOCK * k))
            .for_each(|(a, x)| crate::matmul::vectorized_wide(PackRows(x, k, a)));
        let threads = rayon::current_num_threads();
        // Up to 4 row blocks per task share each block of weights from the cache.
        let chunk_blocks = (blocks / (2 * threads)).clamp(1, 4);
        let chunk_rows = chunk_blocks * BLOCK;
        out.resize(m * n, 0.0);
        let a = &a[..];
        let weights = [&packed[0][..], &packed[1][..]];
        let task = |chunk: usize, out: &mut [f32]| {
            let a = &a[chunk * 2 * chunk_rows * k..];
            crate::matmul::vectorized_wide(AmxTask { weights, a, bias: &self.bias, k, act, out })
        };
        if blocks <= 1 && threads > 1 && n >= 2 * BLOCK {
            // One row block (a query, a sentence or two): both threads, each on half the columns. Such a call
            // is bound by reading the weights, and each thread then reads half of them.
            let left = n / BLOCK / 2 * BLOCK;
            let per_column = k / DEPTH * 2 * TILE * DEPTH / BLOCK;
            let half = |from: usize, to: usize, out: &mut Vec<f32>| {
                out.resize(m * (to - from), 0.0);
                let weights =
                    [&packed[0][from * per_column..to * per_column], &packed[1][from * per_column..to * per_column]];
                let bias = &self.bias[from..to];
                crate::matmul::vectorized_wide(AmxTask { weights, a, bias, k, act, out })
            };
            let (mut l, mut r) = (Vec::new(), Vec::new());
            rayon::join(|| half(0, left, &mut l), || half(left, n, &mut r));
            for ((row, l), r) in out.chunks_exact_mut(n).zip(l.chunks_exact(left)).zip(r.chunks_exact(n - left)) {
                row[..left].copy_from_slice(l);
                row[left..].copy_from_slice(r);
            }
        } else if blocks <= 1 || threads == 1 {
            task(0, out);
        } else {
            out.par_chunks_mut(chunk_rows * n).enumerate().for_each(|(chunk, o)| task(chunk, o));
        }
    }
}

/// `out` (some rows of `[m, n]`) = `act(A Wᵀ + b)` on the tiles, `a` holding those rows packed.
struct AmxTask<'a> {
    /// The packed weights of the task's columns: the bf16 values and their residuals.
    weights: [&'a [u16]; 2],
    a: &'a [u16],
    bias: &'a [f32],
    k: usize,
    act: Activation,
    out: &'a mut [f32],
}

impl pulp::NullaryFnOnce for AmxTask<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let AmxTask { weights, a, bias, k, act, out } = self;
        let n = bias.len();
        let steps = k / DEPTH;
        let rows = out.len() / n;
        let row_blocks = rows.div_ceil(BLOCK);
        let mut sums: Vec<amx::Block> = (0..row_blocks).map(|_| amx::Block::new()).collect();
        let mut tiles = amx::Tiles::configure();
        let (a_step, b_step) = (BLOCK * DEPTH, 2 * TILE * DEPTH);
        let per_block = steps * b_step;
        for (cb, (b_hi, b_lo)) in weights[0].chunks_exact(per_block).zip(weights[1].chunks_exact(per_block)).enumerate()
        {
            // K in pieces whose weights stay in L1 while every row block of the task uses them.
            for from in (0..steps).step_by(K_PIECE_STEPS) {
                let piece = K_PIECE_STEPS.min(steps - from);
                let b = [&b_hi[from * b_step..], &b_lo[from * b_step..]];
                for (rb, sum) in sums.iter_mut().enumerate() {
                    let base = rb * 2 * BLOCK * k + from * a_step;
                    let a = [&a[base..], &a[base + BLOCK * k..]];
                    tiles.product_split(a, b, piece, from > 0, sum);
                }
            }
            let bias: &[f32; BLOCK] = bias[cb * BLOCK..(cb + 1) * BLOCK].try_into().expect("32 biases");
            for (rb, sum) in sums.iter().enumerate() {
                for i in 0..(rows - rb * BLOCK).min(BLOCK) {
                    let o: &mut [f32; BLOCK] =
                        (&mut out[(rb * BLOCK + i) * n + cb * BLOCK..][..BLOCK]).try_into().expect("32 outputs");
                    let t: &[f32; BLOCK] = sum.0[i * BLOCK..(i + 1) * BLOCK].try_into().expect("32 sums");
                    if act == Activation::Gelu {
                        for j in 0..BLOCK {
                            o[j] = crate::fastmath::gelu(t[j] + bias[j]);
                        }
                    } else {
                        for j in 0..BLOCK {
                            o[j] = t[j] + bias[j];
                        }
                    }
                }
            }
        }
    }
}

/// Up to this many rows, an f32 layer splits its columns between the threads instead of its rows.
const F32_COLUMN_SPLIT_ROWS: usize = 24;
/// The inputs of an f32 task's rows at most (bytes): they stay in L2 while each panel of weights passes.
/// 256 KiB to 2 MiB measured alike on a 2 MiB L2.
const F32_BLOCK_BYTES: usize = 512 * 1024;

/// Steps of 32 inputs per piece of a long sum, so that a piece's weights (both halves of a 32-column block,
/// 4 KiB a step) can stay in L1 while each row block of a task meets them (2 and 12 measured alike).
const K_PIECE_STEPS: usize = 4;

/// `amx::pack_rows`, as an operation for `vectorized`.
struct PackRows<'a>(&'a [f32], usize, &'a mut [u16]);

impl pulp::NullaryFnOnce for PackRows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let (hi, lo) = self.2.split_at_mut(self.2.len() / 2);
        amx::pack_rows_split(self.0, self.1, hi, lo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sgemm::tests::random;

    /// Every path against the f64 sums of the f32 products (the AMX path's split bf16 products carry 16 bits).
    #[test]
    fn every_path_matches_a_scalar_reference() {
        let (n, k) = (64, 96);
        let w = random(n * k, 1);
        let bias = random(n, 2);
        let mut layers: Vec<(String, Dense)> = Way::all_here()
            .into_iter()
            .map(|way| (format!("F32 {way:?}"), Dense::with_way(&w, bias.clone(), n, k, way)))
            .collect();
        if amx::available() {
            layers
                .push(("AmxBf16".into(), Dense::with_path(&w, bias.clone(), n, k, DensePath::AmxBf16).expect("layer")));
        }
        for (path, layer) in layers {
            // Row counts below, at and past a 32-row block and a task's rows.
            for m in [1, 5, 32, 33, 70, 300] {
                let x = random(m * k, 3 + m as u32);
                for act in [Activation::Identity, Activation::Gelu] {
                    let y = layer.forward(&x, m, act).expect("forward");
                    assert_eq!(y.len(), m * n);
                    for r in 0..m {
                        for c in 0..n {
                            let sum: f64 =
                                (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[c * k + i])).sum::<f64>()
                                    + f64::from(bias[c]);
                            let want = if act == Activation::Gelu {
                                f64::from(crate::fastmath::gelu(sum as f32))
                            } else {
                                sum
                            };
                            let got = f64::from(y[r * n + c]);
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{path} m={m} ({r}, {c}): {got} vs {want}"
                            );
                        }
                    }
                    // A row's result does not depend on the others in the batch.
                    let alone = layer.forward(&x[(m - 1) * k..], 1, act).expect("forward");
                    assert_eq!(alone, y[(m - 1) * n..], "{path} m={m}");
                }
            }
        }
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let err = Dense::with_path(&[0.0; 10], vec![0.0; 2], 2, 4, DensePath::F32).err().expect("refused");
        assert!(err.contains("[2, 4]"), "{err}");
    }
}
