//! CPU feature dispatch. Hot loops are written as plain Rust that LLVM vectorizes, compiled
//! three times (AVX-512, AVX2+FMA, baseline) and picked at run time, so a portable binary
//! still gets wide vectors without `-C target-cpu=native`. Used by the runtime's element-wise
//! loops and by the codecs' fused dot products (neither layer imports the other for it).

/// Define `fn $name` (with the given visibility) that dispatches to the best compiled copy of
/// `$body`.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the features were detected on this CPU.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use multiversion;

/// Whether `f32::mul_add` is one instruction on this CPU. On x86 before FMA (Haswell, 2013)
/// it is a library call, and the fused dot kernels, which accumulate with it, would lose to
/// the tiled GEMM; the runtime then keeps the GEMM for one-row products too.
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// How far ahead of its reads a matrix-vector kernel asks for weights. On this project's VM
/// the hardware prefetchers leave a generation step's stream of weights waiting on memory:
/// asking a page ahead took the 7B-shaped layer's Q8_0 steps from 57 to ~95 tokens/s (1024
/// bytes: 77, 512: 67; 4 to 16 KB all alike) and small-llama's (in L3) from 782 to ~840.
pub const PREFETCH_AHEAD: usize = 4096;

/// Asks the CPU to fetch the cache lines of the `bytes` bytes at `p + PREFETCH_AHEAD` (a hint:
/// addresses past the end of the data are harmless, a prefetch never faults).
#[inline(always)]
pub fn prefetch_ahead(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = p.wrapping_add(PREFETCH_AHEAD);
        let mut off = 0;
        while off < bytes {
            // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off) as *const i8) };
            off += 64;
        }
        if !bytes.is_multiple_of(64) {
            // The block's last line when it does not start one.
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(bytes - 1) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}
