/* gmn_cpu.h - the seam of the shim's CPU kernel wing (src/cpu/): the channels-last ops of the CPU graph, and the
 * override that swaps some of ggml's CPU nodes for the shim's kernels. The wing depends on ggml and the public
 * header only; the rest of the shim reaches it through this header alone.
 *
 * Activations here are channels-last: [C, W, H, N], channels fastest. */
#ifndef GMN_CPU_H
#define GMN_CPU_H

#include "ggml_mnist.h"

#include <stdint.h>

#include "ggml.h"

/* ---- channels-last ops (gmn_cl_ops.c), as ggml custom ops that run on ggml's threads ---- */
/* im2col of x [C, W, H, N] (needing no gradient): [rows, OW*OH*N], a column per output pixel ordered c fastest,
 * then kernel column, then kernel row; zero outside the image and in rows C*k*k .. rows-1 */
struct ggml_tensor * gmn_cl_im2col(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int64_t rows);
/* a [K, O] as the top left of a zero [rows, cols] (rows >= K, cols >= O), with a gradient */
struct ggml_tensor * gmn_cl_pad(struct ggml_context * ctx, struct ggml_tensor * a, int64_t rows, int64_t cols);
/* the first n outputs of every column of a product y [N, P], as a contiguous [n, P] */
struct ggml_tensor * gmn_cl_first_outputs(struct ggml_context * ctx, struct ggml_tensor * y, int64_t n);
/* im2col of x [C, W, H, N] with a gradient (get_rows of x's pixels): [C*(k*k + extra), OW*OH*N], the last
 * C*extra rows of each column zero */
struct ggml_tensor * gmn_cl_gather_cols(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int extra);
/* channels-first [W, H, C, N] to channels-last (to_cf 0), or back (to_cf 1), with a contiguous gradient */
struct ggml_tensor * gmn_cl_relayout(struct ggml_context * ctx, struct ggml_tensor * x, int to_cf);
/* tanh or GELU (kind: GMN_LAYER_TANH or GMN_LAYER_GELU) of a contiguous f32 x, for a graph that differentiates it */
struct ggml_tensor * gmn_cl_act_linearized(struct ggml_context * ctx, struct ggml_tensor * x, int kind);
/* max pooling of x [C, W, H, N] (padded cells never win); grad: through a gather that ggml differentiates */
struct ggml_tensor * gmn_cl_maxpool(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int grad);
/* average pooling of x [C, W, H, N] (zeros in the padding count) as a matrix product with outputs >= C columns,
 * the pooled map being the first C of them; grad: the window's pixels gathered with a gradient */
struct ggml_tensor * gmn_cl_avgpool(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int grad,
                                    int64_t outputs);

/* The custom ops inside the ones above, for tests: the rows of x that gmn_cl_gather_cols gathers (I32
 * [(k*k + extra)*OW*OH*N], the kernel offset fastest; a position in the padding, and each extra row, reads row
 * W*H*N); max pooling's picks (I32 [C*OW*OH*N]: the flat index into x of the first largest element of each
 * window); average pooling's matrix ([C*k*k, outputs]: column c < C holds 1/(k*k) in the rows of channel c, the
 * other columns 0); and f'(x) then f(x) - x*f'(x) of gmn_cl_act_linearized ([nelements(x), 2]). */
struct ggml_tensor * gmn_cl_im2col_rows(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int extra);
struct ggml_tensor * gmn_cl_pool_argmax(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad);
struct ggml_tensor * gmn_cl_avg_matrix(struct ggml_context * ctx, int64_t C, int k, int64_t outputs);
struct ggml_tensor * gmn_cl_act_values(struct ggml_context * ctx, struct ggml_tensor * x, int kind);

/* ---- the override (gmn_override.c): the shim's kernels for some of ggml's CPU nodes ---- */
/* mul_mat of F32 matrices with fewer columns (a few images) stays with ggml: copying the shim's panels would
 * cost more than it saves (gmn_cpu_kernels_adopt) */
#define GMN_MM_MIN_N 64
/* The shim's kernels for ggml ops of the CPU graph (op parameter templates), swapped in before each node runs by
 * gmn_cpu_kernels_adopt: out_prod, mul_mat of F32 matrices, get_rows, get_rows_back, repeat_back onto a vector,
 * acc at 0, repeat of a vector into rows. Each computes the values ggml's kernel would, bit for bit except for the
 * two matrix products, whose sums run in another order (the same one whatever the thread count). */
struct gmn_cpu_kernels {
    struct ggml_tensor * tmpl[GMN_KERNEL_COUNT]; /* indexed by enum gmn_kernel */
    int64_t            * taken;                  /* per kernel, nodes taken (the plan's counters) */
};
/* Templates made in ctx (which must outlive their use); taken: GMN_KERNEL_COUNT counters, incremented. */
void gmn_cpu_kernels_init(struct ggml_context * ctx, struct gmn_cpu_kernels * k, int64_t * taken);
/* Turns node t into the shim's kernel for its op when there is one and t's operands are of the plain kinds it
 * handles; returns whether it did. Call before t runs (a scheduler's eval callback, or on a built graph). */
int  gmn_cpu_kernels_adopt(struct ggml_tensor * t, const struct gmn_cpu_kernels * k);

#endif
