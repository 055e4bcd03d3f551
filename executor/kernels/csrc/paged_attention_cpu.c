/* Attention over the paged KV pool on CPU, reading every key and value in place.
 *
 * The torch path (attention_cpu.py) first gathers each request's K and V out of the pool into a
 * dense [B, L, Hkv, D] copy, then runs SDPA over the copy: at decode the gather is most of the
 * attention's time (it writes and re-reads the whole context every step). Here each work item (one
 * request, up to MAX_ROWS / num_heads of its new tokens, all heads) walks the request's slots in the
 * request-to-token table and reads K/V rows straight out of the pool, a block of keys at a time,
 * with an online softmax (flash style). Within a block the query rows are taken KV head by KV head,
 * so the block's K and V slices of that head (KEY_BLOCK x head_dim floats each) stay in L1 while
 * every query head of its GQA group, for every token of the item, reads them. The new tokens' K/V
 * are stored into the pool by the same call, read from the projection's output in place (no copies).
 *
 * Query j of request b sits at position prefix_lens[b] + j and sees keys 0 .. prefix_lens[b] + j
 * (causal). Decode is the case extend_lens[b] == 1.
 *
 * Written with GCC/Clang vector extensions, 16 lanes where the compiler targets AVX-512 and 8
 * otherwise, for head dims that are a multiple of the lane count (64 and 128 get their own
 * fully unrolled copies); other head dims take plain scalar loops. Built at first use by
 * cpu_native.py with the host's compiler (-march=native) and loaded with ctypes. Threads: OpenMP,
 * resolved to the libgomp torch already loaded, so the kernel and torch's ops share one pool.
 */

#include <float.h>
#include <stdlib.h>

#include "kernels.h"
#include "simd.h"

#define KEY_BLOCK 64  /* keys scored before their softmax update */
#define MAX_HEAD_DIM 256
#define MAX_ROWS 128  /* query rows (tokens x heads) per work item */

static inline float exp1(float x) { return exp_v(splat(x))[0]; }

/* q . k over head_dim floats; `vector` is the head dim's layout (a multiple of LANES or not). */
static inline __attribute__((always_inline)) float dot(const float *q, const float *k, int64_t head_dim, int vector) {
    if (vector) {
        vf acc = {0};
        for (int64_t d = 0; d < head_dim; d += LANES) acc += load_v(q + d) * load_v(k + d);
        return sum_v(acc);
    }
    float s = 0.0f;
    for (int64_t d = 0; d < head_dim; d++) s += q[d] * k[d];
    return s;
}

/* Online softmax of one query row over one block: turns scores[0 .. m) into weights, updates the
 * row's running max and denominator, and returns the factor its accumulator must be scaled by. */
static inline float softmax_block(float *scores, int64_t m, float *max_score, float *denominator) {
    float block_max = scores[0];
    for (int64_t t = 1; t < m; t++) block_max = scores[t] > block_max ? scores[t] : block_max;
    const float new_max = block_max > *max_score ? block_max : *max_score;
    const float correction = exp1(*max_score - new_max);
    vi lane;
    for (int k = 0; k < LANES; k++) lane[k] = k;
    vf sum = {0};
    for (int64_t t = 0; t < m; t += LANES) {
        const vi inside = (lane + (int32_t)t) < (int32_t)m; /* the last vector may run past m */
        vf p = exp_v(load_v(scores + t) - new_max);
        p = (vf)((vi)p & inside);
        store_v(scores + t, p);
        sum += p;
    }
    *denominator = *denominator * correction + sum_v(sum);
    *max_score = new_max;
    return correction;
}

/* One query row over one block of keys whose scores[0 .. m) are computed: the online softmax
 * update, and the weighted values added into its accumulator. */
