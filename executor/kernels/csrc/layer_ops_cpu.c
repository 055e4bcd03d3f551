/* The decoder layer's element-wise work on CPU, fused: residual add + RMSNorm, rotary, SiLU * up.
 *
 * In torch each of these is 2-5 ops (RMSNorm five, rotary four, the residual add and SiLU * mul
 * one each), and at decode batch sizes an op over a few rows of 576 floats costs its dispatch and
 * its OpenMP fork/join, not its arithmetic: ~13 ms of a 32-row step of a 30-layer model
 * (docs/performance.md, "Fused layer ops"). Here each is one call that passes over a row once while
 * it sits in L1. Small batches run on the calling thread (a parallel region costs more than the
 * work); prefill-sized inputs split rows across the OpenMP threads torch uses.
 *
 * Rounding: the rotary and the residual add do exactly torch's per-element operations (no FMA
 * contraction, see the pragma), so they are bit-identical to the torch path. RMSNorm's sum of
 * squares and SiLU's exp differ from torch's vectorized kernels in the last bit at times
 * (summation order, a ~1 ulp exp); the greedy-parity tests against HF hold either way.
 */

#pragma GCC optimize("fp-contract=off")

#include <math.h>

#include "kernels.h"
#include "simd.h"

/* Below this many floats a call runs on the calling thread: a parallel region's fork and join
 * (~5-20 us on two cores) is more than the work. */
#define PARALLEL_MIN_FLOATS (64 * 1024)

/* Sum of squares of one row, LANES x 2 partial sums then a fixed tree: deterministic for a given
 * row length, independent of the batch it came in (no row sees another's data). */
static inline float sum_squares(const float *x, int64_t n) {
    vf a = {0}, b = {0};
    int64_t i = 0;
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        const vf x0 = load_v(x + i), x1 = load_v(x + i + LANES);
        a += x0 * x0;
        b += x1 * x1;
    }
    for (; i + LANES <= n; i += LANES) {
        const vf x0 = load_v(x + i);
        a += x0 * x0;
    }
    a += b;
    float s = 0.0f;
    for (int k = 0; k < LANES; k++) s += a[k];
    for (; i < n; i++) s += x[i] * x[i];
    return s;
}

/* out = x * rsqrt(mean(x^2) + eps) * w, HF's order of operations (x times the scale, then w). */
static inline void norm_row(const float *x, const float *w, int64_t dim, float eps, float *out) {
    const float mean = sum_squares(x, dim) / (float)dim;
    const float scale = 1.0f / sqrtf(mean + eps);
    int64_t i = 0;
    const vf s = splat(scale);
    for (; i + LANES <= dim; i += LANES) store_v(out + i, (load_v(x + i) * s) * load_v(w + i));
    for (; i < dim; i++) out[i] = (x[i] * scale) * w[i];
}

static inline int use_threads(int64_t rows, int64_t width, int threads) {
    return rows > 1 && rows * width >= PARALLEL_MIN_FLOATS && threads > 1 ? threads : 1;
}

/* out[r] = rmsnorm(x[r]) * w for `rows` rows of `dim` floats (row strides in floats). */
int sgc_rmsnorm_f32(const float *x, int64_t x_stride, const float *w, int64_t rows, int64_t dim, float eps,
                    float *out, int64_t out_stride, int threads) {
    if (rows < 0 || dim <= 0 || x_stride < dim || out_stride < dim) return 1;
    const int nt = use_threads(rows, dim, threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) norm_row(x + r * x_stride, w, dim, eps, out + r * out_stride);
    return 0;
}

/* x[r] += residual[r] (in place: x becomes the new residual stream), then out[r] = rmsnorm(x[r]) * w.
 * The add is torch's `x.add_(residual)` element for element. */
int sgc_add_rmsnorm_f32(float *x, int64_t x_stride, const float *residual, int64_t residual_stride,
                        const float *w, int64_t rows, int64_t dim, float eps, float *out, int64_t out_stride,
                        int threads) {
    if (rows < 0 || dim <= 0 || x_stride < dim || residual_stride < dim || out_stride < dim) return 1;
    const int nt = use_threads(rows, dim, threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * x_stride;
        const float *res = residual + r * residual_stride;
        int64_t i = 0;
        for (; i + LANES <= dim; i += LANES) store_v(row + i, load_v(row + i) + load_v(res + i));
        for (; i < dim; i++) row[i] = row[i] + res[i];
        norm_row(row, w, dim, eps, out + r * out_stride);
    }
    return 0;
}

/* Rotary embedding in place, HF's rotate_half layout: for each token t and head h of x
 * ([tokens, heads, head_dim], heads contiguous within a token, tokens `token_stride` floats apart),
 * with c = cos[pos, i] and s = sin[pos, i] for pos = positions[t] and i < head_dim / 2:
 *     x1' = x1 * c - x2 * s,   x2' = x2 * c + x1 * s
 * which is what the torch path computes as x * cos + swap_halves(x) * (-sin | sin), to the bit.
 * Returns 2 if a position is outside the table (nothing is written for that token). */
int sgc_rope_f32(float *x, int64_t token_stride, int64_t tokens, int64_t heads, int64_t head_dim,
                 const int64_t *positions, const float *cos_table, const float *sin_table, int64_t table_rows,
                 int threads) {
    if (tokens < 0 || heads <= 0 || head_dim <= 0 || head_dim % 2 || token_stride < heads * head_dim) return 1;
    const int64_t half = head_dim / 2;
    int bad = 0;
    const int nt = use_threads(tokens, heads * head_dim, threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1) reduction(| : bad)
    for (int64_t t = 0; t < tokens; t++) {
        const int64_t pos = positions[t];
        if (pos < 0 || pos >= table_rows) {
            bad |= 1;
            continue;
        }
        const float *c = cos_table + pos * half;
        const float *s = sin_table + pos * half;
        for (int64_t h = 0; h < heads; h++) {
            float *x1 = x + t * token_stride + h * head_dim;
            float *x2 = x1 + half;
            int64_t i = 0;
            for (; i + LANES <= half; i += LANES) {
                const vf a = load_v(x1 + i), b = load_v(x2 + i), cv = load_v(c + i), sv = load_v(s + i);
                store_v(x1 + i, a * cv - b * sv);
                store_v(x2 + i, b * cv + a * sv);
            }
            for (; i < half; i++) {
                const float a = x1[i], b = x2[i];
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
    return bad ? 2 : 0;
}

/* out[r] = silu(gate[r]) * up[r] where gate_up[r] = [gate | up], each `width` floats. */
int sgc_silu_mul_f32(const float *gate_up, int64_t stride, int64_t rows, int64_t width, float *out,
                     int64_t out_stride, int threads) {
    if (rows < 0 || width <= 0 || stride < 2 * width || out_stride < width) return 1;
    const int nt = use_threads(rows, width, threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * stride;
        const float *up = gate + width;
        float *dst = out + r * out_stride;
        int64_t i = 0;
        for (; i + LANES <= width; i += LANES) {
            const vf g = load_v(gate + i);
            store_v(dst + i, (g / (1.0f + exp_v(-g))) * load_v(up + i));
        }
        for (; i < width; i++) dst[i] = (gate[i] / (1.0f + expf(-gate[i]))) * up[i];
    }
    return 0;
}
