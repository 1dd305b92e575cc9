//! Batched matmul of block-quantised weight matrices (the formats are in `q4`, `q5`, `q8`, `q4k` and `q6k`): the
//! input rows are quantised to 8 bits per 32-value block (per 256-value block for the K-quants), each weight
//! block is read once per call and used for every input row (so a batch of B tokens costs little more memory
//! traffic than one), integer dot products per block with f32 scales (the K-quants' parts summed in integers
//! first), explicit AVX2 through `pulp` where the CPU has it (its byte dot products on AVX-512 VNNI where that is
//! present; a portable loop elsewhere), threads via rayon over
//! column ranges. Results for one input row do not depend on the other rows in the batch, nor on the threads.
//! Also `vectorized`, which compiles other hot loops for AVX2 where the CPU has it.

use pulp::{Arch, NullaryFnOnce, Simd, WithSimd};

use crate::half::{f16_to_f32, f32_to_f16};
use rayon::prelude::*;

/// Values per quantisation block.
pub(crate) const BLOCK: usize = 32;
/// Below this many weight bytes times input rows a matmul runs on the calling thread (dispatch costs more).
const PARALLEL_MIN_WORK: usize = 1 << 16;
/// Parallel tasks per thread (a few, so that a thread slowed by other load does not hold up the rest).
const TASKS_PER_THREAD: usize = 4;
/// How far ahead of the weight block in use the kernels ask for the weights to be brought into cache. A decode
/// step streams every weight once from memory (or a far cache) and the hardware prefetchers alone leave the
/// kernels waiting on each cache line: single-stream decode ran about 1.6x faster with this on an Intel Xeon
/// (SmolLM2 59 -> 104 tok/s; Qwen2.5-0.5B 21 -> 27 tok/s). 3 to 6 KiB measured alike; 1 KiB got half the gain.
const PREFETCH_BYTES: usize = 4096;
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

/// Run `op` compiled for AVX-512 where the CPU has it (every CPU with AMX does), else as
/// [`vectorized`] does: the encoders' loops (GELU, softmax, norms, packing) then work on 16 values
/// per instruction. `op.call` must be `#[inline(always)]`.
#[inline(always)]
pub(crate) fn vectorized_wide<Op: pulp::NullaryFnOnce>(op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        #[allow(unsafe_code)]
        // SAFETY: `avx512` found every feature `wide` is compiled for on this CPU.
        return unsafe { wide(op) };
    }
    vectorized(op)
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("avx2") && has!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn wide<Op: pulp::NullaryFnOnce>(op: Op) -> Op::Output {
    op.call()
}

/// Which of the kernels' code paths this CPU runs (for benchmark reports).
pub fn kernel_path() -> &'static str {
    match KernelPath::best() {
        KernelPath::Vnni => "AVX-512 VNNI dot products, AVX2+FMA (x86-64-v3)",
        KernelPath::Avx2 => "AVX2+FMA (x86-64-v3)",
        KernelPath::Portable => "portable (no AVX2)",
    }
}

/// The kernels' code paths, each tested against the others (in the order of what they need of the CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum KernelPath {
    /// Portable Rust (auto-vectorised for what the build targets).
    Portable,
    /// Explicit AVX2/FMA (and F16C, which every such CPU has, for the half-precision scales).
    Avx2,
    /// The AVX2 kernels with their byte dot products on AVX-512 VNNI (`vpdpbusd` on 256-bit vectors: one
    /// instruction for what takes `maddubs` then `madd`), for CPUs with AVX512-VNNI, AVX512-VL and AVX512BW.
    Vnni,
}

impl KernelPath {
    /// The fastest path this CPU runs.
    pub(crate) fn best() -> KernelPath {
        #[cfg(target_arch = "x86_64")]
        if pulp::x86::V3::try_new().is_some() && std::arch::is_x86_feature_detected!("f16c") {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                return KernelPath::Vnni;
            }
            return KernelPath::Avx2;
        }
        KernelPath::Portable
    }

    /// Every path this CPU runs (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<KernelPath> {
        let best = KernelPath::best();
        [KernelPath::Portable, KernelPath::Avx2, KernelPath::Vnni].into_iter().filter(|&p| p <= best).collect()
    }
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
    /// `q + 128` as unsigned bytes (what `vpdpbusd` wants of one operand).
    qu: Vec<[u8; BLOCK]>,
    /// `-16 *` the sums of each 4 consecutive `q` (the lanes of a `vpdpbusd` over the block): the start from
    /// which a product with weights stored as `q + 16` comes out exact.
    start16: Vec<[i32; 8]>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// For blocks of 256 values (inputs quantised as GGML's Q8_K): the sums of each 16 consecutive `q`, per row
    /// and block (entry `c * rows + i`), which the K-quants' offset terms multiply.
    bsums: Vec<[i16; 16]>,
}

/// One input block as the kernels read it (entries of an `XGroup`).
#[derive(Clone, Copy)]
pub(crate) struct XBlock<'a> {
    q: &'a [i8; BLOCK],
    qu: &'a [u8; BLOCK],
    start16: &'a [i32; 8],
}

#[cfg(target_arch = "x86_64")]
impl XBlock<'_> {
    /// The signed values.
    #[inline(always)]
    pub(crate) fn v3(&self) -> core::arch::x86_64::__m256i {
        pulp::cast(*self.q)
    }

    /// The values plus 128, as unsigned bytes.
    #[inline(always)]
    pub(crate) fn unsigned_v3(&self) -> core::arch::x86_64::__m256i {
        pulp::cast(*self.qu)
    }

    /// `-16 * (sum of each 4 consecutive values)`: the start of a `vpdpbusd` of unsigned weights `q` that
    /// stand for `q - 16`.
    #[inline(always)]
    pub(crate) fn start16_v3(&self) -> core::arch::x86_64::__m256i {
        pulp::cast(*self.start16)
    }
}

