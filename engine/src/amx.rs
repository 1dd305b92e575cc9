//! Intel AMX tile matrix multiply in bf16 (`tdpbf16ps`), for CPUs that have it (Sapphire Rapids and later):
//! one instruction multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, about fifteen times
//! what the AVX-512 f32 FMAs of a core do per cycle. Linux lends the tile registers to a process that asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`): [`available`] asks once and says whether the CPU
//! has the instructions and the kernel said yes. Rust has no stable AMX intrinsics, so the one kernel here is
//! inline assembly.

/// Rows and f32 columns of a result tile; bf16 values per row of an input tile.
pub(crate) const TILE: usize = 16;
/// Depth of one tile product (bf16 values per input-tile row).
pub(crate) const DEPTH: usize = 32;
/// A block of results the kernel computes at once: 2 x 2 tiles.
pub(crate) const BLOCK: usize = 2 * TILE;

/// Whether this process may use [`Tiles`] (asks the kernel for the tile registers on first use).
pub(crate) fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

/// Whether the sentence encoders use the tiles: [`available`], unless `SHOAL_EMBED_F32` is set (to anything
/// but `0`), which keeps them in f32 everywhere.
pub(crate) fn wanted_for_encoders() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| available() && std::env::var("SHOAL_EMBED_F32").map_or(true, |v| v == "0"))
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    #[allow(unsafe_code)]
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes which extended register states this process may
    // use; it touches no memory of ours. A kernel without AMX support answers an error, which we read as "no".
    let answer = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    answer == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// bf16 values starting on a 64-byte boundary, as the tile loads want them (a tile row that straddles two cache
/// lines costs two loads: unaligned buffers ran the kernel at a third of its speed).
#[derive(Default)]
pub(crate) struct Packed {
    data: Vec<u16>,
    start: usize,
    len: usize,
}

impl Packed {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Packed {
        let mut p = Packed { data: Vec::new(), start: 0, len: 0 };
        p.reset(len);
        p
    }

    /// Make this `len` values long, keeping the allocation (and what it holds) where it is large enough, for
    /// a caller that writes every value it reads: a buffer kept from call to call is then neither zeroed nor
    /// faulted in again.
    pub(crate) fn fit(&mut self, len: usize) {
        if self.data.len() < len + 32 {
            self.reset(len);
        } else {
            self.len = len;
        }
    }

    /// The bytes this holds.
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.data.capacity() * 2
    }

    /// Make this `len` zeros, keeping the allocation where it is large enough.
    pub(crate) fn reset(&mut self, len: usize) {
        if self.data.len() < len + 32 {
            self.data = vec![0u16; len + 32];
            // `align_offset` counts elements: at most 31 u16s to the next 64-byte boundary.
            self.start = self.data.as_ptr().align_offset(64).min(32);
        } else {
            self.data[self.start..self.start + len].fill(0);
        }
        self.len = len;
    }
}

