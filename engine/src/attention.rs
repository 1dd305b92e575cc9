//! Causal attention of decoder rows against their sequences' key/value caches: every (row, query head) on its
//! own arithmetic, so a row's result does not depend on the rest of the batch, nor a head's on the others.
//!
//! Two ways of computing one head:
//! - the default: on AVX2/FMA, for the usual head sizes (64 and 128 values), the query heads that share a
//!   key/value head together in one pass over the cache ([`GroupAttention::run_by_eight`]): the scores of
//!   eight positions at a time, each in one chain of eight-lane fused multiply–adds with the eight chains'
//!   lanes summed in one transposing reduction, the softmax's max and sum over vector lanes, and the weighted
//!   sums of values in registers, normalised once at the end. Other head sizes, and CPUs without AVX2, take
//!   the same steps a head at a time ([`HeadAttention::run_lanes`]; each dot product in four chains).
//! - with `llama_cpp_numerics` ([`HeadAttention::run_half`]): the query and the attention weights rounded to
//!   half precision before they meet the (half-precision) cache, as llama.cpp with its default cache type, in
//!   the summation order the recorded llama.cpp token fixtures were measured with.
//!
//! Large batches of heads run on every thread in a few long runs of heads per thread (one task per head
//! cost more in hand-overs between threads than the heads themselves took).

use rayon::prelude::*;

use crate::encoder::{lanes_max, lanes_sum};
use crate::half::to_half_precision;
use crate::matmul::vectorized;

/// The largest attention head size the engine runs.
pub(crate) const MAX_HEAD_DIM: usize = 256;

/// The heads of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    /// Query heads.
    pub(crate) query: usize,
    /// Key/value heads (each shared by `query / kv` query heads).
    pub(crate) kv: usize,
    /// Values per head.
    pub(crate) dim: usize,
    /// llama.cpp's half-precision rounding and summation (see the module's text).
    pub(crate) half_precision: bool,
}

/// One query head against the cached positions of its key/value head.
struct HeadAttention<'a> {
    q: &'a [f32],
    /// Cached rows `[position][kv_dim]` up to the query's own position.
    keys: &'a [f32],
    values: &'a [f32],
    kv_dim: usize,
    /// Where the key/value head starts in a cached row.
    offset: usize,
    scale: f32,
}

/// `a * b + c`, fused where the code is compiled for a CPU with FMA (`FUSED`; elsewhere `mul_add` would be a
/// call into the C library per value).
#[inline(always)]
fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `a · b` on AVX2/FMA vectors: four independent chains of eight lanes (any length).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot_avx2(v: pulp::x86::V3, a: &[f32], b: &[f32]) -> f32 {
    use core::arch::x86_64::__m256;
    let mut acc = [v.avx._mm256_setzero_ps(); 4];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let x: [[f32; 8]; 4] = pulp::cast(*<&[f32; 32]>::try_from(x).expect("32 values"));
        let y: [[f32; 8]; 4] = pulp::cast(*<&[f32; 32]>::try_from(y).expect("32 values"));
        for j in 0..4 {
            let (x, y): (__m256, __m256) = (pulp::cast(x[j]), pulp::cast(y[j]));
            acc[j] = v.fma._mm256_fmadd_ps(x, y, acc[j]);
        }
    }
    let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        let x: __m256 = pulp::cast(*<&[f32; 8]>::try_from(x).expect("8 values"));
        let y: __m256 = pulp::cast(*<&[f32; 8]>::try_from(y).expect("8 values"));
        acc[0] = v.fma._mm256_fmadd_ps(x, y, acc[0]);
    }
    let sum = v.avx._mm256_add_ps(v.avx._mm256_add_ps(acc[0], acc[1]), v.avx._mm256_add_ps(acc[2], acc[3]));
    let l: [f32; 8] = pulp::cast(sum);
    let mut tail = 0f32;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + tail
}