/// How a matmul quantises the inputs of 32-value weight blocks (those of the 256-value K-quant super-blocks
/// are GGML's Q8_K, one scale per 256, either way: see `WeightBlock::SUPER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum InputQuant {
    /// One f32 scale per 32 inputs, rounding half away from zero (the most precise).
    #[default]
    Engine,
    /// As llama.cpp quantises them (so that both compute the same products): one half-precision scale per 32
    /// inputs (GGML's Q8_0).
    LlamaCpp,
}

/// Quantise `m` rows of `x` (`[m, k]`) into groups of at most `ROWS` rows; `span` is the weight format's
/// block size, over which `whole_blocks` formats (`WeightBlock::SUPER`) and `InputQuant::LlamaCpp` give the
/// inputs one scale.
fn quantize_groups(x: &[f32], m: usize, k: usize, span: usize, style: InputQuant, whole_blocks: bool) -> Vec<XGroup> {
    let span = if style == InputQuant::Engine && !whole_blocks { BLOCK } else { span };
    let mut bounds = Vec::new();
    let mut row0 = 0;
    while row0 < m {
        let left = m - row0;
        let rows = if left >= ROWS { ROWS } else { 1 << left.ilog2() };
        bounds.push((row0, rows));
        row0 += rows;
    }
    let group =
        |&(row0, rows): &(usize, usize)| quantize_group(&x[row0 * k..(row0 + rows) * k], row0, rows, span, style);
    if m * k >= PARALLEL_MIN_WORK && bounds.len() > 1 {
        // A prefill's inputs (hundreds of rows) on every thread: on one, the others waited for it.
        bounds.par_iter().map(group).collect()
    } else {
        bounds.iter().map(group).collect()
    }
}

/// One group of `quantize_groups`: the `rows` rows in `x` (from row `row0` of the input).
fn quantize_group(x: &[f32], row0: usize, rows: usize, span: usize, style: InputQuant) -> XGroup {
    let k = x.len() / rows;
    let n = k / BLOCK * rows;
    let mut q = vec![[0i8; BLOCK]; span / BLOCK];
    let mut g = XGroup {
        row0,
        rows,
        q: vec![[0; BLOCK]; n],
        qu: vec![[0; BLOCK]; n],
        start16: vec![[0; 8]; n],
        d: vec![0.0; n],
        s: vec![0.0; n],
        bsums: if span > BLOCK { vec![[0; 16]; k / span * rows] } else { Vec::new() },
    };
    for (i, row) in x.chunks_exact(k).enumerate() {
        for (c, xs) in row.chunks_exact(span).enumerate() {
            let d = match style {
                _ if span > BLOCK => quantize_q8_k(xs, &mut q),
                InputQuant::Engine => quantize_block(xs, &mut q[0]),
                InputQuant::LlamaCpp => quantize_q8_0(xs, &mut q[0]),
            };
            for (p, q) in q.iter().enumerate() {
                let sum: i32 = q.iter().map(|&v| v as i32).sum();
                let at = (c * (span / BLOCK) + p) * rows + i;
                (g.q[at], g.d[at], g.s[at]) = (*q, d, d * sum as f32);
                g.qu[at] = q.map(|v| (v as u8) ^ 0x80);
                g.start16[at] =
                    core::array::from_fn(|l| -16 * q[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>());
            }
            if span > BLOCK {
                g.bsums[c * rows + i] = core::array::from_fn(|h| {
                    q[h / 2][16 * (h % 2)..16 * (h % 2) + 16].iter().map(|&v| v as i16).sum::<i16>()
                });
            }
        }
    }
    g
}

/// Symmetric 8-bit quantisation of 32 inputs: values in -127..=127 (rounded half away from zero) and the
/// f32 scale, which it returns.
fn quantize_block(xb: &[f32], q: &mut [i8; BLOCK]) -> f32 {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(xb) {
        // Round half away from zero without a libm call (the cast truncates).
        let r = v * inv;
        *q = (r + 0.5f32.copysign(r)).clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// GGML's Q8_0 quantisation of 32 inputs as llama.cpp's AVX2 code does it: `q = round(x * 127 / amax)` (ties
/// to even), scale `amax / 127` rounded to half precision. Returns the scale.
fn quantize_q8_0(xb: &[f32], q: &mut [i8; BLOCK]) -> f32 {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(xb) {
        *q = nearest_even(v * inv).clamp(-127.0, 127.0) as i8;
    }
    f16_to_f32(f32_to_f16(amax / 127.0))
}

/// `v` rounded to the nearest integer, ties to even, for `|v| <= 2^22` (what quantisation asks of it): adding
/// and taking away 1.5 * 2^23 leaves no bits below the units, and the default rounding mode rounds ties to even.
/// `f32::round_ties_even` is a libm call where the build does not target SSE4.1, one per input value.
#[inline(always)]
fn nearest_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// GGML's Q8_K quantisation of 256 inputs (one scale for all): with `max` the input of largest magnitude,
/// `q = min(127, round(x * -127 / max))` (ties to even) and scale `1 / (-127 / max)`. Returns the scale.
fn quantize_q8_k(xs: &[f32], q: &mut [[i8; BLOCK]]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in xs {
        if v.abs() > amax {
            (amax, max) = (v.abs(), v);
        }
    }
    if amax == 0.0 {
        q.iter_mut().for_each(|b| *b = [0; BLOCK]);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (qb, xb) in q.iter_mut().zip(xs.chunks_exact(BLOCK)) {
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = nearest_even(iscale * v).clamp(-128.0, 127.0) as i8;
        }
    }
    1.0 / iscale
}

/// Dot products of unsigned weight bytes `w` with signed inputs `x` as eight i32 sums of four lanes each
/// (`maddubs` then `madd`; the weights must be small enough that pairs do not saturate 16 bits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn unsigned_dot_v3<const VNNI: bool>(
    v: pulp::x86::V3,
    w: core::arch::x86_64::__m256i,
    x: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    if VNNI {
        return vnni_dot(v, w, x);
    }
    v.avx2._mm256_madd_epi16(v.avx2._mm256_maddubs_epi16(w, x), v.avx._mm256_set1_epi16(1))
}

/// `vpdpbusd` from zero: unsigned bytes `w` times signed bytes `x`, summed in fours into eight i32 lanes (no
/// 16-bit intermediate, so no saturation either). Only for code compiled with `VNNI` set, which runs only
/// inside `kernel_vnni`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn vnni_dot(
    v: pulp::x86::V3,
    w: core::arch::x86_64::__m256i,
    x: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    vnni_dot_from(v.avx._mm256_setzero_si256(), w, x)
}

/// `vpdpbusd`: `vnni_dot` added to `start`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn vnni_dot_from(
    start: core::arch::x86_64::__m256i,
    w: core::arch::x86_64::__m256i,
    x: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    // SAFETY: this is reached only through `kernel_vnni`, which is entered only on CPUs that report AVX512-VNNI
    // and AVX512-VL (`KernelPath::best`) and is compiled with those features, into which this is inlined.
    unsafe { core::arch::x86_64::_mm256_dpbusd_epi32(start, w, x) }
}