static inline __attribute__((always_inline)) void attend_row_scored(
    const float *const *v_rows, int64_t kv, int64_t m, int64_t head_dim, int vector, float *scores,
    float *max_score, float *denominator, float *a) {
    const float correction = softmax_block(scores, m, max_score, denominator);
    if (vector) { /* the row's accumulator in registers across the block's keys */
        vf sum[MAX_HEAD_DIM / LANES];
        for (int64_t c = 0; c < head_dim / LANES; c++) sum[c] = load_v(a + c * LANES) * correction;
        for (int64_t t = 0; t < m; t++) {
            const vf p = broadcast(scores + t);
            const float *v_row = v_rows[t] + kv;
            for (int64_t c = 0; c < head_dim / LANES; c++) sum[c] += p * load_v(v_row + c * LANES);
        }
        for (int64_t c = 0; c < head_dim / LANES; c++) store_v(a + c * LANES, sum[c]);
    } else {
        for (int64_t d = 0; d < head_dim; d++) {
            float sum = a[d] * correction;
            for (int64_t t = 0; t < m; t++) sum += scores[t] * v_rows[t][kv + d];
            a[d] = sum;
        }
    }
}

/* One query row over one block of keys, all of which it sees: scores, then attend_row_scored. */
static inline __attribute__((always_inline)) void attend_row_block(
    const float *q_row, const float *const *k_rows, const float *const *v_rows, int64_t kv, int64_t m,
    int64_t head_dim, int vector, float *scores, float *max_score, float *denominator, float *a) {
    for (int64_t t = 0; t < m; t++) scores[t] = dot(q_row, k_rows[t] + kv, head_dim, vector);
    attend_row_scored(v_rows, kv, m, head_dim, vector, scores, max_score, denominator, a);
}

/* One KV head's slice of a block's keys, transposed: kt[d * KEY_BLOCK + t] = k_rows[t][kv + d],
 * keys past n zero. Rows that share the block (an extend's tokens x the GQA group) then score all
 * its keys with broadcast FMAs, KEY_BLOCK / LANES vectors of keys per query value, instead of one
 * dot product and one horizontal sum per (row, key). */
static inline void transpose_keys(const float *const *k_rows, int64_t kv, int64_t n, int64_t head_dim, float *kt) {
    for (int64_t t = 0; t < n; t++) {
        const float *k = k_rows[t] + kv;
        for (int64_t d = 0; d < head_dim; d++) kt[d * KEY_BLOCK + t] = k[d];
    }
    for (int64_t t = n; t < KEY_BLOCK; t++)
        for (int64_t d = 0; d < head_dim; d++) kt[d * KEY_BLOCK + t] = 0.0f;
}

/* scores[0 .. KEY_BLOCK) = q_row . keys, from the transposed block. */
static inline __attribute__((always_inline)) void score_transposed(const float *q_row, const float *kt,
                                                                    int64_t head_dim, float *scores) {
    vf acc[KEY_BLOCK / LANES] = {0};
    for (int64_t d = 0; d < head_dim; d++) {
        const vf qd = broadcast(q_row + d);
        for (int c = 0; c < KEY_BLOCK / LANES; c++) acc[c] += qd * load_v(kt + d * KEY_BLOCK + c * LANES);
    }
    for (int c = 0; c < KEY_BLOCK / LANES; c++) store_v(scores + c * LANES, acc[c]);
}

/* Rows of one block and KV head from which the transposed scoring pays for its transpose. */
#define TRANSPOSE_MIN_ROWS 8

/* A block's key and value row pointers (all KV heads of a slot side by side). */
static inline void block_rows(const int64_t *slots, int64_t n, const float *k_buffer, const float *v_buffer,
                              int64_t slot_stride, const float **k_rows, const float **v_rows) {
    for (int64_t t = 0; t < n; t++) {
        const int64_t slot = slots[t];
        k_rows[t] = k_buffer + slot * slot_stride;
        v_rows[t] = v_buffer + slot * slot_stride;
    }
}

/* Asks for every cache line of the next block's K and V rows while this block computes. A decode
 * step's slots interleave across requests (one per request per step), so consecutive keys of one
 * request are far apart and the hardware prefetcher cannot follow them: without this, attention
 * inside a model step waits on DRAM for each row (measured: ~3x the time of the same call with
 * the KV cache-resident). */