/// The sums of each of eight vectors' lanes, as one vector (lane `r`: the sum of `a[r]`'s lanes): pairwise
/// horizontal adds within each 128-bit half, then the two halves added.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sum_lanes_of_eight(v: pulp::x86::V3, a: [core::arch::x86_64::__m256; 8]) -> core::arch::x86_64::__m256 {
    let pairs = [
        v.avx._mm256_hadd_ps(a[0], a[1]),
        v.avx._mm256_hadd_ps(a[2], a[3]),
        v.avx._mm256_hadd_ps(a[4], a[5]),
        v.avx._mm256_hadd_ps(a[6], a[7]),
    ];
    // Lanes 0–3: the low halves' sums of a[0..4]; lanes 4–7: their high halves' sums (and likewise for a[4..8]).
    let low = v.avx._mm256_hadd_ps(pairs[0], pairs[1]);
    let high = v.avx._mm256_hadd_ps(pairs[2], pairs[3]);
    v.avx
        ._mm256_add_ps(v.avx._mm256_permute2f128_ps::<0x20>(low, high), v.avx._mm256_permute2f128_ps::<0x31>(low, high))
}

/// Dot product with 8 independent lanes in one chain (the order `run_half` has always used).
#[inline(always)]
fn dot_one_chain(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl HeadAttention<'_> {
    #[inline(always)]
    fn key_rows(&self) -> impl Iterator<Item = &[f32]> {
        let (from, to) = (self.offset, self.offset + self.q.len());
        self.keys.chunks_exact(self.kv_dim).map(move |row| &row[from..to])
    }

    #[inline(always)]
    fn value_rows(&self) -> impl Iterator<Item = &[f32]> {
        let (from, to) = (self.offset, self.offset + self.q.len());
        self.values.chunks_exact(self.kv_dim).map(move |row| &row[from..to])
    }

    /// `o = softmax(q · k * scale) · v`, the default way (see the module's text); `scores` is scratch space.
    #[inline(always)]
    fn run_lanes(&self, way: Way, scores: &mut Vec<f32>, o: &mut [f32]) {
        scores.clear();
        match way {
            #[cfg(target_arch = "x86_64")]
            Way::Avx2(v) => {
                for k in self.key_rows() {
                    scores.push(dot_avx2(v, self.q, k));
                }
            }
            _ => {
                for k in self.key_rows() {
                    scores.push(dot_one_chain(self.q, k));
                }
            }
        }
        let max = lanes_max(scores);
        for s in scores.iter_mut() {
            *s = crate::fastmath::exp((*s - max) * self.scale);
        }
        let inv = 1.0 / lanes_sum(scores);
        match (o.len(), way.fused()) {
            (64, true) => self.weighted_values::<64, true>(scores, inv, o),
            (128, true) => self.weighted_values::<128, true>(scores, inv, o),
            (64, false) => self.weighted_values::<64, false>(scores, inv, o),
            (128, false) => self.weighted_values::<128, false>(scores, inv, o),
            _ => {
                // Any other head size: the sums in memory (plain loops, no closures: a closure is not always
                // compiled for the CPU features of the code around it).
                o.fill(0.0);
                for (&w, v) in scores.iter().zip(self.value_rows()) {
                    for (a, &b) in o.iter_mut().zip(v) {
                        *a += w * b;
                    }
                }
                for a in o.iter_mut() {
                    *a *= inv;
                }
            }
        }
    }

    /// `o = inv * Σ weights[i] · v[i]` with the sums of a `D`-value head held in registers.
    #[inline(always)]
    fn weighted_values<const D: usize, const FUSED: bool>(&self, weights: &[f32], inv: f32, o: &mut [f32]) {
        let mut acc = [0f32; D];
        for (&w, v) in weights.iter().zip(self.value_rows()) {
            let v: &[f32; D] = v.try_into().expect("a head of D values");
            for (a, &b) in acc.iter_mut().zip(v) {
                *a = mul_add::<FUSED>(w, b, *a);
            }
        }
        for (o, a) in o.iter_mut().zip(acc) {
            *o = a * inv;
        }
    }

    /// `o = softmax(q · k * scale) · v` as llama.cpp computes it with its half-precision cache: the query and the
    /// attention weights are rounded to half precision before they meet the cache.
    #[inline(always)]
    fn run_half(&self, scores: &mut Vec<f32>, o: &mut [f32]) {
        scores.clear();
        let mut q = [0f32; MAX_HEAD_DIM];
        let q = &mut q[..self.q.len()];
        for (a, &b) in q.iter_mut().zip(self.q) {
            *a = to_half_precision(b);
        }
        let mut max = f32::NEG_INFINITY;
        for k in self.key_rows() {
            let s = dot_one_chain(q, k) * self.scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (&w, v) in scores.iter().zip(self.value_rows()) {
            let w = to_half_precision(w * inv);
            for (a, b) in o.iter_mut().zip(v) {
                *a += w * b;
            }
        }
    }
}

/// The query heads that share one key/value head, against its cached positions.
struct GroupAttention<'a> {
    /// The heads' queries, one after another.
    queries: &'a [f32],
    dim: usize,
    keys: &'a [f32],
    values: &'a [f32],
    kv_dim: usize,
    offset: usize,
    scale: f32,
}

