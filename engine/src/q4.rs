//! A 4-bit weight matrix in GGML's Q4_1 layout (per 32 values: 16 bytes of nibbles, a scale `d` and an offset
//! `m`, value = `d * q + m`), kept as the file stores it so that decoding reads half the bytes of the 8-bit
//! format. The batched matmul quantises the input rows to 8 bits per 32-value block (scale `dx`, plus
//! `dx * sum(xq)` for the offset term) and computes
//! `sum_b d_b * dx_b * dot(q_b, xq_b) + m_b * dx_b * sum(xq_b)` with integer dot products per block.
//! Like the 8-bit kernel, each weight row is read once per call for every input row, and results for one input
//! row do not depend on the other rows in the batch.

use pulp::{Arch, Simd, WithSimd};

use crate::q8::{for_each_column_task, quantize_rows, BLOCK};

/// Bytes of nibbles per block.
const NIBBLES: usize = BLOCK / 2;

/// A `[n, k]` matrix of 4-bit values with a scale and an offset per 32 values of a row.
pub(crate) struct Q4Matrix {
    n: usize,
    k: usize,
    /// Row-major nibbles: byte `i` of a block holds value `i` (low nibble) and value `i + 16` (high nibble).
    qs: Vec<u8>,
    /// Per block `[d, m]`.
    dm: Vec<[f32; 2]>,
}

/// Decode an IEEE half-precision value (exact for every finite value; GGML scales are never inf/NaN).
fn f16_to_f32(h: u16) -> f32 {
    let mag = f32::from_bits(((h & 0x7fff) as u32) << 13) * f32::from_bits(0x7780_0000); // * 2^112
    if h & 0x8000 != 0 {
        -mag
    } else {
        mag
    }
}

impl Q4Matrix {
    /// From GGML Q4_1 blocks (20 bytes each: f16 `d`, f16 `m`, 16 bytes of nibbles) of a `[n, k]` matrix.
    pub(crate) fn from_q4_1(data: &[u8], n: usize, k: usize) -> Option<Q4Matrix> {
        Self::from_blocks(
            data,
            n,
            k,
            20,
            |b| (f16_to_f32(u16::from_le_bytes([b[0], b[1]])), f16_to_f32(u16::from_le_bytes([b[2], b[3]]))),
            4,
        )
    }

    /// From GGML Q4_0 blocks (18 bytes each: f16 `d`, 16 bytes of nibbles; value = `d * (q - 8)`).
    pub(crate) fn from_q4_0(data: &[u8], n: usize, k: usize) -> Option<Q4Matrix> {
        Self::from_blocks(
            data,
            n,
            k,
            18,
            |b| {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                (d, -8.0 * d)
            },
            2,
        )
    }

    fn from_blocks(
        data: &[u8],
        n: usize,
        k: usize,
        block_bytes: usize,
        scales: impl Fn(&[u8]) -> (f32, f32),
        header: usize,
    ) -> Option<Q4Matrix> {
        if !k.is_multiple_of(BLOCK) || data.len() != n * k / BLOCK * block_bytes {
            return None;
        }
        let mut qs = Vec::with_capacity(n * k / 2);
        let mut dm = Vec::with_capacity(n * k / BLOCK);
        for b in data.chunks_exact(block_bytes) {
            let (d, m) = scales(b);
            dm.push([d, m]);
            qs.extend_from_slice(&b[header..header + NIBBLES]);
        }
        Some(Q4Matrix { n, k, qs, dm })
    }

    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// Dequantised row `i` (used for embedding lookups).
    pub(crate) fn row(&self, i: usize, out: &mut Vec<f32>) {
        let blocks = self.k / BLOCK;
        let q = &self.qs[i * self.k / 2..(i + 1) * self.k / 2];
        let dm = &self.dm[i * blocks..(i + 1) * blocks];
        for (qb, &[d, m]) in q.chunks_exact(NIBBLES).zip(dm) {
            out.extend(qb.iter().map(|&v| (v & 15) as f32 * d + m));
            out.extend(qb.iter().map(|&v| (v >> 4) as f32 * d + m));
        }
    }

    /// `x @ self^T` for `m` rows of `x` (`[m, k]`); returns `[m, n]`.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let (xq, xd) = quantize_rows(x, m, k);
        // Per input block, `dx * sum(xq)`: the factor of the weight offset `m`.
        let xs: Vec<f32> = xq
            .chunks_exact(BLOCK)
            .zip(&xd)
            .map(|(q, &d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32)
            .collect();
        let arch = Arch::new();
        #[cfg(target_arch = "x86_64")]
        let v3 = pulp::x86::V3::try_new();
        for_each_column_task(n, m, k / 2, |col0, out| {
            let kernel = Kernel { w: self, xq: &xq, xd: &xd, xs: &xs, m, col0, out };
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = v3 {
                v3.vectorize(move || kernel_v3(v3, kernel));
                return;
            }
            arch.dispatch(kernel);
        })
    }
}

struct Kernel<'a> {
    w: &'a Q4Matrix,
    xq: &'a [i8],
    xd: &'a [f32],
    xs: &'a [f32],
    m: usize,
    col0: usize,
    /// Column-major results `[cols][m]`.
    out: &'a mut [f32],
}