static inline void prefetch_block(const int64_t *slots, int64_t n, const float *k_buffer, const float *v_buffer,
                                  int64_t slot_stride) {
    for (int64_t t = 0; t < n; t++) {
        const char *k_row = (const char *)(k_buffer + slots[t] * slot_stride);
        const char *v_row = (const char *)(v_buffer + slots[t] * slot_stride);
        for (int64_t byte = 0; byte < slot_stride * (int64_t)sizeof(float); byte += 64) {
            __builtin_prefetch(k_row + byte);
            __builtin_prefetch(v_row + byte);
        }
    }
}

/* A work item's query rows (row i: token i / num_heads, head i % num_heads) and their online-softmax
 * state, plus the scratch of one block of keys. */
typedef struct {
    float max_score[MAX_ROWS], denominator[MAX_ROWS];
    float q_scaled[MAX_ROWS * MAX_HEAD_DIM] __attribute__((aligned(64)));
    float acc[MAX_ROWS * MAX_HEAD_DIM] __attribute__((aligned(64)));
    float scores[KEY_BLOCK + LANES] __attribute__((aligned(64)));
    float kt[MAX_HEAD_DIM * KEY_BLOCK] __attribute__((aligned(64))); /* transpose_keys' block */
    const float *k_rows[KEY_BLOCK];
    const float *v_rows[KEY_BLOCK];
} item_rows;

/* Loads every row's query, pre-scaled (token t's heads start at token_q[t]), and clears its state. */
static inline void start_rows(item_rows *st, const float *const *token_q, int64_t rows, int64_t num_heads,
                              int64_t head_dim, float scale) {
    for (int64_t i = 0; i < rows; i++) {
        const float *q_row = token_q[i / num_heads] + (i % num_heads) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) st->q_scaled[i * head_dim + d] = q_row[d] * scale;
        st->max_score[i] = -FLT_MAX;
        st->denominator[i] = 0.0f;
    }
    memset(st->acc, 0, sizeof(float) * (size_t)(rows * head_dim));
}

/* Writes every row's normalized output (token t's heads start at token_out[t]). */
static inline void finish_rows(const item_rows *st, float *const *token_out, int64_t rows, int64_t num_heads,
                               int64_t head_dim) {
    for (int64_t i = 0; i < rows; i++) {
        const float inv = 1.0f / st->denominator[i];
        float *dst = token_out[i / num_heads] + (i % num_heads) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) dst[d] = st->acc[i * head_dim + d] * inv;
    }
}

/* One work item: tokens [token0, token0 + tokens) of a request, all heads. Query row i is token
 * i / num_heads, head i % num_heads, which reads KV head (i % num_heads) / group. */