/// `a` plus `b` in the bytes whose bit is set in `mask`, `a` in the others (AVX512BW's masked byte add). Only for
/// code compiled with `VNNI` set, which runs only inside `kernel_vnni`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn masked_add_bytes(
    a: core::arch::x86_64::__m256i,
    mask: u32,
    b: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    // SAFETY: this is reached only through `kernel_vnni`, which is entered only on CPUs that report AVX512-VNNI
    // and AVX512-VL (`KernelPath::best`, which also asks for AVX512BW) and is compiled with those features.
    unsafe { core::arch::x86_64::_mm256_mask_add_epi8(a, mask, a, b) }
}

/// `acc` plus the products of unsigned weight bytes `w` with the input block's signed bytes, taken in pairs
/// (`maddubs`: the weights must be small enough that pairs do not saturate 16 bits), times the 16-bit lanes of
/// `scales`, summed in pairs into eight i32 lanes (`vpdpwssd` with `VNNI`, else `madd` then an add).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn scaled_dot_v3<const VNNI: bool>(
    v: pulp::x86::V3,
    acc: core::arch::x86_64::__m256i,
    w: core::arch::x86_64::__m256i,
    x: XBlock<'_>,
    scales: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    let pairs = v.avx2._mm256_maddubs_epi16(w, x.v3());
    if VNNI {
        // SAFETY: code compiled with `VNNI` set runs only inside `kernel_vnni`, which is entered only on CPUs that
        // report AVX512-VNNI and AVX512-VL (`KernelPath::best`) and is compiled with those features.
        return unsafe { dpwssd(acc, pairs, scales) };
    }
    v.avx2._mm256_add_epi32(acc, v.avx2._mm256_madd_epi16(pairs, scales))
}