impl std::ops::Deref for Packed {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        &self.data[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Packed {
    fn deref_mut(&mut self) -> &mut [u16] {
        &mut self.data[self.start..self.start + self.len]
    }
}

/// A 32 x 32 block of f32 results, on a 64-byte boundary.
#[repr(C, align(64))]
pub(crate) struct Block(pub [f32; BLOCK * BLOCK]);

impl Block {
    pub(crate) fn new() -> Block {
        Block([0.0; BLOCK * BLOCK])
    }
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = TILE as u8;
        t += 1;
    }
    TileConfig(c)
};

/// The tile registers configured on this thread for [`Tiles::product`]; released when the last guard of the
/// thread is dropped. Not `Send`: the configuration belongs to the thread that made it.
pub(crate) struct Tiles {
    _thread_bound: std::marker::PhantomData<*const ()>,
}

thread_local! {
    /// Live `Tiles` guards on this thread (only the first configures, only the last releases).
    static GUARDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Tiles {
    /// Configure the tiles on this thread (all eight 16 rows of 64 bytes). Panics unless [`available`].
    pub(crate) fn configure() -> Tiles {
        assert!(available(), "AMX is not available");
        if GUARDS.get() == 0 {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            #[allow(unsafe_code)]
            // SAFETY: `available` proved AMX-TILE and the kernel's permission; `ldtilecfg` reads the 64 bytes of
            // `CONFIG` and sets this thread's tile configuration, which no compiled code uses.
            unsafe {
                std::arch::asm!("ldtilecfg [{config}]", config = in(reg) CONFIG.0.as_ptr(), options(nostack));
            }
        }
        GUARDS.set(GUARDS.get() + 1);
        Tiles { _thread_bound: std::marker::PhantomData }
    }

    /// A 32 x 32 block of `A · B` in f32 (`out`, row-major, 32 values a row), for `A`: `steps` packed steps
    /// of 32 rows of bf16 (see [`pack_rows`]), and `B`: `steps` packed steps of `b`, each two 16-column tiles
    /// of 16 rows of (k, k + 1) pairs (see [`pack_step`]). Both are read front to back, which the hardware
    /// prefetchers follow.
    ///
    /// Panics unless the slices hold what the shapes say. (Only the tests use plain bf16 products now: the
    /// dense layers use [`Self::product_split`] and attention runs in f32.)
    #[cfg(test)]
    pub(crate) fn product(&mut self, a: &[u16], b: &[u16], steps: usize, out: &mut Block) {
        assert!(steps > 0);
        assert!(a.len() >= steps * BLOCK * DEPTH, "A holds fewer steps than asked");
        assert!(b.len() >= steps * 2 * TILE * DEPTH, "B holds fewer steps than asked");
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            #[allow(unsafe_code)]
            // SAFETY: `self` proves this thread's tiles are configured (AMX present, permitted, 16 x 64-byte
            // tiles). The asserts above bound every access: per step, two 1 KiB tiles from `a` and two from `b`
            // (16 rows of 64 bytes each); the stores write 32 rows of 128 bytes, exactly `out`. The compiler never uses the tile
            // registers, so nothing else observes them.
            unsafe {
                std::arch::asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "2:",
                    "tileloadd tmm4, [{a} + {stride} * 1]",
                    "tileloadd tmm6, [{b} + {stride} * 1]",
                    "tileloadd tmm5, [{a} + {stride} * 1 + 1024]",
                    "tileloadd tmm7, [{b} + {stride} * 1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a}, 2048",
                    "add {b}, 2048",
                    "dec {steps}",
                    "jnz 2b",
                    "tilestored [{c0} + {sc} * 1], tmm0",
                    "tilestored [{c0} + {sc} * 1 + 64], tmm1",
                    "tilestored [{c1} + {sc} * 1], tmm2",
                    "tilestored [{c1} + {sc} * 1 + 64], tmm3",
                    a = inout(reg) a.as_ptr() => _,
                    b = inout(reg) b.as_ptr() => _,
                    stride = in(reg) 64usize,
                    steps = inout(reg) steps => _,
                    c0 = in(reg) out.0.as_mut_ptr(),
                    c1 = in(reg) out.0.as_mut_ptr().add(TILE * BLOCK),
                    sc = in(reg) BLOCK * 4,
                    options(nostack),
                );
            }
        }
    }

