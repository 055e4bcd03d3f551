/* The functions the native CPU kernels export (loaded by ctypes: cpu_native.py declares the same
 * signatures on the Python side). Each .c file includes this, so the compiler checks every
 * definition against it, and decoder_cpu.c calls the others through it. All return 0, or a nonzero
 * status for arguments they refuse. */

#ifndef SGC_KERNELS_H
#define SGC_KERNELS_H

#include <stdint.h>

/* small_gemm_cpu.c */
int64_t sgc_gemm_packed_floats(int64_t n, int64_t k);
int sgc_gemm_pack_f32(const float *w, int64_t w_stride, int64_t n, int64_t k, float *packed, int threads);
int sgc_gemm_f32(const float *x, int64_t x_stride, int64_t m, int64_t k, const float *packed, int64_t n,
                 const float *bias, float *y, int64_t y_stride, int threads);

/* layer_ops_cpu.c */
int sgc_rmsnorm_f32(const float *x, int64_t x_stride, const float *w, int64_t rows, int64_t dim, float eps,
                    float *out, int64_t out_stride, int threads);
int sgc_add_rmsnorm_f32(float *x, int64_t x_stride, const float *residual, int64_t residual_stride,
                        const float *w, int64_t rows, int64_t dim, float eps, float *out, int64_t out_stride,
                        int threads);
int sgc_rope_f32(float *x, int64_t token_stride, int64_t tokens, int64_t heads, int64_t head_dim,
                 const int64_t *positions, const float *cos_table, const float *sin_table, int64_t table_rows,
                 int threads);
int sgc_silu_mul_f32(const float *gate_up, int64_t stride, int64_t rows, int64_t width, float *out,
                     int64_t out_stride, int threads);

/* paged_attention_cpu.c */
int sgc_paged_attention_f32(const float *q, int64_t q_stride, const float *k_new, const float *v_new,
                            int64_t new_stride, const int64_t *new_slots, int64_t num_tokens, float *k_buffer,
                            float *v_buffer, const int64_t *req_to_token, int64_t table_stride,
                            const int64_t *req_rows, const int64_t *prefix_lens, const int64_t *extend_lens,
                            const int64_t *query_starts, int64_t batch, int64_t num_heads, int64_t num_kv_heads,
                            int64_t head_dim, float scale, float *out, int num_threads);
int sgc_paged_decode_grouped_f32(const float *q, int64_t q_stride, const float *k_new, const float *v_new,
                                 int64_t new_stride, const int64_t *new_slots, int64_t batch, float *k_buffer,
                                 float *v_buffer, const int64_t *req_to_token, int64_t table_stride,
                                 const int64_t *req_rows, const int64_t *seq_lens, const int64_t *item_starts,
                                 const int64_t *members, const int64_t *item_shared, int64_t items,
                                 int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, float scale, float *out,
                                 int num_threads);

#endif