/// `vpdpwssd`, written out: from the intrinsic the compiler emitted `vpmaddwd` then `vpaddd` (its tuning for
/// CPUs in general splits a register-only `vpdpwssd`), two instructions where one does, in the K-quants'
/// hottest loop. Inlined into `kernel_vnni`, which has these features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
#[allow(unsafe_code)]
fn dpwssd(
    mut acc: core::arch::x86_64::__m256i,
    pairs: core::arch::x86_64::__m256i,
    scales: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    // SAFETY: the instruction reads and writes these registers only; the CPU has its features (this function's).
    unsafe {
        core::arch::asm!(
            "vpdpwssd {acc}, {pairs}, {scales}",
            acc = inout(ymm_reg) acc,
            pairs = in(ymm_reg) pairs,
            scales = in(ymm_reg) scales,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `(w - offset) * x` for unsigned weight bytes stored with an offset, as `w * x - offset * x` in 16-bit lanes,
/// then summed in pairs weighted by the 16-bit lanes of `weights` (ones, or per-lane scales).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn offset_dot_v3(
    v: pulp::x86::V3,
    w: core::arch::x86_64::__m256i,
    x: core::arch::x86_64::__m256i,
    offset: i8,
    weights: core::arch::x86_64::__m256i,
) -> core::arch::x86_64::__m256i {
    let products = v.avx2._mm256_maddubs_epi16(w, x);
    let bias = v.avx2._mm256_maddubs_epi16(v.avx._mm256_set1_epi8(offset), x);
    v.avx2._mm256_madd_epi16(v.avx2._mm256_sub_epi16(products, bias), weights)
}

/// A weight block format as stored in the file: `PARTS` parts of 32 values `scale * q (+ offset)` with integer
/// `q` (a part's integer dot product may already weigh sub-parts by small integer scales, as Q6_K's do).
pub(crate) trait WeightBlock: Copy + Send + Sync {
    /// 32-value parts per block: 1, or 8 for the 256-value K-quant super-blocks (at most 8).
    const PARTS: usize = 1;
    /// Whether values carry an offset (multiplied by the input block's `s`).
    const OFFSET: bool;
    /// Bytes read per block (for the parallel-work threshold).
    const BYTES: usize;
    fn scale(&self, part: usize) -> f32;
    fn offset(&self, part: usize) -> f32;
    /// `scale` and `offset` of every part (the first `PARTS` entries), for formats that decode what the parts
    /// share once.
    #[inline(always)]
    fn scales_offsets(&self) -> ([f32; 8], [f32; 8]) {
        let mut out = ([0f32; 8], [0f32; 8]);
        for p in 0..Self::PARTS {
            out.0[p] = self.scale(p);
            if Self::OFFSET {
                out.1[p] = self.offset(p);
            }
        }
        out
    }
    /// `scales_offsets` converted on F16C: only for the vector kernels (`kernel_v3`, compiled with F16C), where
    /// formats with half-precision scales override it with `half::f16_pair_f16c` (the same values; with 8 input
    /// rows, converting them in software took a third of a SmolLM2 decode step's kernel time).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scales_offsets_f16c(&self) -> ([f32; 8], [f32; 8]) {
        self.scales_offsets()
    }
    /// Integer dot product of part `part`'s `q` values with an input block.
    fn dot(&self, part: usize, x: &[i8; BLOCK]) -> i32;
    /// Appends the block's `32 * PARTS` dequantised values.
    fn dequantize(&self, out: &mut Vec<f32>);
    /// A part loaded into registers, once for all input rows.
    #[cfg(target_arch = "x86_64")]
    type Loaded: Copy;
    #[cfg(target_arch = "x86_64")]
    fn load_v3<const VNNI: bool>(&self, v: pulp::x86::V3, part: usize) -> Self::Loaded;
    /// Integer dot product with an input block as eight i32 partial sums (with `VNNI`, on `vnni_dot`).
    #[cfg(target_arch = "x86_64")]
    fn dot_v3<const VNNI: bool>(v: pulp::x86::V3, w: Self::Loaded, x: XBlock<'_>) -> core::arch::x86_64::__m256i;

    /// The same values as an 8-bit block, for formats whose blocks take more work to unpack than 8-bit ones
    /// (Q5_0): a call with several groups of input rows (a prefill) unpacks each of its blocks once into such
    /// blocks, kept only for the call, instead of once per group. Same results: the integer products and
    /// scales are the same.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn widen_v3(&self, _v: pulp::x86::V3) -> Option<crate::q8::Q8Block> {
        None
    }

    /// Whether the parts' integer products are summed over the whole block, weighted by the parts' small integer
    /// scales, before any float work (the K-quants, computed as llama.cpp computes them): the inputs then have
    /// one scale per block (GGML's Q8_K) whatever the `InputQuant`, and the float multiply-adds come once per
    /// block and input row instead of once per part.
    const SUPER: bool = false;
    /// For `SUPER` formats: the float scale of the block's integer sum and that of its integer offset term.
    #[inline(always)]
    fn block_scales(&self) -> (f32, f32) {
        (self.scale(0), self.offset(0))
    }
    /// `block_scales` converted on F16C: only for the vector kernels (`kernel_v3`, compiled with F16C), where
    /// formats with half-precision block scales override it with `half::f16_pair_f16c` (the same values).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_scales_f16c(&self) -> (f32, f32) {
        self.block_scales()
    }
    /// For `SUPER` formats: each part's integer weight in the block's sum (times its `dot`) and its integer offset
    /// (times the sum of the part's inputs).
    #[inline(always)]
    fn part_weights(&self) -> ([i32; 8], [i32; 8]) {
        ([1; 8], [0; 8])
    }
    /// `acc` plus `dot_v3` (for `SUPER` formats: plus the part's products weighted by its integer scales).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_acc_v3<const VNNI: bool>(
        v: pulp::x86::V3,
        acc: core::arch::x86_64::__m256i,
        w: Self::Loaded,
        x: XBlock<'_>,
    ) -> core::arch::x86_64::__m256i {
        v.avx2._mm256_add_epi32(acc, Self::dot_v3::<VNNI>(v, w, x))
    }
    /// For `SUPER` formats: what each sum of 16 consecutive inputs is multiplied by in the block's integer term
    /// (with `OFFSET`, the offsets' products, scaled by `block_scales().1`; without it, a correction to the
    /// weighted dot products' sum).
    #[inline(always)]
    fn term_weights(&self) -> [i16; 16] {
        [0; 16]
    }
}

/// A weight matrix on the engine's batched kernels, whatever its block format.
pub(crate) trait WeightMatrix: Send + Sync {
    /// `x @ self^T` for `m` rows of `x` (`[m, k]`); returns `[m, n]`.
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32>;
    fn rows(&self) -> usize;
    /// Appends dequantised row `i` (embedding lookups).
    fn row(&self, i: usize, out: &mut Vec<f32>);
}

impl<B: WeightBlock> WeightMatrix for BlockMatrix<B> {
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        BlockMatrix::matmul(self, x, m)
    }

    fn rows(&self) -> usize {
        self.n
    }

    fn row(&self, i: usize, out: &mut Vec<f32>) {
        BlockMatrix::row(self, i, out)
    }
}

/// A `[n, k]` matrix of weight blocks, row-major (`k / (32 * PARTS)` blocks per row).
pub(crate) struct BlockMatrix<B> {
    n: usize,
    k: usize,
    blocks: Vec<B>,
    input: InputQuant,
}

impl<B: WeightBlock> BlockMatrix<B> {
    /// Values per block.
    const VALUES: usize = BLOCK * B::PARTS;

    /// From `n * k / (32 * PARTS)` row-major blocks; `k` must be a multiple of `32 * PARTS`.
    pub(crate) fn new(n: usize, k: usize, blocks: Vec<B>) -> Option<Self> {
        (k.is_multiple_of(Self::VALUES) && blocks.len() == n * k / Self::VALUES).then_some(BlockMatrix {
            n,
            k,
            blocks,
            input: InputQuant::Engine,
        })
    }

    /// The same matrix, quantising its inputs as `input` says.
    pub(crate) fn with_input(self, input: InputQuant) -> Self {
        BlockMatrix { input, ..self }
    }

    fn row_blocks(&self, j: usize) -> &[B] {
        let per_row = self.k / Self::VALUES;
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
        self.matmul_with(x, m, KernelPath::best())
    }