    /// [`Tiles::product`] of `A = A_hi + A_lo` and `B = B_hi + B_lo` (each pair packed as `product` reads
    /// them, the `_lo` parts the residuals of the `_hi` ones, see [`residual`]) as
    /// `A_hi B_hi + A_lo B_hi + A_hi B_lo`: inputs and weights then carry 16 bits of mantissa instead of 8
    /// (the products of two residuals, below 2^-16 relative, are left out), for three times the tile products.
    /// Plain bf16 moved all-MiniLM-L6-v2's reference cosines by up to 1e-3; this keeps them within 1e-4.
    /// With `accumulate` the products are added to `out` (a sum over more steps in pieces whose operands stay
    /// in the cache).
    pub(crate) fn product_split(
        &mut self,
        a: [&[u16]; 2],
        b: [&[u16]; 2],
        steps: usize,
        accumulate: bool,
        out: &mut Block,
    ) {
        assert!(steps > 0);
        assert!(a.iter().all(|a| a.len() >= steps * BLOCK * DEPTH), "A holds fewer steps than asked");
        assert!(b.iter().all(|b| b.len() >= steps * 2 * TILE * DEPTH), "B holds fewer steps than asked");
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            #[allow(unsafe_code)]
            // SAFETY: as in `product`, with two A and two B operands read the same way, each bounded by the
            // asserts above; with `accumulate` the result tiles are first loaded from `out` (its 32 rows of 128
            // bytes, as they are stored). The tile registers keep their contents between the two asm blocks:
            // no compiled code uses them.
            unsafe {
                if accumulate {
                    std::arch::asm!(
                        "tileloadd tmm0, [{c0} + {sc} * 1]",
                        "tileloadd tmm1, [{c0} + {sc} * 1 + 64]",
                        "tileloadd tmm2, [{c1} + {sc} * 1]",
                        "tileloadd tmm3, [{c1} + {sc} * 1 + 64]",
                        c0 = in(reg) out.0.as_ptr(),
                        c1 = in(reg) out.0.as_ptr().add(TILE * BLOCK),
                        sc = in(reg) BLOCK * 4,
                        options(nostack, readonly),
                    );
                } else {
                    std::arch::asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                }
                std::arch::asm!(
                    "2:",
                    "tileloadd tmm4, [{a_lo} + {stride} * 1]",
                    "tileloadd tmm6, [{b_hi} + {stride} * 1]",
                    "tileloadd tmm5, [{a_lo} + {stride} * 1 + 1024]",
                    "tileloadd tmm7, [{b_hi} + {stride} * 1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm4, [{a_hi} + {stride} * 1]",
                    "tileloadd tmm5, [{a_hi} + {stride} * 1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm6, [{b_lo} + {stride} * 1]",
                    "tileloadd tmm7, [{b_lo} + {stride} * 1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a_hi}, 2048",
                    "add {a_lo}, 2048",
                    "add {b_hi}, 2048",
                    "add {b_lo}, 2048",
                    "dec {steps}",
                    "jnz 2b",
                    "tilestored [{c0} + {sc} * 1], tmm0",
                    "tilestored [{c0} + {sc} * 1 + 64], tmm1",
                    "tilestored [{c1} + {sc} * 1], tmm2",
                    "tilestored [{c1} + {sc} * 1 + 64], tmm3",
                    a_hi = inout(reg) a[0].as_ptr() => _,
                    a_lo = inout(reg) a[1].as_ptr() => _,
                    b_hi = inout(reg) b[0].as_ptr() => _,
                    b_lo = inout(reg) b[1].as_ptr() => _,
                    stride = in(reg) 64usize,
                    steps = inout(reg) steps => _,
                    c0 = in(reg) out.0.as_mut_ptr(),
                    c1 = in(reg) out.0.as_mut_ptr().add(TILE * BLOCK),
                    sc = in(reg) BLOCK * 4,
                    options(nostack),
                );
            }
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        let left = GUARDS.get() - 1;
        GUARDS.set(left);
        if left == 0 {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            #[allow(unsafe_code)]
            // SAFETY: `tilerelease` returns this thread's tiles to their initial state; no guard is left on the
            // thread to use them.
            unsafe {
                std::arch::asm!("tilerelease", options(nostack, nomem));
            }
        }
    }
}

/// Pack step `s` (inputs `32 s .. 32 s + 32`) of 32 weight rows (`rows[j]`: the weights of output column `j`)
/// into `out` (1024 values): two 16-column tiles, each 16 rows of `(k, k + 1)` pairs for its 16 columns.
pub(crate) fn pack_step(rows: &[&[u16]], s: usize, out: &mut [u16]) {
    debug_assert_eq!(rows.len(), BLOCK);
    for half in 0..2 {
        for r in 0..TILE {
            for j in 0..TILE {
                for p in 0..2 {
                    out[half * TILE * DEPTH + r * DEPTH + j * 2 + p] = rows[half * TILE + j][s * DEPTH + 2 * r + p];
                }
            }
        }
    }
}