impl WithSimd for Kernel<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Kernel { w, xq, xd, xs, m, col0, out } = self;
        let k = w.k;
        let blocks = k / BLOCK;
        for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
            let j = col0 + c;
            let wq = &w.qs[j * k / 2..(j + 1) * k / 2];
            let wdm = &w.dm[j * blocks..(j + 1) * blocks];
            for (r, o) in col_out.iter_mut().enumerate() {
                let rq = &xq[r * k..(r + 1) * k];
                let mut acc = 0f32;
                let mut macc = 0f32;
                for (b, (qb, &[d, mn])) in wq.chunks_exact(NIBBLES).zip(wdm).enumerate() {
                    let xb = &rq[b * BLOCK..(b + 1) * BLOCK];
                    let mut isum = 0i32;
                    for i in 0..NIBBLES {
                        isum += (qb[i] & 15) as i32 * xb[i] as i32 + (qb[i] >> 4) as i32 * xb[i + NIBBLES] as i32;
                    }
                    acc += isum as f32 * (d * xd[r * blocks + b]);
                    macc += mn * xs[r * blocks + b];
                }
                *o = acc + macc;
            }
        }
    }
}

/// The same computation with AVX2: nibbles are unsigned, so `maddubs` multiplies them with the signed inputs
/// directly (at most 2 * 15 * 127 per 16-bit lane, no saturation).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn kernel_v3(v: pulp::x86::V3, kernel: Kernel<'_>) {
    use core::arch::x86_64::{__m128i, __m256, __m256i};
    let Kernel { w, xq, xd, xs, m, col0, out } = kernel;
    let k = w.k;
    let blocks = k / BLOCK;
    let ones: __m256i = v.avx._mm256_set1_epi16(1);
    let low: __m256i = v.avx._mm256_set1_epi8(15);
    const ROWS: usize = 4;
    for (c, col_out) in out.chunks_exact_mut(m).enumerate() {
        let j = col0 + c;
        let wq = &w.qs[j * k / 2..(j + 1) * k / 2];
        let wdm = &w.dm[j * blocks..(j + 1) * blocks];
        // Up to four input rows share each loaded weight block; every row's arithmetic is the same as alone.
        for (g, group) in col_out.chunks_mut(ROWS).enumerate() {
            let r0 = g * ROWS;
            let nr = group.len();
            let mut acc: [__m256; ROWS] = [v.avx._mm256_setzero_ps(); ROWS];
            let mut macc = [0f32; ROWS];
            for (b, (qb, &[d, mn])) in wq.chunks_exact(NIBBLES).zip(wdm).enumerate() {
                let raw: [u8; NIBBLES] = qb.try_into().unwrap_or([0; NIBBLES]);
                let raw: __m128i = pulp::cast(raw);
                let both = v.avx._mm256_set_m128i(v.sse2._mm_srli_epi16::<4>(raw), raw);
                let wb = v.avx2._mm256_and_si256(both, low);
                for (i, (a, ma)) in acc.iter_mut().zip(macc.iter_mut()).enumerate().take(nr) {
                    let r = r0 + i;
                    let xo = r * k + b * BLOCK;
                    let xb: [i8; BLOCK] = xq[xo..xo + BLOCK].try_into().unwrap_or([0; BLOCK]);
                    let xb: __m256i = pulp::cast(xb);
                    let dot16 = v.avx2._mm256_maddubs_epi16(wb, xb);
                    let dot32 = v.avx2._mm256_madd_epi16(dot16, ones);
                    let scale = v.avx._mm256_set1_ps(d * xd[r * blocks + b]);
                    *a = v.fma._mm256_fmadd_ps(v.avx._mm256_cvtepi32_ps(dot32), scale, *a);
                    *ma += mn * xs[r * blocks + b];
                }
            }
            for ((o, a), ma) in group.iter_mut().zip(acc).zip(macc) {
                let lanes: [f32; 8] = pulp::cast(a);
                *o = (((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                    + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7])))
                    + ma;
            }
        }
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
            let h = |v: f32| -> [u8; 2] {
                // f16 bits of an exactly representable value.
                let bits = v.to_bits();
                let sign = ((bits >> 16) & 0x8000) as u16;
                if v == 0.0 {
                    return sign.to_le_bytes();
                }
                let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
                let mant = ((bits >> 13) & 0x3ff) as u16;
                (sign | ((exp as u16) << 10) | mant).to_le_bytes()
            };
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
    fn f16_decoding() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
    }

    #[test]
    fn matmul_matches_dequantised_and_is_batch_invariant() {
        let (n, k, m) = (100, 96, 5);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
        let q = Q4Matrix::from_q4_1(&encode_q4_1(&w), n, k).expect("q4");
        let mut dense = Vec::new();
        for j in 0..n {
            q.row(j, &mut dense);
        }
        assert!(dense.iter().zip(&w).all(|(a, b)| (a - b).abs() < 0.1));
        let y = q.matmul(&x, m);
        for r in 0..m {
            for j in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * dense[j * k + i]).sum();
                assert!((y[r * n + j] - exact).abs() < 0.05 * (1.0 + exact.abs()), "{r},{j}");
            }
            let alone = q.matmul(&x[r * k..(r + 1) * k], 1);
            assert_eq!(alone, y[r * n..(r + 1) * n].to_vec());
        }
    }
}
