//! Wire types for models split across nodes (pipeline parallelism): a replica's place in its
//! chain of layer-range stages, and the frames that carry activations from stage to stage.
//!
//! The first stage (the head) holds the request and drives decoding. Every step it runs its
//! layers over a micro-batch and sends the hidden states to the next stage in a
//! [`StageForward`]; each stage runs its layers and sends the result onwards; the last stage
//! samples one token per sequence and the tokens travel back along the same streams as a
//! [`StageResult`]. Activations never pass through a coordinator.

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

use crate::serving::SamplingSettings;

/// A replica's part of a pipeline.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StageRole {
    /// Which chain of the deployment (one chain = one complete copy of the model).
    pub chain: u32,
    /// Position in the chain, 0 = head.
    pub index: u32,
    /// Stages in the chain.
    pub count: u32,
    /// Transformer layers `[layer_start, layer_end)`.
    pub layer_start: u32,
    pub layer_end: u32,
    /// Where activations go next; `None` for the last stage.
    pub next: Option<StageHop>,
}

/// The next stage of a chain.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StageHop {
    pub placement_id: String,
    pub node: String,
    /// The node's QUIC address.
    pub address: String,
}

/// Element types a tensor frame may carry.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDtype {
    F32,
    F16,
    Bf16,
}

impl TensorDtype {
    pub fn size(self) -> usize {
        match self {
            TensorDtype::F32 => 4,
            TensorDtype::F16 | TensorDtype::Bf16 => 2,
        }
    }
}

/// A dense row-major tensor: element type, shape and little-endian bytes.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct TensorFrame {
    pub dtype: TensorDtype,
    pub shape: Vec<u32>,
    pub data: Vec<u8>,
}

impl TensorFrame {
    /// A 2-D f32 tensor `[rows, cols]`.
    pub fn from_f32(rows: usize, cols: usize, values: &[f32]) -> TensorFrame {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        TensorFrame { dtype: TensorDtype::F32, shape: vec![rows as u32, cols as u32], data }
    }

    /// A 2-D tensor `[rows, cols]` in `format`: f32 as is, or each value rounded to the
    /// nearest bf16 (ties to even; NaN stays NaN), half the bytes.
    pub fn encode(format: ActivationFormat, rows: usize, cols: usize, values: &[f32]) -> TensorFrame {
        match format {
            ActivationFormat::F32 => TensorFrame::from_f32(rows, cols, values),
            ActivationFormat::Bf16 => {
                let mut data = Vec::with_capacity(values.len() * 2);
                for v in values {
                    data.extend_from_slice(&f32_to_bf16(*v).to_le_bytes());
                }
                TensorFrame { dtype: TensorDtype::Bf16, shape: vec![rows as u32, cols as u32], data }
            }
        }
    }

    /// Elements the shape describes.
    pub fn elements(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
    }

    /// Checks that the bytes match the shape and that it is a 2-D tensor with `cols` columns.
    pub fn check_matrix(&self, cols: usize) -> Result<usize, String> {
        let [rows, c] = self.shape[..] else {
            return Err(format!("expected a 2-D tensor, got shape {:?}", self.shape));
        };
        if c as usize != cols {
            return Err(format!("expected {cols} columns, got shape {:?}", self.shape));
        }
        let want = self.elements().and_then(|n| n.checked_mul(self.dtype.size()));
        if want != Some(self.data.len()) {
            return Err(format!(
                "tensor of shape {:?} ({:?}) needs {:?} bytes, the frame has {}",
                self.shape,
                self.dtype,
                want,
                self.data.len()
            ));
        }
        Ok(rows as usize)
    }

    /// The values as f32 (f16 and bf16 are widened). Call [`TensorFrame::check_matrix`] first.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            TensorDtype::F32 => {
                self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            TensorDtype::F16 => {
                self.data.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()
            }
            TensorDtype::Bf16 => self
                .data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
        }
    }
}

/// How a stage sends activations to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationFormat {
    /// Bit-exact: a split model answers exactly like the whole model.
    #[default]
    F32,
    /// Half the bytes per hop; each value keeps 8 bits of mantissa, so greedy output may
    /// drift from the whole model's after some tokens.
    Bf16,
}

