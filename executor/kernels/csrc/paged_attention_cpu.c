/* Attention over the paged KV pool on CPU, reading every key and value in place.
 *
 * The torch path (attention_cpu.py) first gathers each request's K and V out of the pool into a
 * dense [B, L, Hkv, D] copy, then runs SDPA over the copy: at decode the gather is most of the
 * attention's time (it writes and re-reads the whole context every step). Here each work item (one
 * request, up to MAX_ROWS / num_heads of its new tokens, all heads) walks the request's slots in the
 * request-to-token table and reads K/V rows straight out of the pool, a block of keys at a time,
 * with an online softmax (flash style). Each slot's K or V row (all KV heads, contiguous) is loaded
 * once per item and used by every query row of the item. The new tokens' K/V are stored into the
 * pool by the same call, read from the projection's output in place (no copies).
 *
 * Query j of request b sits at position prefix_lens[b] + j and sees keys 0 .. prefix_lens[b] + j
 * (causal). Decode is the case extend_lens[b] == 1.
 *
 * Written with GCC/Clang vector extensions (8 floats, AVX2-sized; -march=native widens what it can)
 * for head_dim a multiple of 8; other head dims go through plain scalar loops. Built at first use
 * by cpu_native.py with the host's compiler and loaded with ctypes. Threads: OpenMP, resolved to
 * the libgomp torch already loaded, so the kernel and torch's ops share one thread pool.
 */

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KEY_BLOCK 64    /* keys scored before their softmax update */
#define MAX_HEAD_DIM 256
#define MAX_ROWS 128   /* query rows (tokens x heads) per work item */

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

static inline float sum8(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* exp(x) for x <= 0, 8 lanes: Cody-Waite reduction by ln 2 (round to nearest with the 1.5 * 2^23
 * trick), then a degree-6 polynomial; ~1 ulp on [-87, 0], clamped below (softmax weights that small
 * are 0 in float anyway). Plain arithmetic, so no libm call and no -ffast-math needed. */
static inline v8f exp8_nonpositive(v8f x) {
    const v8f lo = (v8f){0} - 87.0f;
    const v8i below = x < lo; /* lanes of -1 where x < -87 */
    x = (v8f)(((v8i)x & ~below) | ((v8i)lo & below));
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    v8f n = (x * 1.44269504088896341f + round_magic) - round_magic;
    v8f r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f p = (v8f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8f)bits;
}

static inline float exp1_nonpositive(float x) {
    v8f v = (v8f){0} + x;
    return exp8_nonpositive(v)[0];
}

static inline float dot(const float *a, const float *b, int64_t n) {
    if ((n & 7) == 0) {
        v8f acc0 = {0}, acc1 = {0};
        int64_t d = 0;
        for (; d + 16 <= n; d += 16) {
            acc0 += load8(a + d) * load8(b + d);
            acc1 += load8(a + d + 8) * load8(b + d + 8);
        }
        if (d < n) acc0 += load8(a + d) * load8(b + d);
        return sum8(acc0 + acc1);
    }
    float s = 0.0f;
    for (int64_t d = 0; d < n; d++) s += a[d] * b[d];
    return s;
}

static inline void axpy(float *y, float a, const float *x, int64_t n) {
    if ((n & 7) == 0) {
        const v8f av = (v8f){0} + a;
        for (int64_t d = 0; d < n; d += 8) store8(y + d, load8(y + d) + av * load8(x + d));
        return;
    }
    for (int64_t d = 0; d < n; d++) y[d] += a * x[d];
}

/* One work item: tokens [token0, token0 + tokens) of a request, all heads. Query row i is token
 * i / num_heads, head i % num_heads, which reads KV head (i % num_heads) / group. Walking every
 * head in one item reads each slot's K (and V) row, all KV heads side by side, as one contiguous
 * piece of memory. */
static void attend_item(const float *q, int64_t q_stride, int64_t num_heads, int64_t group, int64_t token0,
                        int64_t tokens,
                        const float *k_buffer, const float *v_buffer, int64_t slot_stride,
                        const int64_t *slots, int64_t prefix, int64_t head_dim, float scale, float *out) {
    const int64_t rows = tokens * num_heads;
    const int64_t token_stride = num_heads * head_dim; /* out rows are [T, H, D] */
    const int64_t keys = prefix + token0 + tokens;     /* the last token's keys: all any row sees */
    float max_score[MAX_ROWS], denominator[MAX_ROWS];
    float q_scaled[MAX_ROWS * MAX_HEAD_DIM] __attribute__((aligned(32)));
    float acc[MAX_ROWS * MAX_HEAD_DIM] __attribute__((aligned(32)));
    float scores[MAX_ROWS][KEY_BLOCK] __attribute__((aligned(32)));
    int64_t visible[MAX_ROWS], kv_offset[MAX_ROWS];
    for (int64_t i = 0; i < rows; i++) {
        const float *q_row = q + (token0 + i / num_heads) * q_stride + (i % num_heads) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) q_scaled[i * head_dim + d] = q_row[d] * scale;
        kv_offset[i] = ((i % num_heads) / group) * head_dim;
        max_score[i] = -FLT_MAX;
        denominator[i] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)(rows * head_dim));
    for (int64_t start = 0; start < keys; start += KEY_BLOCK) {
        const int64_t n = keys - start < KEY_BLOCK ? keys - start : KEY_BLOCK;
        for (int64_t i = 0; i < rows; i++) {
            int64_t seen = prefix + token0 + i / num_heads - start + 1; /* keys start .. own position */
            visible[i] = seen < 0 ? 0 : (seen > n ? n : seen);
        }
        /* scores: each slot's K row loaded once, dotted with every query row that sees it */
        for (int64_t t = 0; t < n; t++) {
            if (t + 4 < n) __builtin_prefetch(k_buffer + slots[start + t + 4] * slot_stride);
            const float *k_row = k_buffer + slots[start + t] * slot_stride;
            for (int64_t i = 0; i < rows; i++)
                if (t < visible[i]) scores[i][t] = dot(q_scaled + i * head_dim, k_row + kv_offset[i], head_dim);
        }
        /* online softmax update per row */
        for (int64_t i = 0; i < rows; i++) {
            const int64_t m = visible[i];
            if (m == 0) continue;
            float block_max = scores[i][0];
            for (int64_t t = 1; t < m; t++) block_max = scores[i][t] > block_max ? scores[i][t] : block_max;
            const float new_max = block_max > max_score[i] ? block_max : max_score[i];
            const float correction = exp1_nonpositive(max_score[i] - new_max);
            const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
            v8f sum = {0};
            for (int64_t t = 0; t < m; t += 8) {
                const v8i inside = (lane + (int32_t)t) < (int32_t)m; /* the last vector may run past m */
                v8f p = exp8_nonpositive(load8(&scores[i][t]) - new_max);
                p = (v8f)((v8i)p & inside);
                store8(&scores[i][t], p);
                sum += p;
            }
            denominator[i] = denominator[i] * correction + sum8(sum);
            max_score[i] = new_max;
            if (correction != 1.0f) {
                float *a = acc + i * head_dim;
                for (int64_t d = 0; d < head_dim; d++) a[d] *= correction;
            }
        }
        /* weighted values: each slot's V row loaded once, added into every row that sees it */
        for (int64_t t = 0; t < n; t++) {
            if (t + 4 < n) __builtin_prefetch(v_buffer + slots[start + t + 4] * slot_stride);
            const float *v_row = v_buffer + slots[start + t] * slot_stride;
            for (int64_t i = 0; i < rows; i++)
                if (t < visible[i]) axpy(acc + i * head_dim, scores[i][t], v_row + kv_offset[i], head_dim);
        }
    }
    float *out_first = out + token0 * token_stride;
    for (int64_t i = 0; i < rows; i++) {
        const float inv = 1.0f / denominator[i];
        for (int64_t d = 0; d < head_dim; d++) out_first[i * head_dim + d] = acc[i * head_dim + d] * inv;
    }
}

