//! Vector arithmetic for the dense index: validation, L2 normalisation, inner product, and the HNSW distance.

use hnsw_rs::prelude::Distance;

use crate::error::{RecallError, Result};

/// Inner product of two equally long slices, with eight independent accumulators so the compiler vectorises it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((sum, xi), yi) in acc.iter_mut().zip(x).zip(y) {
            *sum += xi * yi;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum += x * y;
    }
    sum
}

/// `vector` scaled to unit length, after checking its dimension and that every component is finite and the
/// vector is not zero.
pub(crate) fn normalized(vector: &[f32], dimension: usize) -> Result<Vec<f32>> {
    if vector.len() != dimension {
        return Err(RecallError::DimensionMismatch { expected: dimension, got: vector.len() });
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(RecallError::InvalidVector(format!("component {i} is {}", vector[i])));
    }
    let norm = dot(vector, vector).sqrt();
    if !norm.is_finite() || norm < f32::MIN_POSITIVE.sqrt() {
        return Err(RecallError::InvalidVector(format!("norm {norm} cannot be normalised")));
    }
    Ok(vector.iter().map(|x| x / norm).collect())
}

/// Cosine distance between unit vectors, `1 − a·b`, with the product clamped to [−1, 1] so rounding never makes
/// it negative. (hnsw_rs's own `DistDot` asserts `a·b ≤ 1` and panics when a vector meets itself with rounding.)
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        1.0 - dot(a, b).clamp(-1.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn normalisation_checks_its_input() {
        let v = normalized(&[3.0, 4.0], 2).expect("normalise");
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(matches!(normalized(&[1.0], 2), Err(RecallError::DimensionMismatch { expected: 2, got: 1 })));
        assert!(matches!(normalized(&[0.0, 0.0], 2), Err(RecallError::InvalidVector(_))));
        assert!(matches!(normalized(&[f32::NAN, 1.0], 2), Err(RecallError::InvalidVector(_))));
        assert!(UnitCosine.eval(&v, &v) >= 0.0);
    }
}