/// The bf16 nearest to `v` (round to nearest, ties to even); NaN stays a (quiet) NaN.
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((113 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// What the last stage needs to sample a sequence: sent with its first rows.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct SequenceStart {
    pub sampling: SamplingSettings,
    /// Tokens already generated for this request (a resumed request): they count for penalties.
    pub history: Vec<u32>,
}

/// One sequence's rows in a [`StageForward`].
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct StageRows {
    /// Unique within the chain (chosen by the head).
    pub sequence: u64,
    /// Position of the first row; must equal the tokens the stage already holds for it.
    pub start: u32,
    pub rows: u32,
    /// Sample a token after these rows (false in the middle of a chunked prompt).
    pub sample: bool,
    /// Present on the first rows of a sequence (`start == 0`).
    pub begin: Option<SequenceStart>,
}

/// Activations for one micro-batch, to the stage `placement_id`.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq)]
pub struct StageForward {
    pub placement_id: String,
    pub sequences: Vec<StageRows>,
    /// `[sum(rows), hidden]`, the sequences' rows in order.
    pub hidden: TensorFrame,
    /// How long the receiver may take to answer, including the stages after it (ms). Each
    /// stage gives the next a little less, so the stage that stalls is the one named.
    pub budget_ms: u32,
}

/// The answer to a [`StageForward`] once the last stage has sampled.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct StageResult {
    /// `(sequence, token)` for every sequence with `sample`.
    pub tokens: Vec<(u64, u32)>,
    /// Time the frame spent at the stages after the sender (queued and computing), summed (µs).
    pub compute_us: u64,
    /// Transport time of the hops after the sender, summed (µs).
    pub hops_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_frames_round_to_nearest_even_within_half_a_unit() {
        let exact = [1.0f32, -2.5, 0.0, -0.0, 3.0, f32::INFINITY, f32::NEG_INFINITY];
        let t = TensorFrame::encode(ActivationFormat::Bf16, 1, exact.len(), &exact);
        assert_eq!(t.dtype, TensorDtype::Bf16);
        assert_eq!(t.check_matrix(exact.len()), Ok(1));
        assert_eq!(t.data.len(), exact.len() * 2);
        let back = t.to_f32();
        for (a, b) in exact.iter().zip(&back) {
            assert_eq!(a.to_bits(), b.to_bits(), "{a} came back as {b}");
        }
        // Halfway cases go to the even mantissa.
        let up = 2f32.powi(-7);
        assert_eq!(f32::from_bits((f32_to_bf16(1.0 + up / 2.0) as u32) << 16), 1.0);
        assert_eq!(f32::from_bits((f32_to_bf16(1.0 + 3.0 * up / 2.0) as u32) << 16), 1.0 + 2.0 * up);
        assert_eq!(f32::from_bits((f32_to_bf16(-(1.0 + 3.0 * up / 2.0)) as u32) << 16), -(1.0 + 2.0 * up));
        // Just past halfway goes up.
        assert_eq!(f32::from_bits((f32_to_bf16(1.0 + up / 2.0 + up / 64.0) as u32) << 16), 1.0 + up);
        assert!(f32::from_bits((f32_to_bf16(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(f32::from_bits((f32_to_bf16(f32::MAX) as u32) << 16), f32::INFINITY);
        // Any normal value comes back within half a unit in the last place (bf16 keeps 8
        // significant bits: at most 2^-8 of the value).
        let mut x = 0x1234_5678u32;
        let values: Vec<f32> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 - 0.5) * 2f32.powi((x % 40) as i32 - 20)
            })
            .collect();
        let t = TensorFrame::encode(ActivationFormat::Bf16, 100, 100, &values);
        for (v, b) in values.iter().zip(t.to_f32()) {
            assert!((v - b).abs() <= v.abs() * 2f32.powi(-8), "{v} came back as {b}");
        }
        // f32 frames are unchanged by `encode`.
        assert_eq!(TensorFrame::encode(ActivationFormat::F32, 100, 100, &values).to_f32(), values);
    }

    #[test]
    fn f32_round_trip_and_shape_checks() {
        let t = TensorFrame::from_f32(2, 3, &[1.0, -2.5, 3.0, 0.0, 1e-7, -0.0]);
        assert_eq!(t.check_matrix(3), Ok(2));
        assert_eq!(t.to_f32(), vec![1.0, -2.5, 3.0, 0.0, 1e-7, -0.0]);
        assert!(t.check_matrix(4).expect_err("4 columns").contains("4 columns"));
        let mut short = t.clone();
        short.data.pop();
        assert!(short.check_matrix(3).expect_err("short").contains("bytes"));
        let mut huge = t.clone();
        huge.shape = vec![u32::MAX, u32::MAX, u32::MAX];
        assert!(huge.check_matrix(3).is_err());
    }

    #[test]
    fn half_precision_widens() {
        let t =
            TensorFrame { dtype: TensorDtype::F16, shape: vec![1, 3], data: vec![0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00] };
        assert_eq!(t.check_matrix(3), Ok(1));
        let v = t.to_f32();
        assert_eq!(&v[..2], &[1.0, -2.0]);
        assert!((v[2] - 5.960_464_5e-8).abs() < 1e-12);
        let b = TensorFrame { dtype: TensorDtype::Bf16, shape: vec![1, 1], data: vec![0x80, 0x3f] };
        assert_eq!(b.to_f32(), vec![1.0]);
    }
}