static inline __attribute__((always_inline)) void attend_item(
    const float *q, int64_t q_stride, int64_t num_heads, int64_t num_kv_heads, int64_t token0, int64_t tokens,
    const float *k_buffer, const float *v_buffer, int64_t slot_stride, const int64_t *slots, int64_t prefix,
    int64_t head_dim, float scale, float *out, int vector) {
    const int64_t group = num_heads / num_kv_heads;
    const int64_t rows = tokens * num_heads;
    const int64_t keys = prefix + token0 + tokens; /* the last token's keys: all any row sees */
    item_rows st;
    const float *token_q[MAX_ROWS];
    float *token_out[MAX_ROWS];
    for (int64_t t = 0; t < tokens; t++) {
        token_q[t] = q + (token0 + t) * q_stride;
        token_out[t] = out + (token0 + t) * num_heads * head_dim; /* out rows are [T, H, D] */
    }
    start_rows(&st, token_q, rows, num_heads, head_dim, scale);
    prefetch_block(slots, keys < KEY_BLOCK ? keys : KEY_BLOCK, k_buffer, v_buffer, slot_stride);
    for (int64_t start = 0; start < keys; start += KEY_BLOCK) {
        const int64_t n = keys - start < KEY_BLOCK ? keys - start : KEY_BLOCK;
        block_rows(slots + start, n, k_buffer, v_buffer, slot_stride, st.k_rows, st.v_rows);
        const int64_t next = keys - start - n < KEY_BLOCK ? keys - start - n : KEY_BLOCK;
        prefetch_block(slots + start + n, next, k_buffer, v_buffer, slot_stride);
        const int transposed = vector && tokens * group >= TRANSPOSE_MIN_ROWS;
        for (int64_t h = 0; h < num_kv_heads; h++) {
            if (transposed) transpose_keys(st.k_rows, h * head_dim, n, head_dim, st.kt);
            for (int64_t token = 0; token < tokens; token++) {
                int64_t m = prefix + token0 + token - start + 1; /* keys start .. own position */
                if (m <= 0) continue;
                if (m > n) m = n;
                for (int64_t g = 0; g < group; g++) {
                    const int64_t i = token * num_heads + h * group + g;
                    if (transposed) {
                        score_transposed(st.q_scaled + i * head_dim, st.kt, head_dim, st.scores);
                        attend_row_scored(st.v_rows, h * head_dim, m, head_dim, vector, st.scores, &st.max_score[i],
                                          &st.denominator[i], st.acc + i * head_dim);
                    } else {
                        attend_row_block(st.q_scaled + i * head_dim, st.k_rows, st.v_rows, h * head_dim, m,
                                         head_dim, vector, st.scores, &st.max_score[i], &st.denominator[i],
                                         st.acc + i * head_dim);
                    }
                }
            }
        }
    }
    finish_rows(&st, token_out, rows, num_heads, head_dim);
}

/* attend_item with the head dim a compile-time constant for the common sizes (fully unrolled). */
static void attend_item_dispatch(const float *q, int64_t q_stride, int64_t num_heads, int64_t num_kv_heads,
                                 int64_t token0, int64_t tokens, const float *k_buffer, const float *v_buffer,
                                 int64_t slot_stride, const int64_t *slots, int64_t prefix, int64_t head_dim,
                                 float scale, float *out) {
    switch (head_dim) {
    case 64:
        attend_item(q, q_stride, num_heads, num_kv_heads, token0, tokens, k_buffer, v_buffer, slot_stride, slots,
                    prefix, 64, scale, out, 1);
        return;
    case 128:
        attend_item(q, q_stride, num_heads, num_kv_heads, token0, tokens, k_buffer, v_buffer, slot_stride, slots,
                    prefix, 128, scale, out, 1);
        return;
    default:
        attend_item(q, q_stride, num_heads, num_kv_heads, token0, tokens, k_buffer, v_buffer, slot_stride, slots,
                    prefix, head_dim, scale, out, head_dim % LANES == 0);
    }
}

/* Decode for `count` requests (one new token each, batch indices `members`) whose first `shared`
 * keys are the same slots (a fork's branches over their common prefix): the shared keys are read
 * once for the rows of every member, then each member's own keys for its rows only. Row i is member
 * i / num_heads, head i % num_heads. `count` = 1 with shared = 0 is plain decode of one request. */
