/* The vector helpers every native CPU kernel uses: one float vector type of LANES lanes (16 under
 * AVX-512, 8 otherwise), unaligned loads and stores, broadcasts, a lane sum and exp.
 *
 * GCC/Clang vector extensions, so the arithmetic is portable C; the few operations the extensions
 * compile badly (a broadcast from memory, a tree sum) use x86 intrinsics. Included by each
 * C file in csrc/; cpu_native.py keys its build cache on this file too. */

#ifndef SGC_SIMD_H
#define SGC_SIMD_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif

typedef float vf __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));

static inline vf load_v(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store_v(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* x in every lane, from a register (fine outside inner loops; see broadcast). */
static inline vf splat(float x) { return (vf){0} + x; }

/* *p in every lane as a broadcast load: a load-port uop. Broadcasting a register takes the port of
 * the second FMA unit, which made the GEMM tile 1/3 slower. */
static inline vf broadcast(const float *p) {
#if LANES == 16
    return (vf)_mm512_set1_ps(*p);
#else
    return (vf)_mm256_broadcast_ss(p);
#endif
}

/* The lanes' sum as a tree of halvings. A lane-by-lane scalar loop is one chain of dependent adds
 * (~64 cycles of latency at 16 lanes): measured, it made a 32-request decode's attention
 * compute-bound. */
static inline float sum_v(vf v) {
#if LANES == 16
    return _mm512_reduce_add_ps((__m512)v);
#else
    const __m256 x = (__m256)v;
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
#endif
}

/* Lanes of b where mask is set (all ones), of a elsewhere. */
static inline vf select_v(vi mask, vf a, vf b) { return (vf)(((vi)a & ~mask) | ((vi)b & mask)); }

/* exp(x), all lanes: Cody-Waite reduction by ln 2 (round to nearest with the 1.5 * 2^23 trick),
 * then a degree-6 polynomial, ~1 ulp; x clamped to [-87.3, 88.7], beyond which float exp is 0 or
 * overflows in effect (softmax weights and SiLU come out the same). 2^n is applied in two halves
 * so that n = 128 does not overflow the exponent field. Plain arithmetic: no libm, no -ffast-math. */
static inline vf exp_v(vf x) {
    const vf lo = splat(-87.3f), hi = splat(88.7f);
    x = select_v(x < lo, x, lo);
    x = select_v(x > hi, x, hi);
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    vf n = (x * 1.44269504088896341f + round_magic) - round_magic;
    vf r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    vf p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const vi n_int = __builtin_convertvector(n, vi);
    const vi n_lo = n_int >> 1, n_hi = n_int - (n_int >> 1);
    return (p * (vf)((n_lo + 127) << 23)) * (vf)((n_hi + 127) << 23);
}

#endif