    /// `matmul` on the given code path (which the CPU must run: `KernelPath::best` or a slower one).
    fn matmul_with(&self, x: &[f32], m: usize, path: KernelPath) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let groups = quantize_groups(x, m, k, Self::VALUES, self.input, B::SUPER);
        let arch = Arch::new();
        #[cfg(target_arch = "x86_64")]
        let v3 = pulp::x86::V3::try_new().filter(|_| path != KernelPath::Portable);
        let work = n * m * (k / Self::VALUES) * B::BYTES;
        let kernel = |col0: usize, out: &mut [&mut [f32]]| {
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = v3.filter(|_| m > ROWS) {
                let widen = Widen { matrix: self, v: v3, col0, columns: out[0].len() };
                if let Some(wide) = v3.vectorize(widen) {
                    run_task(Kernel { w: &wide, groups: &groups, col0: 0, out }, path, arch);
                    WIDE_SCRATCH.set(wide.blocks);
                    return;
                }
            }
            run_task(Kernel { w: self, groups: &groups, col0, out }, path, arch)
        };
        // Each task owns a contiguous run of columns and writes its results straight into their places in
        // every row: the rows are cut at the tasks' column boundaries, and each task gets its piece of each
        // row. (Writing each task's block column by column, turning it around, then copying the blocks
        // together took three passes over the result, and fresh pages for each: a tenth of a long prefill.)
        let mut out = vec![0f32; m * n];
        let threads = rayon::current_num_threads();
        let parallel = work >= PARALLEL_MIN_WORK && threads > 1;
        let cols = if parallel { n.div_ceil(threads * TASKS_PER_THREAD).max(1) } else { n };
        let tasks = n.div_ceil(cols);
        let mut pieces: Vec<Vec<&mut [f32]>> = (0..tasks).map(|_| Vec::with_capacity(m)).collect();
        for row in out.chunks_exact_mut(n) {
            let mut rest = row;
            for piece in pieces.iter_mut() {
                let (mine, others) = rest.split_at_mut(cols.min(rest.len()));
                piece.push(mine);
                rest = others;
            }
        }
        if parallel {
            pieces.par_iter_mut().enumerate().for_each(|(t, piece)| kernel(t * cols, piece));
        } else {
            kernel(0, &mut pieces[0]);
        }
        drop(pieces);
        out
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Each thread's blocks for `BlockMatrix::widened`, kept from call to call (a prefill makes a few hundred
    /// such calls, of up to a MiB or so each; fresh memory each time would be fresh pages to fault in).
    static WIDE_SCRATCH: std::cell::Cell<Vec<crate::q8::Q8Block>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `BlockMatrix::widened` as a call `V3::vectorize` compiles for AVX2 (a closure is not always inlined into it,
/// and its vector operations then run as calls).
#[cfg(target_arch = "x86_64")]
struct Widen<'a, B> {
    matrix: &'a BlockMatrix<B>,
    v: pulp::x86::V3,
    col0: usize,
    columns: usize,
}

#[cfg(target_arch = "x86_64")]
impl<B: WeightBlock> NullaryFnOnce for Widen<'_, B> {
    type Output = Option<BlockMatrix<crate::q8::Q8Block>>;

    #[inline(always)]
    fn call(self) -> Self::Output {
        self.matrix.widened(self.v, self.col0, self.columns)
    }
}

impl<B: WeightBlock> BlockMatrix<B> {
    /// Columns `col0..col0 + columns` as 8-bit blocks holding the same values, for formats that widen
    /// (`WeightBlock::widen_v3`); `None` for the others.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn widened(&self, v: pulp::x86::V3, col0: usize, columns: usize) -> Option<BlockMatrix<crate::q8::Q8Block>> {
        self.row_blocks(col0).first()?.widen_v3(v)?;
        let mut wide = WIDE_SCRATCH.take();
        wide.clear();
        // Plain loops: a closure here would not be compiled for AVX2 (the vector operations would be calls).
        for c in col0..col0 + columns {
            for b in self.row_blocks(c) {
                wide.push(b.widen_v3(v)?);
            }
        }
        Some(BlockMatrix::new(columns, self.k, wide)?.with_input(self.input))
    }
}

/// Runs one column task on the code path `path` (which the CPU must run).
fn run_task<B: WeightBlock>(kernel: Kernel<'_, '_, B>, path: KernelPath, arch: Arch) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v3) = pulp::x86::V3::try_new().filter(|_| path != KernelPath::Portable) {
        if path == KernelPath::Vnni {
            #[allow(unsafe_code)]
            // SAFETY: `path` is `Vnni` only where `KernelPath::best` found AVX512-VNNI and AVX512-VL (and `v3`
            // proves AVX2 and FMA), the features `kernel_vnni` is compiled for.
            unsafe {
                kernel_vnni(v3, kernel)
            };
        } else {
            #[allow(unsafe_code)]
            // SAFETY: `path` is `Avx2` or better only where `KernelPath::best` found F16C (and `v3` proves AVX2
            // and FMA), the features `kernel_avx2` is compiled for.
            unsafe {
                kernel_avx2(v3, kernel)
            };
        }
        return;
    }
    if path != KernelPath::Portable {
        arch.dispatch(kernel);
    } else {
        pulp::Scalar::new().vectorize(kernel);
    }
}

/// One column task: the columns of weight rows `col0..` for all the input rows.
struct Kernel<'a, 'b, B> {
    w: &'a BlockMatrix<B>,
    groups: &'a [XGroup],
    col0: usize,
    /// The task's piece of each result row (all of the same width: its columns).
    out: &'a mut [&'b mut [f32]],
}

impl<B: WeightBlock> WithSimd for Kernel<'_, '_, B> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Kernel { w, groups, col0, out } = self;
        let columns = out.first().map_or(0, |row| row.len());
        for c in 0..columns {
            let wrow = w.row_blocks(col0 + c);
            for g in groups {
                for (i, row) in out[g.row0..g.row0 + g.rows].iter_mut().enumerate() {
                    let o = &mut row[c];
                    let mut acc = 0f32;
                    let mut macc = 0f32;
                    if B::SUPER {
                        // One integer sum per block, then its float scales (as the vector kernels do).
                        for (b, wb) in wrow.iter().enumerate() {
                            let (weights, offsets) = wb.part_weights();
                            let (mut dot, mut offset) = (0i32, 0i32);
                            for p in 0..B::PARTS {
                                let x = &g.q[(b * B::PARTS + p) * g.rows + i];
                                dot += weights[p] * wb.dot(p, x);
                                offset += offsets[p] * x.iter().map(|&v| v as i32).sum::<i32>();
                            }
                            let dx = g.d[b * B::PARTS * g.rows + i];
                            let (scale, offset_scale) = wb.block_scales();
                            acc += dot as f32 * (scale * dx);
                            macc += offset as f32 * (offset_scale * dx);
                        }
                        *o = acc + macc;
                        continue;
                    }
                    for (b, wb) in wrow.iter().enumerate() {
                        for p in 0..B::PARTS {
                            let at = (b * B::PARTS + p) * g.rows + i;
                            acc += wb.dot(p, &g.q[at]) as f32 * (wb.scale(p) * g.d[at]);
                            if B::OFFSET {
                                macc += wb.offset(p) * g.s[at];
                            }
                        }
                    }
                    *o = acc + macc;
                }
            }
        }
    }
}

