//! GGML's Q4_K weight format, read as stored: super-blocks of 256 values in 8 parts of 32, 144 bytes each —
//! half-precision `d` and `dmin`, 12 bytes packing a 6-bit scale and a 6-bit min per part, and 128 bytes of
//! nibbles. Value `l` of part `p` is `d * sc_p * q - dmin * m_p`, where part `2c` takes the low nibbles of
//! bytes `32c..32c + 32` and part `2c + 1` their high nibbles. The kernels multiply the unsigned nibbles, sum
//! the parts' products weighted by their scales in integers, and take the mins times the inputs' sums once per
//! super-block (see `matmul`).

use crate::half::f16_to_f32;
use crate::matmul::{BlockMatrix, WeightBlock, XBlock, BLOCK};

/// Values per super-block.
const VALUES: usize = 256;
/// Bytes of one stored super-block.
const BYTES: usize = 144;

/// 256 weights, the file's 144 bytes unchanged.
#[derive(Clone, Copy)]
pub(crate) struct Q4KBlock {
    d: u16,
    dmin: u16,
    scales: [u8; 12],
    qs: [u8; 128],
}

pub(crate) type Q4KMatrix = BlockMatrix<Q4KBlock>;

/// From GGML Q4_K super-blocks of a `[n, k]` matrix (`k` a multiple of 256).
pub(crate) fn q4k_from_q4_k(data: &[u8], n: usize, k: usize) -> Option<Q4KMatrix> {
    if !k.is_multiple_of(VALUES) || data.len() != n * k / VALUES * BYTES {
        return None;
    }
    let blocks = data
        .chunks_exact(BYTES)
        .map(|b| Q4KBlock {
            d: u16::from_le_bytes([b[0], b[1]]),
            dmin: u16::from_le_bytes([b[2], b[3]]),
            scales: core::array::from_fn(|i| b[4 + i]),
            qs: core::array::from_fn(|i| b[16 + i]),
        })
        .collect();
    BlockMatrix::new(n, k, blocks)
}

impl Q4KBlock {
    /// Part `p`'s 6-bit scale and min: parts 0–3 in the low 6 bits of bytes `p` and `p + 4`; parts 4–7 in the
    /// nibbles of byte `p + 4` with their top 2 bits in the top bits of bytes `p - 4` and `p`.
    #[inline(always)]
    fn scale_min(&self, p: usize) -> (u8, u8) {
        let s = &self.scales;
        if p < 4 {
            (s[p] & 63, s[p + 4] & 63)
        } else {
            ((s[p + 4] & 15) | ((s[p - 4] >> 6) << 4), (s[p + 4] >> 4) | ((s[p] >> 6) << 4))
        }
    }

    /// Nibble `l` of part `p`.
    #[inline(always)]
    fn q(&self, p: usize, l: usize) -> u8 {
        let byte = self.qs[32 * (p / 2) + l];
        if p.is_multiple_of(2) {
            byte & 15
        } else {
            byte >> 4
        }
    }
}

impl WeightBlock for Q4KBlock {
    const PARTS: usize = VALUES / BLOCK;
    const OFFSET: bool = true;
    const BYTES: usize = BYTES;

    #[inline(always)]
    fn scale(&self, part: usize) -> f32 {
        f16_to_f32(self.d) * self.scale_min(part).0 as f32
    }

    #[inline(always)]
    fn offset(&self, part: usize) -> f32 {
        -(f16_to_f32(self.dmin) * self.scale_min(part).1 as f32)
    }

    #[inline(always)]
    fn dot(&self, part: usize, x: &[i8; BLOCK]) -> i32 {
        x.iter().enumerate().map(|(l, &x)| self.q(part, l) as i32 * x as i32).sum()
    }

    fn dequantize(&self, out: &mut Vec<f32>) {
        for p in 0..Self::PARTS {
            let (d, m) = (self.scale(p), self.offset(p));
            out.extend((0..BLOCK).map(|l| d * self.q(p, l) as f32 + m));
        }
    }

    /// Summed over the super-block with the parts' 6-bit scales; the mins times the inputs' sums once per block.
    const SUPER: bool = true;

    #[inline(always)]
    fn block_scales(&self) -> (f32, f32) {
        (f16_to_f32(self.d), -f16_to_f32(self.dmin))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_scales_f16c(&self) -> (f32, f32) {
        let (d, dmin) = crate::half::f16_pair_f16c(u32::from(self.d) | u32::from(self.dmin) << 16);
        (d, -dmin)
    }

    #[inline(always)]
    fn part_weights(&self) -> ([i32; 8], [i32; 8]) {
        let mut out = ([0; 8], [0; 8]);
        for p in 0..Self::PARTS {
            let (sc, m) = self.scale_min(p);
            (out.0[p], out.1[p]) = (sc as i32, m as i32);
        }
        out
    }

    /// The part's 32 nibbles as bytes, and its 6-bit scale in every 16-bit lane.
    #[cfg(target_arch = "x86_64")]
    type Loaded = (core::arch::x86_64::__m256i, core::arch::x86_64::__m256i);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn load_v3<const VNNI: bool>(&self, v: pulp::x86::V3, part: usize) -> Self::Loaded {
        let raw: core::arch::x86_64::__m256i = pulp::cast(self.qs.as_chunks::<32>().0[part / 2]);
        let shifted = if part.is_multiple_of(2) { raw } else { v.avx2._mm256_srli_epi16::<4>(raw) };
        let nibbles = v.avx2._mm256_and_si256(shifted, v.avx._mm256_set1_epi8(15));
        (nibbles, v.avx._mm256_set1_epi16(self.scale_min(part).0 as i16))
    }

    /// Unsigned nibbles times signed inputs (at most 2 * 15 * 128 per 16-bit lane: no saturation), unscaled (the
    /// form of the kernels for 32-value blocks; this format's sums go through `dot_acc_v3`).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_v3<const VNNI: bool>(v: pulp::x86::V3, (q, _): Self::Loaded, x: XBlock<'_>) -> core::arch::x86_64::__m256i {
        crate::matmul::unsigned_dot_v3::<VNNI>(v, q, x.v3())
    }

    /// The pairs of products (`maddubs`) times the part's scale, added in pairs to `acc` (`vpdpwssd` with VNNI;
    /// at most 2 * 3,840 * 63 per lane and part).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn dot_acc_v3<const VNNI: bool>(
        v: pulp::x86::V3,
        acc: core::arch::x86_64::__m256i,
        (q, scale): Self::Loaded,
        x: XBlock<'_>,
    ) -> core::arch::x86_64::__m256i {
        crate::matmul::scaled_dot_v3::<VNNI>(v, acc, q, x, scale)
    }

    /// Each part's min, for both sums of 16 of its inputs.
    #[inline(always)]
    fn term_weights(&self) -> [i16; 16] {
        let mins: [i16; 8] = core::array::from_fn(|p| self.scale_min(p).1 as i16);
        core::array::from_fn(|h| mins[h / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::tests::{check_against_candle, random_blocks};
    use candle_core::quantized::GgmlDType;

    #[test]
    fn q4_k_blocks_dequantise_as_ggml_and_multiply_on_every_path() {
        let (n, k) = (24, 512);
        let data = random_blocks(n * k / VALUES, BYTES, &[0, 2], 2);
        let q = q4k_from_q4_k(&data, n, k).expect("q4_k");
        check_against_candle(q, &data, GgmlDType::Q4K, n, k);
        assert!(q4k_from_q4_k(&data[..data.len() - 1], n, k).is_none());
        assert!(q4k_from_q4_k(&data, n, k - 32).is_none(), "rows of whole super-blocks only");
    }
}