static inline __attribute__((always_inline)) void attend_group(
    const float *q, int64_t q_stride, int64_t num_heads, int64_t num_kv_heads, const int64_t *members,
    int64_t count, int64_t shared, const int64_t *seq_lens, const int64_t *req_rows, const int64_t *req_to_token,
    int64_t table_stride, const float *k_buffer, const float *v_buffer, int64_t slot_stride, int64_t head_dim,
    float scale, float *out, int vector) {
    const int64_t group = num_heads / num_kv_heads;
    const int64_t rows = count * num_heads;
    item_rows st;
    const float *token_q[MAX_ROWS];
    float *token_out[MAX_ROWS];
    for (int64_t j = 0; j < count; j++) {
        token_q[j] = q + members[j] * q_stride;
        token_out[j] = out + members[j] * num_heads * head_dim;
    }
    start_rows(&st, token_q, rows, num_heads, head_dim, scale);
    /* member -1 stands for the shared keys (every row); then each member's own keys (its rows) */
    for (int64_t part = -1; part < count; part++) {
        const int64_t owner = members[part < 0 ? 0 : part];
        const int64_t *slots = req_to_token + req_rows[owner] * table_stride;
        const int64_t begin = part < 0 ? 0 : shared, end = part < 0 ? shared : seq_lens[owner];
        const int64_t first_row = part < 0 ? 0 : part * num_heads, last_row = part < 0 ? rows : first_row + num_heads;
        if (begin < end) prefetch_block(slots + begin, end - begin < KEY_BLOCK ? end - begin : KEY_BLOCK, k_buffer,
                                        v_buffer, slot_stride);
        for (int64_t start = begin; start < end; start += KEY_BLOCK) {
            const int64_t n = end - start < KEY_BLOCK ? end - start : KEY_BLOCK;
            block_rows(slots + start, n, k_buffer, v_buffer, slot_stride, st.k_rows, st.v_rows);
            const int64_t next = end - start - n < KEY_BLOCK ? end - start - n : KEY_BLOCK;
            prefetch_block(slots + start + n, next, k_buffer, v_buffer, slot_stride);
            for (int64_t h = 0; h < num_kv_heads; h++)
                for (int64_t r = first_row; r < last_row; r += num_heads)
                    for (int64_t g = 0; g < group; g++) {
                        const int64_t i = r + h * group + g;
                        attend_row_block(st.q_scaled + i * head_dim, st.k_rows, st.v_rows, h * head_dim, n, head_dim,
                                         vector, st.scores, &st.max_score[i], &st.denominator[i],
                                         st.acc + i * head_dim);
                    }
        }
    }
    finish_rows(&st, token_out, rows, num_heads, head_dim);
}

static void attend_group_dispatch(const float *q, int64_t q_stride, int64_t num_heads, int64_t num_kv_heads,
                                  const int64_t *members, int64_t count, int64_t shared, const int64_t *seq_lens,
                                  const int64_t *req_rows, const int64_t *req_to_token, int64_t table_stride,
                                  const float *k_buffer, const float *v_buffer, int64_t slot_stride,
                                  int64_t head_dim, float scale, float *out) {
    switch (head_dim) {
    case 64:
        attend_group(q, q_stride, num_heads, num_kv_heads, members, count, shared, seq_lens, req_rows, req_to_token,
                     table_stride, k_buffer, v_buffer, slot_stride, 64, scale, out, 1);
        return;
    case 128:
        attend_group(q, q_stride, num_heads, num_kv_heads, members, count, shared, seq_lens, req_rows, req_to_token,
                     table_stride, k_buffer, v_buffer, slot_stride, 128, scale, out, 1);
        return;
    default:
        attend_group(q, q_stride, num_heads, num_kv_heads, members, count, shared, seq_lens, req_rows, req_to_token,
                     table_stride, k_buffer, v_buffer, slot_stride, head_dim, scale, out, head_dim % LANES == 0);
    }
}

static void store_new_kv(const float *k_new, const float *v_new, int64_t new_stride, const int64_t *new_slots,
                         int64_t num_tokens, float *k_buffer, float *v_buffer, int64_t kv_row) {
    for (int64_t t = 0; t < num_tokens; t++) {
        memcpy(k_buffer + new_slots[t] * kv_row, k_new + t * new_stride, sizeof(float) * (size_t)kv_row);
        memcpy(v_buffer + new_slots[t] * kv_row, v_new + t * new_stride, sizeof(float) * (size_t)kv_row);
    }
}

/* Stores the new tokens' K/V into the pool, then attends.
 * q: [T, H, D] rows `q_stride` floats apart (a view into the fused qkv projection's output is fine);
 * k_new, v_new: [T, Hkv, D] rows `new_stride` floats apart, stored at slots new_slots[0 .. T);
 * out: [T, H, D] contiguous; requests' tokens back to back (query_starts[b] = first token of b).
 * k_buffer, v_buffer: [slots, Hkv, D] contiguous. req_to_token: [rows, table_stride] int64.
 * num_threads: torch's intra-op thread count (an OpenMP thread's own default would ignore
 * torch.set_num_threads made on another thread).
 * Returns 0; 1 when head_dim or the head counts are over the kernel's limits (the caller checks
 * first); 2 when out of memory for the work list. */
