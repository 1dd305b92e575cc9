//! IEEE half-precision conversions for the weight scales (GGML stores them as f16; keeping them so halves the
//! bytes the scales take, and decoding is bound by memory traffic).

/// Decode a half-precision value (exact for every finite value; GGML scales are never inf/NaN): move exponent
/// and mantissa to their f32 places and rebias the exponent by adding 112 to it. A subnormal `h` (exponent 0)
/// becomes `2^-14 * (1 + m/1024) - 2^-14`: every operand and the result are normal f32 values. (Multiplying
/// the moved bits by 2^112 instead makes a subnormal f32 operand out of each subnormal `h`, and the CPU takes a
/// slow assist of a hundred cycles or more for it; small models' weight scales are often f16 subnormals.)
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let bits = ((h & 0x7fff) << 13) + (112 << 23);
    let subnormal = (f32::from_bits(bits + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    // Chosen with a mask, not a branch: whether a scale is subnormal follows no pattern a branch predictor
    // could learn, and the kernels convert one or two scales per 32 weights.
    let is_subnormal = ((h & 0x7c00 == 0) as u32).wrapping_neg();
    f32::from_bits((subnormal & is_subnormal) | (bits & !is_subnormal) | ((h & 0x8000) << 16))
}

/// The half-precision values in the low and high 16 bits of `pair`, on F16C's `vcvtph2ps`: what `f16_to_f32`
/// gives (the conversion is exact), in one instruction instead of a dozen. Only for code compiled with F16C:
/// the kernels of `KernelPath::Avx2` and `KernelPath::Vnni`, which need it of the CPU.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn f16_pair_f16c(pair: u32) -> (f32, f32) {
    let both: core::arch::x86_64::__m128;
    // Written out rather than as intrinsics: where only one of the pair is used, the compiler loaded the one
    // half-word with `vpinsrw` into whatever register it liked, which made each conversion wait on that
    // register's last write (in a kernel, the accumulator of the block before: a third slower). `vmovd` from a
    // general register depends on nothing else.
    // SAFETY: `vcvtph2ps` needs F16C; this is reached only from `kernel_avx2` and `kernel_vnni` (and a test
    // that checks F16C first), which are entered only on CPUs with it (`KernelPath::best`).
    unsafe {
        core::arch::asm!(
            "vmovd {v}, {bits:e}",
            "vcvtph2ps {v}, {v}",
            bits = in(reg) pair,
            v = out(xmm_reg) both,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    let both: [f32; 4] = pulp::cast(both);
    (both[0], both[1])
}

/// `v` rounded to the nearest half-precision value.
#[inline(always)]
pub(crate) fn to_half_precision(v: f32) -> f32 {
    f16_to_f32(f32_to_f16(v))
}

/// Round to the nearest half-precision value (ties to even; overflow gives infinity, NaN a quiet NaN).
pub(crate) fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let x = bits & 0x7fff_ffff;
    let h = if x >= 0x4780_0000 {
        // At least 65536 (rounds to infinity) or inf/NaN.
        if x > 0x7f80_0000 {
            0x7e00
        } else {
            0x7c00
        }
    } else if x < 0x3880_0000 {
        // Below 2^-14: a subnormal or zero result. Adding 0.5 aligns the 10 mantissa bits at the bottom of the
        // f32 mantissa, rounding to nearest even on the way.
        let magic = f32::from_bits(126 << 23);
        (f32::from_bits(x) + magic).to_bits().wrapping_sub(126 << 23) as u16
    } else {
        // Rebias the exponent and round the 13 dropped mantissa bits to nearest even.
        let odd = (x >> 13) & 1;
        ((x - (112 << 23) + 0xfff + odd) >> 13) as u16
    };
    sign | h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounding() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        for h in (0..0x7c00).chain(0x8000..0xfc00) {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
        // Ties to even, and the nearest value otherwise.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(0.1), 0x2e66);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(1e-9), 0);
    }

    /// F16C's conversion gives every finite half-precision value (subnormals and zeros included) as
    /// `f16_to_f32` does, in either half of the pair.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16c_converts_every_value_as_the_software_does() {
        #[target_feature(enable = "f16c")]
        fn check() {
            for h in (0..0x7c00u32).chain(0x8000..0xfc00) {
                // Another finite value: the other sign, some other mantissa bits.
                let other = h ^ 0x8123;
                let (lo, hi) = f16_pair_f16c(h | other << 16);
                assert_eq!(lo.to_bits(), f16_to_f32(h as u16).to_bits(), "{h:#x}");
                assert_eq!(hi.to_bits(), f16_to_f32(other as u16).to_bits(), "{other:#x}");
            }
        }
        if std::arch::is_x86_feature_detected!("f16c") {
            #[allow(unsafe_code)]
            // SAFETY: the CPU has F16C.
            unsafe {
                check()
            };
        }
    }
}