/// Where [`pack_step`]'s layout keeps the weight of output column `column` for input `input`, in a matrix of
/// `steps` steps per 32-column block.
#[cfg(test)]
pub(crate) fn b_index(column: usize, input: usize, steps: usize) -> usize {
    let (block, half, j) = (column / BLOCK, (column % BLOCK) / TILE, column % TILE);
    let (s, r, p) = (input / DEPTH, (input % DEPTH) / 2, input % 2);
    (block * steps + s) * 2 * TILE * DEPTH + half * TILE * DEPTH + r * DEPTH + j * 2 + p
}

/// Rows of `x` (`[rows, k]`, `k` a multiple of 32) in bf16 as [`Tiles::product`] reads them: for each block
/// of 32 rows, `k / 32` steps of 32 rows of 32 values; rows past `rows` up to the block are zero. `out` holds
/// `rows.div_ceil(32) * 32 * k` values.
#[cfg(test)]
pub(crate) fn pack_rows(x: &[f32], k: usize, out: &mut [u16]) {
    for (r, row) in x.chunks_exact(k).enumerate() {
        let block = &mut out[(r / BLOCK) * BLOCK * k..];
        for (s, values) in row.chunks_exact(DEPTH).enumerate() {
            let at = s * BLOCK * DEPTH + (r % BLOCK) * DEPTH;
            for (o, &v) in block[at..at + DEPTH].iter_mut().zip(values) {
                *o = to_bf16(v);
            }
        }
    }
}