int sgc_paged_attention_f32(const float *q, int64_t q_stride, const float *k_new, const float *v_new,
                            int64_t new_stride, const int64_t *new_slots, int64_t num_tokens,
                            float *k_buffer, float *v_buffer,
                            const int64_t *req_to_token, int64_t table_stride, const int64_t *req_rows,
                            const int64_t *prefix_lens, const int64_t *extend_lens,
                            const int64_t *query_starts, int64_t batch, int64_t num_heads,
                            int64_t num_kv_heads, int64_t head_dim, float scale, float *out, int num_threads) {
    if (head_dim > MAX_HEAD_DIM || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || num_heads > MAX_ROWS)
        return 1;
    const int64_t chunk_tokens = MAX_ROWS / num_heads; /* tokens per work item */
    const int64_t token_stride = num_heads * head_dim;
    const int64_t kv_row = num_kv_heads * head_dim;
    store_new_kv(k_new, v_new, new_stride, new_slots, num_tokens, k_buffer, v_buffer, kv_row);
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads > 0 ? num_threads : 1)
    for (int64_t item = 0; item < items; item++) {
        const int64_t b = item_req[item], token0 = item_token[item];
        const int64_t left = extend_lens[b] - token0;
        const int64_t first = query_starts[b];
        attend_item_dispatch(q + first * q_stride, q_stride, num_heads, num_kv_heads, token0,
                             left < chunk_tokens ? left : chunk_tokens, k_buffer, v_buffer, kv_row,
                             req_to_token + req_rows[b] * table_stride, prefix_lens[b], head_dim, scale,
                             out + first * token_stride);
    }
    free(item_req);
    free(item_token);
    return 0;
}

/* Decode (one new token per request) where groups of requests share a prefix of slots: stores the
 * new K/V like sgc_paged_attention_f32, then runs one work item per group (`item_starts[g] ..
 * item_starts[g + 1]` in `members`, batch indices; at most MAX_ROWS / num_heads members each) that
 * reads the group's first item_shared[g] keys once for all of its members. Requests outside groups
 * are items of one member with nothing shared. seq_lens[b]: request b's keys, its new token included.
 * Returns 0, or 1 when the sizes are over the kernel's limits. */
int sgc_paged_decode_grouped_f32(const float *q, int64_t q_stride, const float *k_new, const float *v_new,
                                 int64_t new_stride, const int64_t *new_slots, int64_t batch, float *k_buffer,
                                 float *v_buffer, const int64_t *req_to_token, int64_t table_stride,
                                 const int64_t *req_rows, const int64_t *seq_lens, const int64_t *item_starts,
                                 const int64_t *members, const int64_t *item_shared, int64_t items,
                                 int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, float scale, float *out,
                                 int num_threads) {
    if (head_dim > MAX_HEAD_DIM || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || num_heads > MAX_ROWS)
        return 1;
    for (int64_t g = 0; g < items; g++)
        if (item_starts[g + 1] - item_starts[g] > MAX_ROWS / num_heads || item_starts[g + 1] <= item_starts[g])
            return 1;
    const int64_t kv_row = num_kv_heads * head_dim;
    store_new_kv(k_new, v_new, new_stride, new_slots, batch, k_buffer, v_buffer, kv_row);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads > 0 ? num_threads : 1)
    for (int64_t g = 0; g < items; g++) {
        attend_group_dispatch(q, q_stride, num_heads, num_kv_heads, members + item_starts[g],
                              item_starts[g + 1] - item_starts[g], item_shared[g], seq_lens, req_rows, req_to_token,
                              table_stride, k_buffer, v_buffer, kv_row, head_dim, scale, out);
    }
    return 0;
}
