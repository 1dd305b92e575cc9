//! The engine's 4-bit weight format, taken unchanged from GGML Q4_0/Q4_1 files (per 32 values 16 bytes of
//! nibbles, a scale `d` and an offset `m`: value = `d * q + m`) so that decoding reads far fewer bytes than the
//! 8-bit format. Against 8-bit input blocks (`dx`, `xq`) a block contributes
//! `d * dx * dot(q, xq) + m * dx * sum(xq)` (see `matmul` for the kernel).

use crate::half::{f16_to_f32, f32_to_f16};
use crate::matmul::{BlockMatrix, WeightBlock, XBlock, BLOCK};

/// Bytes of nibbles per block.
const NIBBLES: usize = BLOCK / 2;

/// 32 weights: value = `d * q + m`, `q` in 0..=15; byte `i` of `q` holds value `i` (low nibble) and value
/// `i + 16` (high nibble). `d` and `m` stay half-precision as in the file (20 bytes a block: decoding is
/// bound by memory traffic, and the conversion costs a few scalar instructions per block).
#[derive(Clone, Copy)]
pub(crate) struct Q4Block {
    d: u16,
    m: u16,
    q: [u8; NIBBLES],
}

pub(crate) type Q4Matrix = BlockMatrix<Q4Block>;

/// Encode an f32 that is exactly representable in half precision.
fn f32_to_f16_exact(v: f32) -> Option<u16> {
    let h = f32_to_f16(v);
    (f16_to_f32(h) == v).then_some(h)
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// From GGML Q4_1 blocks (20 bytes each: f16 `d`, f16 `m`, 16 bytes of nibbles) of a `[n, k]` matrix.
pub(crate) fn q4_from_q4_1(data: &[u8], n: usize, k: usize) -> Option<Q4Matrix> {
    from_ggml(data, n, k, 20, |b| (f16_at(b, 0), Some(f16_at(b, 2)), &b[4..20]))
}

/// From GGML Q4_0 blocks (18 bytes each: f16 `d`, 16 bytes of nibbles; value = `d * (q - 8)`).
pub(crate) fn q4_from_q4_0(data: &[u8], n: usize, k: usize) -> Option<Q4Matrix> {
    // `-8 d` is exact in half precision unless it overflows (then the block is rejected).
    from_ggml(data, n, k, 18, |b| {
        let d = f16_at(b, 0);
        (d, f32_to_f16_exact(-8.0 * f16_to_f32(d)), &b[2..18])
    })
}

fn from_ggml(
    data: &[u8],
    n: usize,
    k: usize,
    block_bytes: usize,
    split: impl Fn(&[u8]) -> (u16, Option<u16>, &[u8]),
) -> Option<Q4Matrix> {
    if !k.is_multiple_of(BLOCK) || data.len() != n * k / BLOCK * block_bytes {
        return None;
    }
    let blocks = data
        .chunks_exact(block_bytes)
        .map(|b| {
            let (d, m, q) = split(b);
            Some(Q4Block { d, m: m?, q: q.try_into().ok()? })
        })
        .collect::<Option<Vec<_>>>()?;
    BlockMatrix::new(n, k, blocks)
}

impl WeightBlock for Q4Block {
    const OFFSET: bool = true;
    const BYTES: usize = 20;

    #[inline(always)]
    fn scale(&self, _part: usize) -> f32 {
        f16_to_f32(self.d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scales_offsets_f16c(&self) -> ([f32; 8], [f32; 8]) {
        let (d, m) = crate::half::f16_pair_f16c(u32::from(self.d) | u32::from(self.m) << 16);
        ([d, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [m, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    }

    #[inline(always)]
    fn offset(&self, _part: usize) -> f32 {
        f16_to_f32(self.m)
    }

    #[inline(always)]
    fn dot(&self, _part: usize, x: &[i8; BLOCK]) -> i32 {
        let (lo, hi) = x.split_at(NIBBLES);
        self.q
            .iter()
            .zip(lo.iter().zip(hi))
            .map(|(&q, (&a, &b))| (q & 15) as i32 * a as i32 + (q >> 4) as i32 * b as i32)
            .sum()
    }

    fn dequantize(&self, out: &mut Vec<f32>) {
        let (d, m) = (self.scale(0), self.offset(0));
        out.extend(self.q.iter().map(|&v| (v & 15) as f32 * d + m));
        out.extend(self.q.iter().map(|&v| (v >> 4) as f32 * d + m));
    }

    /// The 32 nibbles widened to bytes, in value order.
    #[cfg(target_arch = "x86_64")]
    type Loaded = core::arch::x86_64::__m256i;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn load_v3<const VNNI: bool>(&self, v: pulp::x86::V3, _part: usize) -> Self::Loaded {
        let raw: core::arch::x86_64::__m128i = pulp::cast(self.q);
        let both = v.avx._mm256_set_m128i(v.sse2._mm_srli_epi16::<4>(raw), raw);
        v.avx2._mm256_and_si256(both, v.avx._mm256_set1_epi8(15))
    }

    /// The nibbles are unsigned, so `maddubs` multiplies them with the signed inputs directly (at most
    /// 2 * 15 * 127 per 16-bit lane: no saturation).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_v3<const VNNI: bool>(v: pulp::x86::V3, w: Self::Loaded, x: XBlock<'_>) -> core::arch::x86_64::__m256i {
        crate::matmul::unsigned_dot_v3::<VNNI>(v, w, x.v3())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encode a dense matrix as Q4_1 blocks (test helper).
    fn encode_q4_1(w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in w.chunks_exact(BLOCK) {
            let min = b.iter().fold(f32::MAX, |a, &v| a.min(v));
            let max = b.iter().fold(f32::MIN, |a, &v| a.max(v));
            let d = (max - min) / 15.0;
            // Scales that are exact in f16 (multiples of 1/1024 in a small range).
            let d = (d * 1024.0).round() / 1024.0;
            let m = (min * 1024.0).round() / 1024.0;
            let h = |v: f32| f32_to_f16_exact(v).expect("exact in f16").to_le_bytes();
            out.extend(h(d));
            out.extend(h(m));
            let q = |v: f32| if d > 0.0 { ((v - m) / d).round().clamp(0.0, 15.0) as u8 } else { 0 };
            for i in 0..NIBBLES {
                out.push(q(b[i]) | (q(b[i + NIBBLES]) << 4));
            }
        }
        out
    }

    #[test]
    fn q4_0_and_q4_1_blocks_dequantise_as_ggml_and_multiply_on_every_path() {
        use crate::matmul::tests::{check_against_candle, random_blocks};
        use candle_core::quantized::GgmlDType;
        let (n, k) = (40, 96);
        let data = random_blocks(n * k / BLOCK, 18, &[0], 4);
        check_against_candle(q4_from_q4_0(&data, n, k).expect("q4_0"), &data, GgmlDType::Q4_0, n, k);
        let data = random_blocks(n * k / BLOCK, 20, &[0, 2], 5);
        check_against_candle(q4_from_q4_1(&data, n, k).expect("q4_1"), &data, GgmlDType::Q4_1, n, k);
    }

    #[test]
    fn matmul_matches_dequantised_and_is_batch_invariant() {
        let (n, k, m) = (100, 96, 13);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        let q = q4_from_q4_1(&encode_q4_1(&w), n, k).expect("q4");
        let mut dense = Vec::new();
        for j in 0..n {
            q.row(j, &mut dense);
        }
        assert!(dense.iter().zip(&w).all(|(a, b)| (a - b).abs() < 0.1));
        crate::matmul::tests::check_matmul(&q, &x);
    }
}