/// Positions per pass of the weighted sums: their values (4 KiB for 64-value heads) stay in the first-level
/// cache while each head of the group meets them.
const VALUE_PASS: usize = 16;

/// Most query heads per key/value head that `GroupAttention::run_by_eight` takes at once.
const MAX_GROUP: usize = 16;

impl<'a> GroupAttention<'a> {
    fn head(&self, h: usize) -> HeadAttention<'a> {
        HeadAttention {
            q: &self.queries[h * self.dim..(h + 1) * self.dim],
            keys: self.keys,
            values: self.values,
            kv_dim: self.kv_dim,
            offset: self.offset,
            scale: self.scale,
        }
    }

    /// The steps of `HeadAttention::run_lanes` for each head of the group, but every cached key and value is
    /// read from memory once for the whole group instead of once per head (Qwen2.5-0.5B has 7 query heads per
    /// key/value head: after a 1,950-token prompt its decode took 37–40 ms a token head by head, 31 ms this
    /// way; with short prompts it made no measurable difference). The scores come eight positions
    /// at a time: each position's products in one chain of eight-lane multiply-adds, the eight chains
    /// independent of each other, then their lanes summed in one transposing reduction (`sum_lanes_of_eight`;
    /// position by position, reducing each dot product's lanes took as long as its products). A last group of
    /// fewer than eight positions repeats the last one to fill the group. The weighted sums of values take
    /// `VALUE_PASS` positions per pass, each head's sums kept in its output between passes (exactly: the
    /// same sums, in the same order, as in one pass). A head's result depends only on its own query and the
    /// cache, not on the other heads of its group.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn run_by_eight<const D: usize>(&self, v: pulp::x86::V3, scores: &mut Vec<f32>, o: &mut [f32]) {
        use core::arch::x86_64::__m256;
        let positions = self.keys.len() / self.kv_dim;
        let group = self.queries.len() / D;
        debug_assert!(group <= MAX_GROUP && o.len() == group * D);
        let row = |cache: &'a [f32], p: usize| -> &'a [f32; D] {
            cache[p * self.kv_dim + self.offset..][..D].try_into().expect("a head of D values")
        };
        scores.clear();
        scores.resize(group * positions, 0.0);
        for first in (0..positions).step_by(8) {
            let keys: [&[f32; D]; 8] = core::array::from_fn(|r| row(self.keys, (first + r).min(positions - 1)));
            let count = (positions - first).min(8);
            for (q, scores) in self.queries.chunks_exact(D).zip(scores.chunks_exact_mut(positions)) {
                let mut acc = [v.avx._mm256_setzero_ps(); 8];
                for j in 0..D / 8 {
                    let q: __m256 = pulp::cast(*<&[f32; 8]>::try_from(&q[j * 8..j * 8 + 8]).expect("8 values"));
                    for r in 0..8 {
                        let k: __m256 =
                            pulp::cast(*<&[f32; 8]>::try_from(&keys[r][j * 8..j * 8 + 8]).expect("8 values"));
                        acc[r] = v.fma._mm256_fmadd_ps(k, q, acc[r]);
                    }
                }
                let sums: [f32; 8] = pulp::cast(sum_lanes_of_eight(v, acc));
                scores[first..first + count].copy_from_slice(&sums[..count]);
            }
        }
        let mut inv = [0f32; MAX_GROUP];
        for (scores, inv) in scores.chunks_exact_mut(positions).zip(&mut inv) {
            let max = lanes_max(scores);
            for s in scores.iter_mut() {
                *s = crate::fastmath::exp((*s - max) * self.scale);
            }
            *inv = 1.0 / lanes_sum(scores);
        }
        o.fill(0.0);
        for first in (0..positions).step_by(VALUE_PASS) {
            let last = (first + VALUE_PASS).min(positions);
            for (o, weights) in o.chunks_exact_mut(D).zip(scores.chunks_exact(positions)) {
                let o: &mut [f32; D] = o.try_into().expect("a head of D values");
                let mut acc = *o;
                for (p, &w) in (first..last).zip(&weights[first..last]) {
                    for (a, &b) in acc.iter_mut().zip(row(self.values, p)) {
                        *a = w.mul_add(b, *a);
                    }
                }
                *o = acc;
            }
        }
        for (o, inv) in o.chunks_exact_mut(D).zip(inv) {
            for a in o.iter_mut() {
                *a *= inv;
            }
        }
    }
}