/* Stores the new tokens' K/V into the pool, then attends.
 * q: [T, H, D] rows `q_stride` floats apart (a view into the fused qkv projection's output is fine);
 * k_new, v_new: [T, Hkv, D] rows `new_stride` floats apart, stored at slots new_slots[0 .. T);
 * out: [T, H, D] contiguous; requests' tokens back to back (query_starts[b] = first token of b).
 * k_buffer, v_buffer: [slots, Hkv, D] contiguous. req_to_token: [rows, table_stride] int64.
 * Returns 0; 1 when head_dim or the head counts are over the kernel's limits (the caller checks
 * first); 2 when out of memory for the work list. */
int sgc_paged_attention_f32(const float *q, int64_t q_stride, const float *k_new, const float *v_new,
                            int64_t new_stride, const int64_t *new_slots, int64_t num_tokens,
                            float *k_buffer, float *v_buffer,
                            const int64_t *req_to_token, int64_t table_stride, const int64_t *req_rows,
                            const int64_t *prefix_lens, const int64_t *extend_lens,
                            const int64_t *query_starts, int64_t batch, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, float scale, float *out) {
    if (head_dim > MAX_HEAD_DIM || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || num_heads > MAX_ROWS)
        return 1;
    const int64_t group = num_heads / num_kv_heads;
    const int64_t chunk_tokens = MAX_ROWS / num_heads; /* tokens per work item */
    const int64_t token_stride = num_heads * head_dim;
    const int64_t kv_row = num_kv_heads * head_dim;
    for (int64_t t = 0; t < num_tokens; t++) {
        memcpy(k_buffer + new_slots[t] * kv_row, k_new + t * new_stride, sizeof(float) * (size_t)kv_row);
        memcpy(v_buffer + new_slots[t] * kv_row, v_new + t * new_stride, sizeof(float) * (size_t)kv_row);
    }
    /* work list: (request, first token of the chunk) */
    int64_t items = 0;
    for (int64_t b = 0; b < batch; b++) items += (extend_lens[b] + chunk_tokens - 1) / chunk_tokens;
    int64_t *item_req = malloc(sizeof(int64_t) * (size_t)(items > 0 ? items : 1));
    int64_t *item_token = malloc(sizeof(int64_t) * (size_t)(items > 0 ? items : 1));
    if (item_req == NULL || item_token == NULL) {
        free(item_req);
        free(item_token);
        return 2;
    }
    int64_t c = 0;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t token = 0; token < extend_lens[b]; token += chunk_tokens) {
            item_req[c] = b;
            item_token[c] = token;
            c++;
        }
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; item++) {
        const int64_t b = item_req[item], token0 = item_token[item];
        const int64_t left = extend_lens[b] - token0;
        const int64_t first = query_starts[b];
        attend_item(q + first * q_stride, q_stride, num_heads, group, token0, left < chunk_tokens ? left : chunk_tokens,
                    k_buffer, v_buffer, kv_row, req_to_token + req_rows[b] * table_stride,
                    prefix_lens[b], head_dim, scale, out + first * token_stride);
    }
    free(item_req);
    free(item_token);
    return 0;
}