/// [`pack_rows`] of the values of `x` rounded to bf16 (`hi`) and of what that rounding lost (`lo`).
#[inline(always)]
pub(crate) fn pack_rows_split(x: &[f32], k: usize, hi: &mut [u16], lo: &mut [u16]) {
    for (r, row) in x.chunks_exact(k).enumerate() {
        let at = (r / BLOCK) * BLOCK * k;
        let (hi, lo) = (&mut hi[at..], &mut lo[at..]);
        for (s, values) in row.chunks_exact(DEPTH).enumerate() {
            let at = s * BLOCK * DEPTH + (r % BLOCK) * DEPTH;
            for ((h, l), &v) in hi[at..at + DEPTH].iter_mut().zip(&mut lo[at..at + DEPTH]).zip(values) {
                *h = to_bf16(v);
                *l = to_bf16(residual(v));
            }
        }
    }
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// What `x` loses rounded to bf16: `x = bf16(x) + residual(x)`, and `bf16(residual(x))` holds 8 more bits.
#[inline(always)]
pub(crate) fn residual(x: f32) -> f32 {
    x - from_bf16(to_bf16(x))
}

/// bf16 to f32 (exact).
#[inline(always)]
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_index_is_where_pack_step_puts_a_weight() {
        let (columns, inputs) = (64, 96);
        let steps = inputs / DEPTH;
        let weights: Vec<Vec<u16>> =
            (0..columns).map(|c| (0..inputs).map(|i| (c * inputs + i) as u16).collect()).collect();
        let mut packed = vec![0u16; columns * inputs];
        for (cb, block) in packed.chunks_exact_mut(steps * 2 * TILE * DEPTH).enumerate() {
            let rows: Vec<&[u16]> = weights[cb * BLOCK..(cb + 1) * BLOCK].iter().map(Vec::as_slice).collect();
            for (s, out) in block.chunks_exact_mut(2 * TILE * DEPTH).enumerate() {
                pack_step(&rows, s, out);
            }
        }
        for (c, row) in weights.iter().enumerate() {
            for (i, &w) in row.iter().enumerate() {
                assert_eq!(packed[b_index(c, i, steps)], w, "column {c}, input {i}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to even (1).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// `n` values in [-2, 2) from the sgemm tests' seeded generator (doubled, exactly).
    fn random(n: usize, seed: u32) -> Vec<f32> {
        crate::sgemm::tests::random(n, seed).into_iter().map(|v| v * 2.0).collect()
    }

    /// Weight rows (one per output column, 32 of them) packed as B.
    fn pack_b(rows: &[Vec<u16>], steps: usize) -> Packed {
        let rows: Vec<&[u16]> = rows.iter().map(Vec::as_slice).collect();
        let mut b = Packed::zeroed(steps * 2 * TILE * DEPTH);
        for (s, chunk) in b.chunks_exact_mut(2 * TILE * DEPTH).enumerate() {
            pack_step(&rows, s, chunk);
        }
        b
    }

    #[test]
    fn block_product_equals_the_sum_of_bf16_products() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        let steps = 3;
        let k = steps * DEPTH;
        let a: Vec<f32> = random(BLOCK * k, 7).into_iter().map(|v| from_bf16(to_bf16(v))).collect();
        let mut packed_a = Packed::zeroed(BLOCK * k);
        pack_rows(&a, k, &mut packed_a);
        let w: Vec<Vec<u16>> =
            random(BLOCK * k, 8).chunks_exact(k).map(|r| r.iter().map(|&v| to_bf16(v)).collect()).collect();
        let b = pack_b(&w, steps);
        let mut out = Block::new();
        let mut tiles = Tiles::configure();
        {
            // A nested guard neither reconfigures nor releases the outer one's tiles.
            let _inner = Tiles::configure();
        }
        tiles.product(&packed_a, &b, steps, &mut out);
        for (i, row) in out.0.chunks_exact(BLOCK).enumerate() {
            for (got, wj) in row.iter().zip(&w) {
                let exact: f64 = (0..k).map(|kk| f64::from(a[i * k + kk]) * f64::from(from_bf16(wj[kk]))).sum();
                assert!((f64::from(*got) - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "({i}): {got} vs {exact}");
            }
        }
    }

    /// The split product in pieces (the second accumulating onto the first) is the f32 product to about 16
    /// bits, where plain bf16 keeps about 8.
    #[test]
    fn split_products_in_pieces_approach_f32() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        let steps = 4;
        let k = steps * DEPTH;
        let a = random(BLOCK * k, 3);
        let w: Vec<Vec<f32>> = random(BLOCK * k, 4).chunks_exact(k).map(<[f32]>::to_vec).collect();
        let (mut a_hi, mut a_lo) = (Packed::zeroed(BLOCK * k), Packed::zeroed(BLOCK * k));
        pack_rows_split(&a, k, &mut a_hi, &mut a_lo);
        let pack = |part: fn(f32) -> u16| {
            let rounded: Vec<Vec<u16>> = w.iter().map(|r| r.iter().map(|&v| part(v)).collect()).collect();
            pack_b(&rounded, steps)
        };
        let (b_hi, b_lo) = (pack(to_bf16), pack(|v| to_bf16(residual(v))));
        let mut tiles = Tiles::configure();
        let (mut split, mut plain) = (Block::new(), Block::new());
        let half = steps / 2;
        let (a_step, b_step) = (BLOCK * DEPTH, 2 * TILE * DEPTH);
        tiles.product_split([&a_hi, &a_lo], [&b_hi, &b_lo], half, false, &mut split);
        let (a2, b2) = (half * a_step, half * b_step);
        tiles.product_split([&a_hi[a2..], &a_lo[a2..]], [&b_hi[b2..], &b_lo[b2..]], steps - half, true, &mut split);
        tiles.product(&a_hi, &b_hi, steps, &mut plain);
        let (mut worst_split, mut worst_plain) = (0f64, 0f64);
        for (i, (srow, prow)) in split.0.chunks_exact(BLOCK).zip(plain.0.chunks_exact(BLOCK)).enumerate() {
            for ((s, p), wj) in srow.iter().zip(prow).zip(&w) {
                let exact: f64 = (0..k).map(|kk| f64::from(a[i * k + kk]) * f64::from(wj[kk])).sum();
                let scale: f64 = (0..k).map(|kk| f64::from(a[i * k + kk] * wj[kk]).abs()).sum();
                worst_split = worst_split.max((f64::from(*s) - exact).abs() / scale);
                worst_plain = worst_plain.max((f64::from(*p) - exact).abs() / scale);
            }
        }
        assert!(worst_split < 2e-5, "split error {worst_split}");
        assert!(worst_plain > 1e-4, "plain bf16 error {worst_plain} (the test would not see a lost half)");
    }
}