/// A group of heads as an operation for `vectorized` (compiled for AVX2 and FMA, as `Way::Avx2` requires).
#[cfg(target_arch = "x86_64")]
struct AttendGroup<'a, 'b> {
    group: GroupAttention<'a>,
    v: pulp::x86::V3,
    scores: &'b mut Vec<f32>,
    o: &'b mut [f32],
}

#[cfg(target_arch = "x86_64")]
impl pulp::NullaryFnOnce for AttendGroup<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let AttendGroup { group, v, scores, o } = self;
        match group.dim {
            64 => group.run_by_eight::<64>(v, scores, o),
            _ => group.run_by_eight::<128>(v, scores, o),
        }
    }
}

/// How a head is computed.
#[derive(Clone, Copy)]
enum Way {
    /// llama.cpp's rounding and order (`run_half`).
    Half,
    /// The default with AVX2 and FMA vectors.
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    /// The default in portable code.
    Portable,
}

impl Way {
    fn best(half_precision: bool) -> Way {
        if half_precision {
            return Way::Half;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = pulp::x86::V3::try_new() {
            return Way::Avx2(v);
        }
        Way::Portable
    }

    /// Whether the code runs compiled for FMA (else `mul_add` would be a call into the C library per value).
    fn fused(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Way::Avx2(_) = self {
            return true;
        }
        false
    }
}

/// One head as an operation for `vectorized` (which compiles it for AVX2 and FMA where the CPU has them, as
/// `Way::Avx2` requires).
struct Attend<'a, 'b> {
    head: HeadAttention<'a>,
    way: Way,
    scores: &'b mut Vec<f32>,
    o: &'b mut [f32],
}

impl pulp::NullaryFnOnce for Attend<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        let Attend { head, way, scores, o } = self;
        match way {
            Way::Half => head.run_half(scores, o),
            _ => head.run_lanes(way, scores, o),
        }
    }
}

/// Causal attention of every (row, head) against its own sequence's cache (which already holds the new rows):
/// `qkv` holds each row's `[q | k | v]`, `kv` each sequence's cached keys and values (`[position][kv_dim]`),
/// `row_seq` and `row_pos` each row's sequence and position. Returns `[rows][query * dim]`.
pub(crate) fn attention(
    heads: Heads,
    qkv: &[f32],
    kv: &[(&[f32], &[f32])],
    row_seq: &[usize],
    row_pos: &[usize],
) -> Vec<f32> {
    attention_with(Way::best(heads.half_precision), heads, qkv, kv, row_seq, row_pos)
}

