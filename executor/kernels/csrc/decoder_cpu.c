/* A whole decoder forward pass (every layer) in one native call, for decode steps and short extends.
 *
 * The layer's pieces are already native (small_gemm_cpu.c, layer_ops_cpu.c, paged_attention_cpu.c);
 * called one by one from Python, a 30-layer step makes ~400 calls, each with its argument checks,
 * tensor allocations and views, which measured ~10 ms of a ~41 ms 12-request decode step on two
 * cores (py-spy, docs/performance.md "Whole forward in one call"). Here the same functions run in
 * the same order on the same buffers, so the result is bit-identical to the Python-driven fused
 * path (decoder.py `_forward_fused`; tests compare them), with no interpreter between them.
 *
 * Per layer: normed -> qkv projection (+bias) -> rotary on q and k in place -> attention (stores
 * the new K/V, reads q/k/v in place) -> o projection (+bias) -> hidden += o; normed = RMSNorm(hidden)
 * -> gate/up projection -> SiLU(gate) * up -> down projection -> hidden += down; normed = the next
 * layer's input RMSNorm (the final norm after the last layer). `hidden` is updated in place;
 * `normed` ends as the model's output (hidden states after the final norm).
 */

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

/* One layer's addresses, in the order the Python side writes them (decoder_cpu.py, LAYER_FIELDS). */
enum { QKV, QKV_BIAS, O, O_BIAS, GATE_UP, DOWN, INPUT_NORM, POST_NORM, K_BUFFER, V_BUFFER, LAYER_FIELDS };

#define F(addr) ((float *)(intptr_t)(addr))

/* Model shapes and the batch's attention layout, as one struct (ctypes passes it by pointer). */
typedef struct {
    int64_t tokens, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, intermediate;
    float eps, scale;
    const int64_t *layers; /* num_layers x LAYER_FIELDS addresses */
    const float *final_norm;
    const int64_t *positions;
    const float *cos_table, *sin_table;
    int64_t table_rows;
    /* attention: sgc_paged_attention_f32's layout, or the grouped decode's when item_starts != NULL */
    const int64_t *new_slots, *req_to_token, *req_rows, *prefix_lens, *extend_lens, *query_starts, *seq_lens;
    int64_t table_stride, batch;
    const int64_t *item_starts, *members, *item_shared;
    int64_t items;
    /* scratch, each [tokens, width]: qkv, attention output, projection output, gate/up, activation */
    float *qkv, *attn, *proj, *gate_up, *act;
    int threads;
} decoder_args;

/* Returns 0; otherwise the failing step's code * 100 + its status (for the Python error). */
int sgc_decoder_forward_f32(const decoder_args *a, float *hidden, float *normed) {
    const int64_t T = a->tokens, H = a->hidden_size, D = a->head_dim;
    const int64_t q_width = a->num_heads * D, kv_width = a->num_kv_heads * D;
    const int64_t qkv_width = q_width + 2 * kv_width, inter = a->intermediate;
    const int th = a->threads;
    int status;
#define STEP(code, call)                   \
    do {                                   \
        status = (call);                   \
        if (status != 0) return (code) * 100 + status; \
    } while (0)
    STEP(1, sgc_rmsnorm_f32(hidden, H, F(a->layers[INPUT_NORM]), T, H, a->eps, normed, H, th));
    for (int64_t l = 0; l < a->num_layers; l++) {
        const int64_t *w = a->layers + l * LAYER_FIELDS;
        STEP(2, sgc_gemm_f32(normed, H, T, H, F(w[QKV]), qkv_width, F(w[QKV_BIAS]), a->qkv, qkv_width, th));
        STEP(3, sgc_rope_f32(a->qkv, qkv_width, T, a->num_heads + a->num_kv_heads, D, a->positions, a->cos_table,
                             a->sin_table, a->table_rows, th));
        const float *k_new = a->qkv + q_width, *v_new = a->qkv + q_width + kv_width;
        if (a->item_starts != NULL) {
            STEP(4, sgc_paged_decode_grouped_f32(a->qkv, qkv_width, k_new, v_new, qkv_width, a->new_slots, T,
                                                  F(w[K_BUFFER]), F(w[V_BUFFER]), a->req_to_token, a->table_stride,
                                                  a->req_rows, a->seq_lens, a->item_starts, a->members,
                                                  a->item_shared, a->items, a->num_heads, a->num_kv_heads, D,
                                                  a->scale, a->attn, th));
        } else {
            STEP(4, sgc_paged_attention_f32(a->qkv, qkv_width, k_new, v_new, qkv_width, a->new_slots, T,
                                             F(w[K_BUFFER]), F(w[V_BUFFER]), a->req_to_token, a->table_stride,
                                             a->req_rows, a->prefix_lens, a->extend_lens, a->query_starts,
                                             a->batch, a->num_heads, a->num_kv_heads, D, a->scale, a->attn, th));
        }
        STEP(5, sgc_gemm_f32(a->attn, q_width, T, q_width, F(w[O]), H, F(w[O_BIAS]), a->proj, H, th));
        STEP(6, sgc_add_rmsnorm_f32(hidden, H, a->proj, H, F(w[POST_NORM]), T, H, a->eps, normed, H, th));
        STEP(7, sgc_gemm_f32(normed, H, T, H, F(w[GATE_UP]), 2 * inter, NULL, a->gate_up, 2 * inter, th));
        STEP(8, sgc_silu_mul_f32(a->gate_up, 2 * inter, T, inter, a->act, inter, th));
        STEP(9, sgc_gemm_f32(a->act, inter, T, inter, F(w[DOWN]), H, NULL, a->proj, H, th));
        const float *next_norm = l + 1 < a->num_layers ? F(a->layers[(l + 1) * LAYER_FIELDS + INPUT_NORM])
                                                       : a->final_norm;
        STEP(10, sgc_add_rmsnorm_f32(hidden, H, a->proj, H, next_norm, T, H, a->eps, normed, H, th));
    }
#undef STEP
    return 0;
}
