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
