//! Branch-free `exp`, `erf` and GELU in f32 that the compiler vectorises (the standard library's call libm per
//! value): the sentence encoders apply GELU to every value of their feed-forward layers and `exp` to every
//! attention score.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two, so that `x - n ln 2` loses no bits for the `n` that occur.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` within 2 units in the last place over the f32 range (inputs below -87 give about 1.6e-38 rather than
/// subnormals or 0; above 88, about 1.7e38 rather than infinity).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer (to nearest even), which then sits in the low mantissa bits —
    // no float-to-int conversion, which the compiler would do one lane at a time.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r for |r| <= ln2 / 2: Taylor to r^7 (the remainder is below 2e-9).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^n: `shifted`'s low bits hold n (two's complement), and ROUND's low 9 bits are zero, so the exponent
    // field is n + 127.
    p * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

/// The error function, within 5e-7 absolute (Abramowitz and Stegun 7.1.26 evaluated in f32).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152, 1.061_405_4];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU as BERT defines it: `x Φ(x) = x (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series (converges fast for |x| <= 3) or its continued-fraction tail, in f64.
    fn erf_reference(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …)))).
            let mut frac = a;
            for k in (1..60).rev() {
                frac = a + (k as f64 / 2.0) / frac;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / frac
        };
        value.copysign(x)
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = f64::from(x).exp();
            let got = f64::from(exp(x));
            let ulp = f64::from(f32::EPSILON) * exact;
            assert!((got - exact).abs() <= 2.0 * ulp, "exp({x}) = {got}, exact {exact}");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0) > 1e38 && exp(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_match_the_series() {
        let mut x = -6.0f32;
        while x < 6.0 {
            let exact = erf_reference(f64::from(x));
            assert!((f64::from(erf(x)) - exact).abs() < 5e-7, "erf({x}) = {}, exact {exact}", erf(x));
            let g = 0.5 * f64::from(x) * (1.0 + erf_reference(f64::from(x) / 2f64.sqrt()));
            assert!((f64::from(gelu(x)) - g).abs() < 1e-6 * (1.0 + g.abs()), "gelu({x})");
            x += 0.001_7;
        }
        assert!(erf(0.0).abs() < 1e-7);
        assert_eq!(gelu(0.0), 0.0);
    }
}
