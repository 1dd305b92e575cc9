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
    /// Panics unless the slices hold what the shapes say.
    pub(crate) fn product(&mut self, a: &[u16], b: &[u16], steps: usize, out: &mut [f32; BLOCK * BLOCK]) {
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
                    c0 = in(reg) out.as_mut_ptr(),
                    c1 = in(reg) out.as_mut_ptr().add(TILE * BLOCK),
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

/// Rows of `x` (`[rows, k]`, `k` a multiple of 32) in bf16 as [`Tiles::product`] reads them: for each block
/// of 32 rows, `k / 32` steps of 32 rows of 32 values; rows past `rows` up to the block are zero. `out` holds
/// `rows.div_ceil(32) * 32 * k` values.
#[inline(always)]
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

/// f32 to bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bf16 to f32 (exact).
#[cfg(test)]
#[inline(always)]
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to even (1).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn block_product_equals_the_sum_of_bf16_products() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        let steps = 3;
        let k = steps * DEPTH;
        let mut state = 7u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            to_bf16(((state >> 8) as f32 / (1 << 24) as f32 - 0.5) * 4.0)
        };
        let a: Vec<f32> = (0..BLOCK * k).map(|_| from_bf16(next())).collect();
        let mut packed_a = vec![0u16; BLOCK * k];
        pack_rows(&a, k, &mut packed_a);
        let w: Vec<Vec<u16>> = (0..BLOCK).map(|_| (0..k).map(|_| next()).collect()).collect();
        let rows: Vec<&[u16]> = w.iter().map(Vec::as_slice).collect();
        let mut b = vec![0u16; steps * 2 * TILE * DEPTH];
        for (s, chunk) in b.chunks_exact_mut(2 * TILE * DEPTH).enumerate() {
            pack_step(&rows, s, chunk);
        }
        let mut out = [0f32; BLOCK * BLOCK];
        let mut tiles = Tiles::configure();
        {
            // A nested guard neither reconfigures nor releases the outer one's tiles.
            let _inner = Tiles::configure();
        }
        tiles.product(&packed_a, &b, steps, &mut out);
        for i in 0..BLOCK {
            for j in 0..BLOCK {
                let exact: f64 = (0..k).map(|kk| f64::from(a[i * k + kk]) * f64::from(from_bf16(w[j][kk]))).sum();
                let got = f64::from(out[i * BLOCK + j]);
                assert!((got - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "({i}, {j}): {got} vs {exact}");
            }
        }
    }
}