/// [`attention`] computed `way`.
fn attention_with(
    way: Way,
    heads: Heads,
    qkv: &[f32],
    kv: &[(&[f32], &[f32])],
    row_seq: &[usize],
    row_pos: &[usize],
) -> Vec<f32> {
    let Heads { query: nh, kv: nkv, dim: hd, .. } = heads;
    let q_dim = nh * hd;
    let kv_dim = nkv * hd;
    let qkv_dim = q_dim + 2 * kv_dim;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; row_seq.len() * q_dim];
    // One task per (row, key/value head): the query heads that share a key/value head are consecutive.
    let task = |scores: &mut Vec<f32>, idx: usize, o: &mut [f32]| {
        let (r, kvh) = (idx / nkv, idx % nkv);
        let (keys, values) = kv[row_seq[r]];
        let len = (row_pos[r] + 1) * kv_dim;
        let start = r * qkv_dim + kvh * group * hd;
        let heads = GroupAttention {
            queries: &qkv[start..start + group * hd],
            dim: hd,
            keys: &keys[..len],
            values: &values[..len],
            kv_dim,
            offset: kvh * hd,
            scale,
        };
        #[cfg(target_arch = "x86_64")]
        if let Way::Avx2(v) = way {
            if matches!(hd, 64 | 128) && group <= MAX_GROUP {
                return vectorized(AttendGroup { group: heads, v, scores, o });
            }
        }
        for (h, o) in o.chunks_exact_mut(hd).enumerate() {
            vectorized(Attend { head: heads.head(h), way, scores, o });
        }
    };
    let work: usize = row_pos.iter().map(|p| p + 1).sum::<usize>() * nh * hd;
    if work < 200_000 {
        let mut scores = Vec::new();
        for (idx, o) in out.chunks_exact_mut(group * hd).enumerate() {
            task(&mut scores, idx, o);
        }
    } else {
        // A few long runs of groups per thread: one task per head cost more in hand-overs than the heads took.
        let per = (row_seq.len() * nkv).div_ceil(2 * rayon::current_num_threads()).max(1);
        out.par_chunks_mut(per * group * hd).enumerate().for_each(|(chunk, o)| {
            let mut scores = Vec::new();
            for (i, o) in o.chunks_exact_mut(group * hd).enumerate() {
                task(&mut scores, chunk * per + i, o);
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: &mut u64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Textbook attention in f64 for one row of a sequence whose cache holds `pos + 1` positions.
    fn reference(heads: Heads, q: &[f32], keys: &[f32], values: &[f32], pos: usize) -> Vec<f64> {
        let (hd, kv_dim, group) = (heads.dim, heads.kv * heads.dim, heads.query / heads.kv);
        let mut out = Vec::new();
        for h in 0..heads.query {
            let off = h / group * hd;
            let qh = &q[h * hd..(h + 1) * hd];
            let s: Vec<f64> = (0..=pos)
                .map(|p| {
                    let k = &keys[p * kv_dim + off..p * kv_dim + off + hd];
                    qh.iter().zip(k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                out.push((0..=pos).map(|p| e[p] / sum * f64::from(values[p * kv_dim + off + d])).sum::<f64>());
            }
        }
        out
    }

    /// Every way this CPU runs, every head size the engine has special code for and one it has not, grouped
    /// query heads, two sequences of different lengths in one batch (a long one, so that the heads run in
    /// parallel), against the textbook in f64.
    #[test]
    fn every_way_matches_the_textbook_attention() {
        let mut seed = 7u64;
        for (dim, query, kv) in [(64, 9, 3), (128, 12, 2), (48, 4, 4)] {
            for (half_precision, way) in
                [false, true].into_iter().flat_map(|h| ways(h).into_iter().map(move |w| (h, w)))
            {
                let heads = Heads { query, kv, dim, half_precision };
                let kv_dim = kv * dim;
                let qkv_dim = query * dim + 2 * kv_dim;
                // Sequence 0: one new row at position 400; sequence 1: three new rows at positions 0..3 (a prefill).
                let lens = [401usize, 3];
                let caches: Vec<(Vec<f32>, Vec<f32>)> =
                    lens.iter().map(|&l| (random(l * kv_dim, &mut seed), random(l * kv_dim, &mut seed))).collect();
                let (row_seq, row_pos) = (vec![0, 1, 1, 1], vec![400, 0, 1, 2]);
                let qkv = random(row_seq.len() * qkv_dim, &mut seed);
                let kvs: Vec<(&[f32], &[f32])> = caches.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                let got = attention_with(way, heads, &qkv, &kvs, &row_seq, &row_pos);
                // Half precision rounds the query and the weights: about 1e-3 relative.
                let tolerance = if half_precision { 5e-3 } else { 1e-5 };
                for (r, (&s, &p)) in row_seq.iter().zip(&row_pos).enumerate() {
                    let q = &qkv[r * qkv_dim..r * qkv_dim + query * dim];
                    let want = reference(heads, q, &caches[s].0, &caches[s].1, p);
                    let row = &got[r * query * dim..(r + 1) * query * dim];
                    for (i, (&g, &w)) in row.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(g) - w).abs() < tolerance,
                            "dim {dim}, half {half_precision}, row {r}, value {i}: {g} against {w}"
                        );
                    }
                }
                // Alone, each row gives the same bits as in the batch.
                for r in 0..row_seq.len() {
                    let qkv = &qkv[r * qkv_dim..(r + 1) * qkv_dim];
                    let alone = attention_with(way, heads, qkv, &kvs, &row_seq[r..=r], &row_pos[r..=r]);
                    assert_eq!(alone, got[r * query * dim..(r + 1) * query * dim], "row {r} depends on the batch");
                }
            }
        }
    }

    /// A head's result does not depend on the other query heads of its group (which share its pass over the
    /// cache), on every way this CPU runs.
    #[test]
    fn a_head_does_not_depend_on_the_others_of_its_group() {
        let mut seed = 11u64;
        for (dim, query, kv) in [(64, 14, 2), (128, 6, 2)] {
            for way in ways(false) {
                let heads = Heads { query, kv, dim, half_precision: false };
                let kv_dim = kv * dim;
                let qkv_dim = query * dim + 2 * kv_dim;
                let (keys, values) = (random(37 * kv_dim, &mut seed), random(37 * kv_dim, &mut seed));
                let kvs: [(&[f32], &[f32]); 1] = [(&keys, &values)];
                let qkv = random(qkv_dim, &mut seed);
                let got = attention_with(way, heads, &qkv, &kvs, &[0], &[36]);
                // Every query head but the second of the second group changed.
                let kept = query / kv + 1;
                let mut other = random(qkv_dim, &mut seed);
                other[kept * dim..(kept + 1) * dim].copy_from_slice(&qkv[kept * dim..(kept + 1) * dim]);
                other[query * dim..].copy_from_slice(&qkv[query * dim..]);
                let again = attention_with(way, heads, &other, &kvs, &[0], &[36]);
                assert_eq!(got[kept * dim..(kept + 1) * dim], again[kept * dim..(kept + 1) * dim], "dim {dim}");
                assert_ne!(got[..dim], again[..dim], "the changed heads changed");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    struct DotAvx2<'a>(pulp::x86::V3, &'a [f32], &'a [f32]);

    #[cfg(target_arch = "x86_64")]
    impl pulp::NullaryFnOnce for DotAvx2<'_> {
        type Output = f32;

        #[inline(always)]
        fn call(self) -> f32 {
            dot_avx2(self.0, self.1, self.2)
        }
    }

    /// The ways this CPU can compute the attention of `half_precision`.
    fn ways(half_precision: bool) -> Vec<Way> {
        if half_precision {
            return vec![Way::Half];
        }
        let mut ways = vec![Way::Portable];
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = pulp::x86::V3::try_new() {
            ways.push(Way::Avx2(v));
        }
        ways
    }

    /// The chained dot product on every length (the tail included), fused and not, against f64.
    #[test]
    fn chained_dot_products_match_f64() {
        let mut seed = 3u64;
        for len in [0, 1, 7, 8, 31, 32, 33, 64, 100, 128, 256] {
            let (a, b) = (random(len, &mut seed), random(len, &mut seed));
            let want: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
            let mut got = vec![dot_one_chain(&a, &b)];
            #[cfg(target_arch = "x86_64")]
            if let Some(v) = pulp::x86::V3::try_new() {
                got.push(v.vectorize(DotAvx2(v, &a, &b)));
            }
            for got in got {
                assert!((f64::from(got) - want).abs() < 1e-4, "length {len}: {got} against {want}");
            }
        }
    }
}
