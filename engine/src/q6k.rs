//! GGML's Q6_K weight format, read as stored: super-blocks of 256 values, 210 bytes each — 128 bytes of low
//! nibbles (`ql`), 64 bytes of 2-bit high parts (`qh`), 16 signed 8-bit scales (one per 16 values) and a
//! half-precision `d`. Value = `d * sc * (q - 32)` with `q` in 0..=63. In each half of 128 values, value
//! `l + 32t` (`l` < 32, `t` < 4) takes the low (`t` < 2) or high nibble of `ql[l + 32 (t % 2)]` and bits
//! `2t..2t + 2` of `qh[l]`. The engine's parts are those runs of 32 values; a part's integer dot product
//! weighs its two halves by their scales, and `d` is the part's float scale (see `matmul`).

use crate::half::f16_to_f32;
use crate::matmul::{BlockMatrix, WeightBlock, XBlock, BLOCK};

/// Values per super-block.
const VALUES: usize = 256;
/// Bytes of one stored super-block.
const BYTES: usize = 210;

/// 256 weights, the file's 210 bytes unchanged.
#[derive(Clone, Copy)]
pub(crate) struct Q6KBlock {
    ql: [u8; 128],
    qh: [u8; 64],
    scales: [i8; 16],
    d: u16,
}

pub(crate) type Q6KMatrix = BlockMatrix<Q6KBlock>;

/// From GGML Q6_K super-blocks of a `[n, k]` matrix (`k` a multiple of 256).
pub(crate) fn q6k_from_q6_k(data: &[u8], n: usize, k: usize) -> Option<Q6KMatrix> {
    if !k.is_multiple_of(VALUES) || data.len() != n * k / VALUES * BYTES {
        return None;
    }
    let blocks = data
        .chunks_exact(BYTES)
        .map(|b| Q6KBlock {
            ql: core::array::from_fn(|i| b[i]),
            qh: core::array::from_fn(|i| b[128 + i]),
            scales: core::array::from_fn(|i| b[192 + i] as i8),
            d: u16::from_le_bytes([b[208], b[209]]),
        })
        .collect();
    BlockMatrix::new(n, k, blocks)
}

impl Q6KBlock {
    /// Value `l` of part `p`, unsigned (0..=63).
    #[inline(always)]
    fn q(&self, p: usize, l: usize) -> u8 {
        let (half, t) = (p / 4, p % 4);
        let low = self.ql[64 * half + 32 * (t % 2) + l];
        let nibble = if t < 2 { low & 15 } else { low >> 4 };
        nibble | ((self.qh[32 * half + l] >> (2 * t)) & 3) << 4
    }

    /// The scales of part `p`'s first and second 16 values.
    #[inline(always)]
    fn part_scales(&self, p: usize) -> (i8, i8) {
        let at = 8 * (p / 4) + 2 * (p % 4);
        (self.scales[at], self.scales[at + 1])
    }
}

impl WeightBlock for Q6KBlock {
    const PARTS: usize = VALUES / BLOCK;
    const OFFSET: bool = false;
    const BYTES: usize = BYTES;

    #[inline(always)]
    fn scale(&self, _part: usize) -> f32 {
        f16_to_f32(self.d)
    }

    #[inline(always)]
    fn offset(&self, _part: usize) -> f32 {
        0.0
    }

    #[inline(always)]
    fn dot(&self, part: usize, x: &[i8; BLOCK]) -> i32 {
        let (a, b) = self.part_scales(part);
        let half = |r: std::ops::Range<usize>| -> i32 { r.map(|l| (self.q(part, l) as i32 - 32) * x[l] as i32).sum() };
        a as i32 * half(0..16) + b as i32 * half(16..32)
    }

    fn dequantize(&self, out: &mut Vec<f32>) {
        let d = f16_to_f32(self.d);
        for p in 0..Self::PARTS {
            let (a, b) = self.part_scales(p);
            for l in 0..BLOCK {
                let sc = if l < 16 { a } else { b };
                out.push(d * (sc as i32 * (self.q(p, l) as i32 - 32)) as f32);
            }
        }
    }