/// `kernel_v3` with `maddubs` dot products, compiled for the CPUs of `KernelPath::Avx2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2,fma,f16c")]
fn kernel_avx2<B: WeightBlock>(v: pulp::x86::V3, kernel: Kernel<'_, '_, B>) {
    kernel_v3::<B, false>(v, kernel)
}

/// `kernel_v3` with `vnni_dot`, compiled for the CPUs of `KernelPath::Vnni`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn kernel_vnni<B: WeightBlock>(v: pulp::x86::V3, kernel: Kernel<'_, '_, B>) {
    kernel_v3::<B, true>(v, kernel)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn kernel_v3<B: WeightBlock, const VNNI: bool>(v: pulp::x86::V3, kernel: Kernel<'_, '_, B>) {
    let Kernel { w, groups, col0, out } = kernel;
    let columns = out.first().map_or(0, |row| row.len());
    let (mut s8, mut s4, mut s2, mut s1) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Group by group, each over all of the task's columns: a group's inputs (8 rows: 7 KiB for 896 inputs per
    // row) stay in the first-level cache while the task's weights (a few hundred KiB) come from the second;
    // column by column, every column would read all the inputs again from the second-level cache, 8 times the
    // bytes (a prefill of 8 x 37 tokens of Qwen2.5-0.5B took 2.3 s that way, 2.05 s this way).
    for g in groups {
        // The group's pieces of the result rows.
        let rows = &mut out[g.row0..g.row0 + g.rows];
        for c in 0..columns {
            let wrow = w.row_blocks(col0 + c);
            // The rows of a group share each loaded weight block; every row's arithmetic is the same as alone.
            if B::SUPER {
                match g.rows {
                    8 => store(rows, c, column_super_v3::<B, 8, VNNI>(v, wrow, g)),
                    4 => store(rows, c, column_super_v3::<B, 4, VNNI>(v, wrow, g)),
                    2 => store(rows, c, column_super_v3::<B, 2, VNNI>(v, wrow, g)),
                    _ => store(rows, c, column_super_v3::<B, 1, VNNI>(v, wrow, g)),
                }
                continue;
            }
            match g.rows {
                8 => store(rows, c, column_v3::<B, 8, VNNI>(v, wrow, g, &mut s8)),
                4 => store(rows, c, column_v3::<B, 4, VNNI>(v, wrow, g, &mut s4)),
                2 => store(rows, c, column_v3::<B, 2, VNNI>(v, wrow, g, &mut s2)),
                _ => store(rows, c, column_v3::<B, 1, VNNI>(v, wrow, g, &mut s1)),
            }
        }
    }
}

/// Column `c` of each of `rows` (a group's pieces of the result rows) from one result per row.
#[inline(always)]
fn store<const R: usize>(rows: &mut [&mut [f32]], c: usize, values: [f32; R]) {
    for (row, v) in rows.iter_mut().zip(values) {
        row[c] = v;
    }
}

/// Asks for the cache lines `PREFETCH_BYTES` past block `wb` (every line of it: the K-quant blocks span 3 or 4).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_v3<B>(v: pulp::x86::V3, wb: &B) {
    let ahead = (wb as *const B).cast::<i8>().wrapping_add(PREFETCH_BYTES);
    for line in (0..size_of::<B>()).step_by(64) {
        v.sse._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ahead.wrapping_add(line));
    }
}

