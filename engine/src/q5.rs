//! GGML's Q5_0 weight format, read as stored: per 32 values a half-precision scale `d`, 32 high bits `qh` and
//! 16 bytes of low nibbles; value `i` is `d * (q_i - 16)` with `q_i = nibble_i | bit_i << 4` (byte `i` of the
//! nibbles holds value `i` in its low half and value `i + 16` in its high half). The kernels multiply the
//! unsigned `q` and subtract 16 times the inputs' sum in the same integer lanes (see `matmul`).

use crate::half::f16_to_f32;
use crate::matmul::{BlockMatrix, WeightBlock, XBlock, BLOCK};

/// Bytes of one stored block.
const BYTES: usize = 22;

/// 32 weights, the file's 22 bytes unchanged.
#[derive(Clone, Copy)]
pub(crate) struct Q5Block {
    d: u16,
    qh: [u8; 4],
    qs: [u8; BLOCK / 2],
}

pub(crate) type Q5Matrix = BlockMatrix<Q5Block>;

/// From GGML Q5_0 blocks of a `[n, k]` matrix.
pub(crate) fn q5_from_q5_0(data: &[u8], n: usize, k: usize) -> Option<Q5Matrix> {
    if !k.is_multiple_of(BLOCK) || data.len() != n * k / BLOCK * BYTES {
        return None;
    }
    BlockMatrix::new(n, k, data.chunks_exact(BYTES).map(Q5Block::read).collect())
}

impl Q5Block {
    /// From the file's 22 bytes.
    fn read(b: &[u8]) -> Q5Block {
        Q5Block {
            d: u16::from_le_bytes([b[0], b[1]]),
            qh: [b[2], b[3], b[4], b[5]],
            qs: core::array::from_fn(|i| b[6 + i]),
        }
    }

    /// The unsigned 5-bit value `i` (0..=31).
    #[inline(always)]
    fn q(&self, i: usize) -> u8 {
        let nibble = if i < 16 { self.qs[i] & 15 } else { self.qs[i - 16] >> 4 };
        let high = (u32::from_le_bytes(self.qh) >> i) & 1;
        nibble | (high as u8) << 4
    }
}

impl WeightBlock for Q5Block {
    const OFFSET: bool = false;
    const BYTES: usize = BYTES;

    #[inline(always)]
    fn scale(&self, _part: usize) -> f32 {
        f16_to_f32(self.d)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn scales_offsets_f16c(&self) -> ([f32; 8], [f32; 8]) {
        ([crate::half::f16_pair_f16c(u32::from(self.d)).0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0; 8])
    }

    #[inline(always)]
    fn offset(&self, _part: usize) -> f32 {
        0.0
    }

    #[inline(always)]
    fn dot(&self, _part: usize, x: &[i8; BLOCK]) -> i32 {
        x.iter().enumerate().map(|(i, &x)| (self.q(i) as i32 - 16) * x as i32).sum()
    }

    fn dequantize(&self, out: &mut Vec<f32>) {
        let d = f16_to_f32(self.d);
        out.extend((0..BLOCK).map(|i| (self.q(i) as i32 - 16) as f32 * d));
    }

    /// The 32 unsigned 5-bit values as bytes, in value order.
    #[cfg(target_arch = "x86_64")]
    type Loaded = core::arch::x86_64::__m256i;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn load_v3<const VNNI: bool>(&self, v: pulp::x86::V3, _part: usize) -> Self::Loaded {
        let raw: core::arch::x86_64::__m128i = pulp::cast(self.qs);
        let both = v.avx._mm256_set_m128i(v.sse2._mm_srli_epi16::<4>(raw), raw);
        let low = v.avx2._mm256_and_si256(both, v.avx._mm256_set1_epi8(15));
        if VNNI {
            // `qh` as a byte mask (AVX512BW): 16 added where bit i is set, two instructions.
            return crate::matmul::masked_add_bytes(low, u32::from_le_bytes(self.qh), v.avx._mm256_set1_epi8(16));
        }
        // Bit i of qh to byte i: byte i takes the qh byte i / 8, keeps bit i % 8, and becomes 16 where it is set.
        let bits = v.avx._mm256_set1_epi32(i32::from_le_bytes(self.qh));
        let spread = v.avx2._mm256_shuffle_epi8(
            bits,
            v.avx._mm256_setr_epi8(
                0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            ),
        );
        let mask = v.avx._mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = v.avx2._mm256_cmpeq_epi8(v.avx2._mm256_and_si256(spread, mask), mask);
        v.avx2._mm256_or_si256(low, v.avx2._mm256_and_si256(set, v.avx._mm256_set1_epi8(16)))
    }

    /// `q - 16` as signed bytes, with the same scale.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn widen_v3(&self, v: pulp::x86::V3) -> Option<crate::q8::Q8Block> {
        let q = v.avx2._mm256_sub_epi8(self.load_v3::<false>(v, 0), v.avx._mm256_set1_epi8(16));
        Some(crate::q8::Q8Block::new(self.d, pulp::cast(q)))
    }

    /// `(q - 16) * x` as `q * x - 16 * x` in 16-bit lanes (at most 2 * 31 * 127 + 2 * 16 * 127 in size: no
    /// saturation).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_v3<const VNNI: bool>(v: pulp::x86::V3, w: Self::Loaded, x: XBlock<'_>) -> core::arch::x86_64::__m256i {
        if VNNI {
            // `q * x` started from `-16 * x` (lane by lane, made from the input block's sums): exact, one dot
            // product per row.
            return crate::matmul::vnni_dot_from(x.start16_v3(), w, x.v3());
        }
        crate::matmul::offset_dot_v3(v, w, x.v3(), 16, v.avx._mm256_set1_epi16(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::tests::{check_against_candle, random_blocks};
    use candle_core::quantized::GgmlDType;

    #[test]
    fn q5_0_blocks_dequantise_as_ggml_and_multiply_on_every_path() {
        let (n, k) = (40, 96);
        let data = random_blocks(n * k / BLOCK, BYTES, &[0], 1);
        let q = q5_from_q5_0(&data, n, k).expect("q5_0");
        check_against_candle(q, &data, GgmlDType::Q5_0, n, k);
        assert!(q5_from_q5_0(&data[1..], n, k).is_none());
        assert!(q5_from_q5_0(&data, n, k + 1).is_none());
    }
}
