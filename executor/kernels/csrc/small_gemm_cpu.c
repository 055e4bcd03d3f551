/* y = x @ W^T (+ bias) for a few rows of x: the projections of a CPU decode step.
 *
 * A decode step multiplies M = 1..64 rows (one per request) by every weight of the model, and the
 * weights come from DRAM each step. At M = 32 that is 16 flops per weight byte: the step is near
 * the balance point of this class of CPU (2 cores: ~360 GFLOP/s fp32, ~25 GB/s), so it runs at its
 * limit only if the weights stream in while the FMA units stay busy. General GEMM libraries block
 * for large M; at small M they re-pack the weight per call (MKL) or leave the FMA units waiting on
 * memory. Here the weight is packed ONCE into column panels: panel p holds output columns
 * [p*NR, p*NR + NR) as K rows of NR floats, so a panel is one sequential stream. Each panel is
 * read from DRAM once per call and then reused from cache by every block of MR rows of x, and an
 * MR x NR tile of y lives in registers for the whole K loop (AVX-512: 8 x 32 = 16 zmm accumulators,
 * each x value broadcast once per k and used for two FMAs).
 *
 * Threads (OpenMP, torch's pool) split the panels, so each core streams its own share of the
 * weight. Results equal F.linear's up to float rounding (another order of the same dot products:
 * here each output sums k = 0 .. K-1 in order, the same for every M, so a row's result does not
 * depend on what else is in the batch).
 */

#include "kernels.h"
#include "simd.h"

#if LANES == 16
#define MR 8
#else
#define MR 4
#endif
#ifndef NV
#define NV 2 /* vectors of output columns per tile */
#endif
#define NR (NV * LANES)

/* Floats of the packed form of an [n, k] weight. */
int64_t sgc_gemm_packed_floats(int64_t n, int64_t k) { return ((n + NR - 1) / NR) * k * NR; }

/* W [n, k] (row stride w_stride) -> panels; columns past n are zero. */
int sgc_gemm_pack_f32(const float *w, int64_t w_stride, int64_t n, int64_t k, float *packed, int threads) {
    if (n <= 0 || k <= 0 || w_stride < k) return 1;
    const int64_t panels = (n + NR - 1) / NR;
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : 1)
    for (int64_t p = 0; p < panels; p++) {
        float *dst = packed + p * k * NR;
        for (int64_t j = 0; j < NR; j++) {
            const int64_t col = p * NR + j;
            if (col < n) {
                const float *src = w + col * w_stride;
                for (int64_t kk = 0; kk < k; kk++) dst[kk * NR + j] = src[kk];
            } else {
                for (int64_t kk = 0; kk < k; kk++) dst[kk * NR + j] = 0.0f;
            }
        }
    }
    return 0;
}

/* One tile: rows [0, R) of x times one panel, into y's columns [col0, col0 + cols). R is a
 * compile-time constant at every call site (see tile_rows), so the accumulators are registers. */
static inline __attribute__((always_inline)) void tile(const float *x, int64_t x_stride, int R, const float *panel,
                                                      int64_t k, const float *bias, float *y, int64_t y_stride,
                                                      int64_t cols, const char *prefetch, int64_t prefetch_lines) {
    vf acc[MR][NV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = (vf){0};
    int64_t fetched = 0, owed = 0; /* prefetch_lines spread evenly over the k loop */
#pragma GCC unroll 4
    for (int64_t kk = 0; kk < k; kk++) {
        owed += prefetch_lines;
        while (owed >= k) {
            __builtin_prefetch(prefetch + 64 * fetched++, 0, 2);
            owed -= k;
        }
        vf b[NV];
        for (int v = 0; v < NV; v++) b[v] = load_v(panel + kk * NR + v * LANES);
        for (int r = 0; r < R; r++) {
            const vf a = broadcast(x + r * x_stride + kk);
            for (int v = 0; v < NV; v++) acc[r][v] += a * b[v];
        }
    }
    if (bias) {
        float padded[NR] = {0};
        memcpy(padded, bias, (size_t)cols * sizeof(float));
        for (int v = 0; v < NV; v++) {
            const vf bias_v = load_v(padded + v * LANES);
            for (int r = 0; r < R; r++) acc[r][v] += bias_v;
        }
    }
    for (int r = 0; r < R; r++) {
        float *dst = y + r * y_stride;
        if (cols == NR) {
            for (int v = 0; v < NV; v++) store_v(dst + v * LANES, acc[r][v]);
        } else {
            float row[NR];
            for (int v = 0; v < NV; v++) store_v(row + v * LANES, acc[r][v]);
            memcpy(dst, row, (size_t)cols * sizeof(float));
        }
    }
}

/* Dispatch a block of 1..MR rows to the tile specialized for that row count. */
static void tile_rows(const float *x, int64_t x_stride, int rows, const float *panel, int64_t k, const float *bias,
                      float *y, int64_t y_stride, int64_t cols, const char *prefetch, int64_t prefetch_lines) {
    switch (rows) {
#define TILE_CASE(R) \
    case R: tile(x, x_stride, R, panel, k, bias, y, y_stride, cols, prefetch, prefetch_lines); break;
        TILE_CASE(1)
        TILE_CASE(2)
        TILE_CASE(3)
        TILE_CASE(4)
#if MR == 8
        TILE_CASE(5)
        TILE_CASE(6)
        TILE_CASE(7)
        TILE_CASE(8)
#endif
#undef TILE_CASE
        default: break;
    }
}

/* y[m, n] = x[m, k] @ W^T + bias, W given as its packed panels (sgc_gemm_pack_f32). `bias` may be
 * NULL. Strides are in floats. */
int sgc_gemm_f32(const float *x, int64_t x_stride, int64_t m, int64_t k, const float *packed, int64_t n,
                 const float *bias, float *y, int64_t y_stride, int threads) {
    if (m < 0 || n <= 0 || k <= 0 || x_stride < k || y_stride < n) return 1;
    const int64_t panels = (n + NR - 1) / NR;
    const int nt = threads > 1 && panels > 1 ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t p = 0; p < panels; p++) {
        const float *panel = packed + p * k * NR;
        const int64_t col0 = p * NR;
        const int64_t cols = n - col0 < NR ? n - col0 : NR;
        const float *panel_bias = bias ? bias + col0 : NULL;
        /* While this panel computes, its row blocks ask for the next panel's cache lines, so the
         * weight streams in under the FMAs instead of between them (a panel is one sequential run:
         * the hardware prefetcher alone runs out of reach during a panel's compute burst). */
        const int64_t blocks = (m + MR - 1) / MR;
        const int64_t next_lines = p + 1 < panels ? (k * NR * (int64_t)sizeof(float)) / 64 : 0;
        const int64_t lines_per_block = (next_lines + blocks - 1) / blocks;
        const char *next = (const char *)(panel + k * NR);
        for (int64_t r0 = 0, block = 0; r0 < m; r0 += MR, block++) {
            const int rows = (int)(m - r0 < MR ? m - r0 : MR);
            int64_t first = block * lines_per_block;
            int64_t count = first >= next_lines ? 0 : (next_lines - first < lines_per_block ? next_lines - first
                                                                                          : lines_per_block);
            tile_rows(x + r0 * x_stride, x_stride, rows, panel, k, panel_bias, y + r0 * y_stride + col0, y_stride,
                      cols, next + 64 * first, count);
        }
    }
    return 0;
}