/// Dot products of one weight row with the `R` input rows of a group; `scales` is scratch space.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn column_v3<B: WeightBlock, const R: usize, const VNNI: bool>(
    v: pulp::x86::V3,
    wrow: &[B],
    g: &XGroup,
    scales: &mut Vec<[f32; R]>,
) -> [f32; R] {
    use core::arch::x86_64::__m256;
    let (q, _) = g.q.as_chunks::<R>();
    let (qu, _) = g.qu.as_chunks::<R>();
    let (start16, _) = g.start16.as_chunks::<R>();
    // The input blocks of each weight block's parts, R rows each.
    let x = q.chunks_exact(B::PARTS).zip(qu.chunks_exact(B::PARTS)).zip(start16.chunks_exact(B::PARTS));
    type Parts<'a, const R: usize> = ((&'a [[[i8; BLOCK]; R]], &'a [[[u8; BLOCK]; R]]), &'a [[[i32; 8]; R]]);
    #[inline(always)]
    fn row<const R: usize>(((q, qu), start16): Parts<'_, R>, p: usize, i: usize) -> XBlock<'_> {
        XBlock { q: &q[p][i], qu: &qu[p][i], start16: &start16[p][i] }
    }
    let (d, _) = g.d.as_chunks::<R>();
    let (s, _) = g.s.as_chunks::<R>();
    let mut macc = [0f32; R];
    if R == 1 {
        // One row: everything in one pass (the scale goes from a register straight to the broadcast).
        let mut acc = v.avx._mm256_setzero_ps();
        let parts = x.zip(d.chunks_exact(B::PARTS)).zip(s.chunks_exact(B::PARTS));
        for (wb, ((x, d), s)) in wrow.iter().zip(parts) {
            prefetch_v3(v, wb);
            let (dw, mw) = wb.scales_offsets_f16c();
            for p in 0..B::PARTS {
                let dot = B::dot_v3::<VNNI>(v, wb.load_v3::<VNNI>(v, p), row(x, p, 0));
                let scale = v.avx._mm256_set1_ps(dw[p] * d[p][0]);
                acc = v.fma._mm256_fmadd_ps(v.avx._mm256_cvtepi32_ps(dot), scale, acc);
                if B::OFFSET {
                    macc[0] += mw[p] * s[p][0];
                }
            }
        }
        let l: [f32; 8] = pulp::cast(acc);
        return [(((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + macc[0]; R];
    }
    // Several rows: first the per-block scales of all rows and the offset terms (short loops over R that
    // become vector operations), so that the dot-product loop only loads them (computing them in the loop
    // costs a stalled store-to-load round trip per row).
    // Sized first and written in place: a possible allocation call inside the loop would make the compiler keep
    // `macc` in memory (a call clobbers every vector register), a store-to-load round trip per block.
    scales.clear();
    scales.resize(wrow.len() * B::PARTS, [0f32; R]);
    let blocks = wrow.iter().zip(d.chunks_exact(B::PARTS).zip(s.chunks_exact(B::PARTS)));
    for ((wb, (d, s)), out) in blocks.zip(scales.chunks_exact_mut(B::PARTS)) {
        let (dw, mw) = wb.scales_offsets_f16c();
        for p in 0..B::PARTS {
            out[p] = core::array::from_fn(|i| dw[p] * d[p][i]);
            if B::OFFSET {
                for i in 0..R {
                    macc[i] += mw[p] * s[p][i];
                }
            }
        }
    }
    let mut acc: [__m256; R] = [v.avx._mm256_setzero_ps(); R];
    for (wb, (scale, x)) in wrow.iter().zip(scales.chunks_exact(B::PARTS).zip(x)) {
        prefetch_v3(v, wb);
        for (p, scale) in scale.iter().enumerate() {
            let loaded = wb.load_v3::<VNNI>(v, p);
            for i in 0..R {
                let dot = B::dot_v3::<VNNI>(v, loaded, row(x, p, i));
                let sc = v.avx._mm256_set1_ps(scale[i]);
                acc[i] = v.fma._mm256_fmadd_ps(v.avx._mm256_cvtepi32_ps(dot), sc, acc[i]);
            }
        }
    }
    let mut out = [0f32; R];
    for i in 0..R {
        let l: [f32; 8] = pulp::cast(acc[i]);
        out[i] = (((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + macc[i];
    }
    out
}

/// `column_v3` for `SUPER` formats: per block and row, the parts' products summed in eight i32 lanes with their
/// integer scales (`dot_acc_v3`), the block's term from the inputs' sums of 16 (`term_weights`), then one
/// conversion and multiply-add for the block (and one for its offsets).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn column_super_v3<B: WeightBlock, const R: usize, const VNNI: bool>(
    v: pulp::x86::V3,
    wrow: &[B],
    g: &XGroup,
) -> [f32; R] {
    use core::arch::x86_64::{__m256, __m256i};
    let (q, _) = g.q.as_chunks::<R>();
    let (qu, _) = g.qu.as_chunks::<R>();
    let (start16, _) = g.start16.as_chunks::<R>();
    let (d, _) = g.d.as_chunks::<R>();
    let (bsums, _) = g.bsums.as_chunks::<R>();
    let mut acc: [__m256; R] = [v.avx._mm256_setzero_ps(); R];
    for (b, wb) in wrow.iter().enumerate() {
        prefetch_v3(v, wb);
        let mut dots: [__m256i; R] = [v.avx._mm256_setzero_si256(); R];
        for p in 0..B::PARTS {
            let loaded = wb.load_v3::<VNNI>(v, p);
            let at = b * B::PARTS + p;
            for i in 0..R {
                let x = XBlock { q: &q[at][i], qu: &qu[at][i], start16: &start16[at][i] };
                dots[i] = B::dot_acc_v3::<VNNI>(v, dots[i], loaded, x);
            }
        }
        let (scale, offset_scale) = wb.block_scales_f16c();
        let term_weights: __m256i = pulp::cast(wb.term_weights());
        let dx = &d[b * B::PARTS];
        for i in 0..R {
            if B::OFFSET {
                let terms = v.avx2._mm256_madd_epi16(pulp::cast(bsums[b][i]), term_weights);
                let dot = v.avx._mm256_cvtepi32_ps(dots[i]);
                acc[i] = v.fma._mm256_fmadd_ps(dot, v.avx._mm256_set1_ps(scale * dx[i]), acc[i]);
                let offsets = v.avx._mm256_cvtepi32_ps(terms);
                acc[i] = v.fma._mm256_fmadd_ps(offsets, v.avx._mm256_set1_ps(offset_scale * dx[i]), acc[i]);
            } else {
                // The dot products plus the term, in one `vpdpwssd` with VNNI (the same integers as an add).
                let sums = if VNNI {
                    // SAFETY: code compiled with `VNNI` set runs only inside `kernel_vnni` (see `scaled_dot_v3`).
                    #[allow(unsafe_code)]
                    unsafe {
                        dpwssd(dots[i], pulp::cast(bsums[b][i]), term_weights)
                    }
                } else {
                    v.avx2._mm256_add_epi32(dots[i], v.avx2._mm256_madd_epi16(pulp::cast(bsums[b][i]), term_weights))
                };
                let dot = v.avx._mm256_cvtepi32_ps(sums);
                acc[i] = v.fma._mm256_fmadd_ps(dot, v.avx._mm256_set1_ps(scale * dx[i]), acc[i]);
            }
        }
    }
    core::array::from_fn(|i| {
        let l: [f32; 8] = pulp::cast(acc[i]);
        ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), for test data.
    pub(crate) struct TestRng(u64);

    impl TestRng {
        pub(crate) fn new(seed: u64) -> Self {
            TestRng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform in `[-1, 1)`.
        pub(crate) fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// `count` stored blocks of `bytes` random bytes each, with the half-precision scales at `f16_at` set to
    /// random finite values of either sign between about 2^-10 and 2^-4 (weights of a real model's size).
    pub(crate) fn random_blocks(count: usize, bytes: usize, f16_at: &[usize], seed: u64) -> Vec<u8> {
        let mut rng = TestRng::new(seed);
        let mut out = Vec::with_capacity(count * bytes);
        for _ in 0..count {
            let start = out.len();
            out.extend((0..bytes).map(|_| rng.next() as u8));
            for &at in f16_at {
                let magnitude = (2f32).powf(-10.0 + 6.0 * (rng.unit() + 1.0) / 2.0);
                let h = crate::half::f32_to_f16(magnitude.copysign(rng.unit()));
                out[start + at..start + at + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn nearest_even_rounds_as_the_standard_library() {
        let mut rng = TestRng::new(9);
        let halves = (-600..=600).map(|i| i as f32 * 0.5);
        let random = (0..100_000).map(|_| rng.unit() * 200.0);
        for v in halves.chain(random).chain([0.49999997, -0.49999997, 4_194_304.0, -4_194_303.5]) {
            assert_eq!(nearest_even(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn inputs_are_quantised_as_llama_cpp_quantises_them() {
        // Q8_0: scale 127 / amax, ties to even, the block scale in half precision.
        let mut xb = [0f32; BLOCK];
        xb[..5].copy_from_slice(&[127.0, 2.5, -0.5, 3.5, -2.5]);
        let mut q = [0i8; BLOCK];
        assert_eq!(quantize_q8_0(&xb, &mut q), 1.0);
        assert_eq!(q[..5], [127, 2, 0, 4, -2]);
        xb[0] = 0.1;
        let d = quantize_q8_0(&xb[..1].repeat(BLOCK), &mut q);
        assert_eq!(d, f16_to_f32(f32_to_f16(0.1 / 127.0)));
        assert_ne!(d, 0.1 / 127.0, "the scale is rounded to half precision");
        // Q8_K: one scale for 256 inputs; the input of largest magnitude becomes -127.
        let mut xs = vec![0f32; 256];
        xs[7] = 254.0;
        xs[200] = 5.0;
        xs[201] = 3.0;
        let mut parts = vec![[0i8; BLOCK]; 8];
        assert_eq!(quantize_q8_k(&xs, &mut parts), -2.0);
        assert_eq!((parts[0][7], parts[6][8], parts[6][9]), (-127, -2, -2), "-2.5 and -1.5 to even");
        assert_eq!(quantize_q8_k(&[0.0; 256], &mut parts), 0.0);
        assert!(parts.iter().all(|p| p.iter().all(|&v| v == 0)));
    }

    /// Checks a matrix read from stored `data` of GGML type `dtype`: its rows dequantise to exactly what
    /// candle's GGML reader gives for the same bytes, and `check_matmul` holds for random inputs (15 rows, so
    /// every group size of the kernels runs) with either input quantisation.
    pub(crate) fn check_against_candle<B: WeightBlock>(
        q: BlockMatrix<B>,
        data: &[u8],
        dtype: candle_core::quantized::GgmlDType,
        n: usize,
        k: usize,
    ) {
        use candle_core::quantized::{QStorage, QTensor};
        use candle_core::Device;
        let storage = QStorage::from_data(std::borrow::Cow::Borrowed(data), &Device::Cpu, dtype).expect("storage");
        let reference = QTensor::new(storage, (n, k)).expect("tensor");
        let reference: Vec<f32> =
            reference.dequantize(&Device::Cpu).and_then(|t| t.flatten_all()?.to_vec1()).expect("dequantize");
        let mut ours = Vec::new();
        for j in 0..n {
            q.row(j, &mut ours);
        }
        assert_eq!(ours.len(), reference.len());
        for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
            assert!(a == b, "value {i}: {a} vs candle's {b}");
        }
        let mut rng = TestRng::new(k as u64);
        let x: Vec<f32> = (0..15 * k).map(|_| rng.unit() * 2.0).collect();
        check_matmul(&q, &x);
        check_matmul(&q.with_input(InputQuant::LlamaCpp), &x);
    }

    /// Checks a matrix against its dequantised values: close to the exact product, the same for a row alone
    /// as in a batch (for every batch size up to `x`'s rows), and every kernel path this CPU runs close to the others.
    pub(crate) fn check_matmul<B: WeightBlock>(q: &BlockMatrix<B>, x: &[f32]) {
        let (n, k) = (q.n, q.k);
        let m = x.len() / k;
        let mut dense = Vec::new();
        for j in 0..n {
            q.row(j, &mut dense);
        }
        let y = q.matmul(x, m);
        let paths: Vec<(KernelPath, Vec<f32>)> =
            KernelPath::available().into_iter().map(|p| (p, q.matmul_with(x, m, p))).collect();
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            // Each input value is off by at most half a step of its block's 8-bit quantisation (one scale per
            // 32 or per 256 inputs), and a 32-value block's scale by half-precision rounding.
            let span = BlockMatrix::<B>::VALUES;
            let step: Vec<f32> = xr
                .chunks_exact(span)
                .flat_map(|b| vec![b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0; span])
                .collect();
            for j in 0..n {
                let w = &dense[j * k..(j + 1) * k];
                let exact: f32 = xr.iter().zip(w).map(|(a, b)| a * b).sum();
                let size: f32 = xr.iter().zip(w).map(|(a, b)| (a * b).abs()).sum();
                let bound: f32 = w.iter().zip(&step).map(|(w, s)| w.abs() * s).sum::<f32>() * 0.5 + 6e-4 * size + 1e-6;
                let got = y[r * n + j];
                assert!((got - exact).abs() <= bound, "{r},{j}: {got} vs {exact} (bound {bound})");
                for (path, y) in &paths {
                    assert!((y[r * n + j] - got).abs() <= 1e-5 * size + 1e-6, "{r},{j}: {path:?} kernel");
                }
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