    /// Summed over the super-block with the 16-value runs' 8-bit scales; the `- 32` once per block.
    const SUPER: bool = true;

    #[inline(always)]
    fn block_scales(&self) -> (f32, f32) {
        (f16_to_f32(self.d), 0.0)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_scales_f16c(&self) -> (f32, f32) {
        (crate::half::f16_pair_f16c(u32::from(self.d)).0, 0.0)
    }

    /// The part's 32 unsigned values as bytes, and its two scales as 16-bit lanes (8 each).
    #[cfg(target_arch = "x86_64")]
    type Loaded = (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn load_v3<const VNNI: bool>(&self, v: pulp::x86::V3, part: usize) -> Self::Loaded {
        use core::arch::x86_64::__m256i;
        let (half, t) = (part / 4, part % 4);
        let low: __m256i = pulp::cast(self.ql.as_chunks::<32>().0[2 * half + t % 2]);
        let high: __m256i = pulp::cast(self.qh.as_chunks::<32>().0[half]);
        let fifteen = v.avx._mm256_set1_epi8(15);
        let nibbles = match t {
            0 | 1 => v.avx2._mm256_and_si256(low, fifteen),
            _ => v.avx2._mm256_and_si256(v.avx2._mm256_srli_epi16::<4>(low), fifteen),
        };
        // Bits 2t..2t + 2 of qh moved to bits 4..6.
        let top = match t {
            0 => v.avx2._mm256_slli_epi16::<4>(high),
            1 => v.avx2._mm256_slli_epi16::<2>(high),
            2 => high,
            _ => v.avx2._mm256_srli_epi16::<2>(high),
        };
        let q = v.avx2._mm256_or_si256(nibbles, v.avx2._mm256_and_si256(top, v.avx._mm256_set1_epi8(0x30)));
        let (a, b) = self.part_scales(part);
        (q, v.avx._mm256_set_m128i(v.sse2._mm_set1_epi16(b as i16), v.sse2._mm_set1_epi16(a as i16)))
    }

    /// `(q - 32) * x` as `q * x - 32 * x` in 16-bit lanes (at most 2 * 63 * 127 + 2 * 32 * 127 in size: no
    /// saturation), summed in pairs weighted by the half's scale (the form of the kernels for 32-value blocks;
    /// this format's sums go through `dot_acc_v3`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_v3<const VNNI: bool>(
        v: pulp::x86::V3,
        (q, scales): Self::Loaded,
        x: XBlock<'_>,
    ) -> core::arch::x86_64::__m256i {
        crate::matmul::offset_dot_v3(v, q, x.v3(), 32, scales)
    }

    /// `q * x` in pairs (`maddubs`, at most 2 * 63 * 128 per 16-bit lane), times the halves' scales, added in
    /// pairs to `acc` (`vpdpwssd` with VNNI); the `- 32 * x` comes once per block (`term_weights`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_acc_v3<const VNNI: bool>(
        v: pulp::x86::V3,
        acc: core::arch::x86_64::__m256i,
        (q, scales): Self::Loaded,
        x: XBlock<'_>,
    ) -> core::arch::x86_64::__m256i {
        crate::matmul::scaled_dot_v3::<VNNI>(v, acc, q, x, scales)
    }

    /// `-32` times each run's scale (at most 32 * 128 in size).
    #[inline(always)]
    fn term_weights(&self) -> [i16; 16] {
        self.scales.map(|s| -32 * s as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::tests::{check_against_candle, random_blocks};
    use candle_core::quantized::GgmlDType;

    #[test]
    fn q6_k_blocks_dequantise_as_ggml_and_multiply_on_every_path() {
        let (n, k) = (24, 512);
        let data = random_blocks(n * k / VALUES, BYTES, &[208], 3);
        let q = q6k_from_q6_k(&data, n, k).expect("q6_k");
        check_against_candle(q, &data, GgmlDType::Q6K, n, k);
        assert!(q6k_from_q6_k(&data[..data.len() - 1], n, k).is_none());
        assert!(q6k_from_q6_k(&data, n, k - 32).is_none(), "rows of whole super-blocks only");
    }
}
