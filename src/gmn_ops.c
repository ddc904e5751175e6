/* gmn_ops.c - the CPU graph's own operators, as ggml custom ops that run on ggml's threads.
 *
 * None of them is differentiated: each either reads only tensors that need no gradient (the input images,
 * shapes) or writes I32 indices, which ggml's backward pass never differentiates (get_rows' row indices).
 * The gradients flow through ggml's own ops around them: get_rows (whose backward scatters the gradient
 * back), mul_mat, add and acc. Activations here are channels-last: [C, W, H, N], channels fastest.
 *
 * A window (kernel or pool) is packed into the op's userdata as k | stride << 8 | pad << 16 | extra << 24, so
 * that no pointer to memory outliving the graph is needed. */
#include "gmn_internal.h"

#include <math.h>
#include <stdint.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct gmn_window {
    int64_t k, s, p, e; /* kernel side, stride, padding; e: zero rows appended to each gathered column */
};

static void * gmn_window_pack_extra(int k, int stride, int pad, int extra) {
    return (void *) (uintptr_t) ((uint32_t) k | (uint32_t) stride << 8 | (uint32_t) pad << 16 | (uint32_t) extra << 24);
}

static void * gmn_window_pack(int k, int stride, int pad) {
    return gmn_window_pack_extra(k, stride, pad, 0);
}

static struct gmn_window gmn_window_unpack(void * ud) {
    const uintptr_t v = (uintptr_t) ud;
    return (struct gmn_window) { (int64_t) (v & 0xff), (int64_t) ((v >> 8) & 0xff), (int64_t) ((v >> 16) & 0xff),
                                 (int64_t) ((v >> 24) & 0xff) };
}

static int64_t gmn_out_side(int64_t in, struct gmn_window w) {
    return (in + 2 * w.p - w.k) / w.s + 1;
}

/* rows [*lo, *hi) of n for thread ith of nth */
static void gmn_split(int64_t n, int ith, int nth, int64_t * lo, int64_t * hi) {
    const int64_t per = (n + nth - 1) / nth;
    *lo = per * ith < n ? per * ith : n;
    *hi = *lo + per < n ? *lo + per : n;
}

typedef float gmn_v8 __attribute__((vector_size(32)));
typedef int32_t gmn_i8 __attribute__((vector_size(32)));

static inline gmn_v8 gmn_ld8(const float * p) {
    gmn_v8 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void gmn_st8(float * p, gmn_v8 v) {
    memcpy(p, &v, sizeof(v));
}

/* each of ggml's threads keeps a scratch buffer of GMN_THREAD_FLOATS floats between calls (the matrix products'
 * panels); NULL when there is no memory for it */
static float * gmn_thread_panels(void);
#define GMN_THREAD_FLOATS ((int64_t) 128 * 1024) /* 512 KB */

/* output pixel q = (n * OH + oy) * OW + ox of a batch, walked in order without a division per pixel */
struct gmn_pixel {
    int64_t ox, oy, n, OW, OH;
};

static struct gmn_pixel gmn_pixel_at(int64_t q, int64_t OW, int64_t OH) {
    const struct gmn_pixel p = { q % OW, (q / OW) % OH, q / (OW * OH), OW, OH };
    return p;
}

static inline void gmn_pixel_next(struct gmn_pixel * p) {
    if (++p->ox == p->OW) {
        p->ox = 0;
        if (++p->oy == p->OH) {
            p->oy = 0;
            p->n++;
        }
    }
}

/* the output columns [*lo, *hi) of a row of OW whose kernel column kx lands inside an image row of W pixels */
static void gmn_inside_cols(int64_t kx, int64_t W, int64_t OW, struct gmn_window w, int64_t * lo, int64_t * hi) {
    const int64_t before = w.p - kx;         /* ox * s must reach this for the pixel to be inside */
    const int64_t last   = W - 1 + w.p - kx; /* and may not pass this */
    *lo = before <= 0 ? 0 : (before + w.s - 1) / w.s;
    *hi = last < 0 ? 0 : last / w.s + 1;
    *hi = *hi < OW ? *hi : OW;
    *lo = *lo < *hi ? *lo : *hi;
}

/* im2col of a channels-last x [C, W, H, N] (src 0, needing no gradient): dst [K, OW*OH*N] with the
 * column of output pixel p ordered c fastest, then kernel column, then kernel row; zero outside the image,
 * and zero in rows C*k*k..K-1 (K may be rounded up for a faster matrix product). A thread takes whole rows of
 * output pixels. For each, it copies the k input rows the row's windows cover into its scratch buffer with
 * their zero padding, so that each window row is k*C consecutive floats there, copied 8 at a time: a store may
 * run up to 7 floats past its window row, where the next stores (or the padding's zeros) overwrite it; only
 * the columns whose stores would pass the end of the thread's columns are copied exactly. Without room for the
 * rows, one kernel offset at a time. */
GMN_CLONES static void gmn_op_im2col(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const struct ggml_tensor * x = dst->src[0];
    const struct gmn_window w = gmn_window_unpack(ud);
    const int64_t C = x->ne[0], W = x->ne[1], H = x->ne[2];
    const int64_t OW = gmn_out_side(W, w), OH = gmn_out_side(H, w), KD = dst->ne[0], K = C * w.k * w.k;
    const int64_t rows = OW > 0 ? dst->ne[1] / OW : 0; /* output rows of all the images: OH * N */
    const int64_t KC = w.k * C, PW = (W + 2 * w.p) * C; /* a window row; a padded input row */
    const float * xs = (const float *) x->data;
    int64_t lo, hi;
    gmn_split(rows, ith, nth, &lo, &hi);
    float * pad = lo < hi && w.k * PW + 8 <= GMN_THREAD_FLOATS ? gmn_thread_panels() : NULL;
    if (pad != NULL) {
        memset(pad + w.k * PW, 0, 8 * sizeof(float)); /* what the last 8-float loads read past the rows */
    }
    const float * const end = (const float *) dst->data + hi * OW * KD; /* past the thread's columns */
    for (int64_t ro = lo; ro < hi; ro++) {
        const int64_t n = ro / OH, oy = ro % OH;
        float * out = (float *) dst->data + ro * OW * KD;
        if (pad != NULL) {
            for (int64_t ky = 0; ky < w.k; ky++) {
                const int64_t iy = oy * w.s - w.p + ky;
                float * pr = pad + ky * PW;
                if (iy < 0 || iy >= H) {
                    memset(pr, 0, (size_t) PW * sizeof(float));
                    continue;
                }
                memset(pr, 0, (size_t) (w.p * C) * sizeof(float));
                memcpy(pr + w.p * C, xs + (n * H + iy) * W * C, (size_t) (W * C) * sizeof(float));
                memset(pr + (w.p + W) * C, 0, (size_t) (w.p * C) * sizeof(float));
            }
            for (int64_t ox = 0; ox < OW; ox++) {
                float * col = out + ox * KD;
                const float * src = pad + ox * w.s * C;
                if (col + (w.k - 1) * KC + (KC + 7) / 8 * 8 > end) { /* a store would pass the thread's columns */
                    for (int64_t ky = 0; ky < w.k; ky++) {
                        memcpy(col + ky * KC, src + ky * PW, (size_t) KC * sizeof(float));
                    }
                } else {
                    for (int64_t ky = 0; ky < w.k; ky++) {
                        for (int64_t i = 0; i < KC; i += 8) {
                            gmn_st8(col + ky * KC + i, gmn_ld8(src + ky * PW + i));
                        }
                    }
                }
                if (KD > K) {
                    memset(col + K, 0, (size_t) (KD - K) * sizeof(float));
                }
            }
            continue;
        }
        for (int64_t ox = 0; ox < OW && KD > K; ox++) {
            memset(out + ox * KD + K, 0, (size_t) (KD - K) * sizeof(float));
        }
        for (int64_t ky = 0; ky < w.k; ky++) {
            const int64_t iy = oy * w.s - w.p + ky;
            for (int64_t kx = 0; kx < w.k; kx++) {
                float * col = out + (ky * w.k + kx) * C; /* this offset's C rows of output pixel 0 */
                int64_t xa = 0, xb = 0;
                if (iy >= 0 && iy < H) {
                    gmn_inside_cols(kx, W, OW, w, &xa, &xb);
                }
                for (int64_t ox = 0; ox < xa; ox++) {
                    memset(col + ox * KD, 0, (size_t) C * sizeof(float));
                }
                if (xa < xb) {
                    const float * v = xs + ((n * H + iy) * W + xa * w.s - w.p + kx) * C; /* the pixel of column xa */
                    for (int64_t ox = xa; ox < xb; ox++, v += w.s * C) {
                        memcpy(col + ox * KD, v, (size_t) C * sizeof(float));
                    }
                }
                for (int64_t ox = xb; ox < OW; ox++) {
                    memset(col + ox * KD, 0, (size_t) C * sizeof(float));
                }
            }
        }
    }
}

/* The rows of a channels-last x [C, W, H, N] (src 0, read for its shape only) that im2col would gather, for
 * get_rows: dst I32 [(k*k + e)*OW*OH*N], the kernel offset fastest, then e more rows; a position outside the
 * image, and each of the e rows, reads row W*H*N, which the caller makes a zero row. */
static void gmn_op_im2col_rows(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const struct ggml_tensor * x = dst->src[0];
    const struct gmn_window w = gmn_window_unpack(ud);
    const int64_t W = x->ne[1], H = x->ne[2], N = x->ne[3];
    const int64_t OW = gmn_out_side(W, w), OH = gmn_out_side(H, w), P = OW * OH * N, KK = w.k * w.k + w.e;
    const int32_t zero = (int32_t) (W * H * N);
    int32_t * out = (int32_t *) dst->data;
    int64_t lo, hi;
    gmn_split(P, ith, nth, &lo, &hi);
    struct gmn_pixel px = gmn_pixel_at(lo, OW, OH);
    for (int64_t q = lo; q < hi; q++, gmn_pixel_next(&px)) {
        const int64_t ox = px.ox, oy = px.oy, n = px.n;
        int32_t * r = out + q * KK;
        for (int64_t ky = 0; ky < w.k; ky++) {
            const int64_t iy = oy * w.s - w.p + ky;
            for (int64_t kx = 0; kx < w.k; kx++) {
                const int64_t ix = ox * w.s - w.p + kx;
                *r++ = ix < 0 || ix >= W || iy < 0 || iy >= H ? zero : (int32_t) ((n * H + iy) * W + ix);
            }
        }
        for (int64_t e = 0; e < w.e; e++) {
            *r++ = zero;
        }
    }
}

/* The in-image part [*xa, *xb) x [*ya, *yb) of the pooling window of output pixel q of a [C, W, H, N] input, and
 * its image *n (a window with padding p <= k/2 always keeps at least one input pixel). */
static void gmn_pool_window(const struct gmn_pixel * q, int64_t W, int64_t H, struct gmn_window w,
                            int64_t * xa, int64_t * xb, int64_t * ya, int64_t * yb, int64_t * n) {
    const int64_t x0 = q->ox * w.s - w.p, y0 = q->oy * w.s - w.p;
    *n = q->n;
    *xa = x0 < 0 ? 0 : x0;
    *xb = x0 + w.k < W ? x0 + w.k : W;
    *ya = y0 < 0 ? 0 : y0;
    *yb = y0 + w.k < H ? y0 + w.k : H;
}

/* Max pooling's choice: for each output element of a channels-last x [C, W, H, N] (src 0), the flat index of
 * the first largest input element in its window (positions in the padding never win). dst I32 [C*OW*OH*N]. */
GMN_CLONES static void gmn_op_pool_argmax(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const struct ggml_tensor * x = dst->src[0];
    const struct gmn_window w = gmn_window_unpack(ud);
    const int64_t C = x->ne[0], W = x->ne[1], H = x->ne[2];
    const int64_t OW = gmn_out_side(W, w), OH = gmn_out_side(H, w), P = OW * OH * x->ne[3];
    const float * xs = (const float *) x->data;
    int32_t * out = (int32_t *) dst->data;
    const int64_t C8 = C / 8 * 8;
    const gmn_i8 iota = { 0, 1, 2, 3, 4, 5, 6, 7 };
    int64_t lo, hi;
    gmn_split(P, ith, nth, &lo, &hi);
    struct gmn_pixel px = gmn_pixel_at(lo, OW, OH);
    for (int64_t q = lo; q < hi; q++, gmn_pixel_next(&px)) {
        int64_t xa, xb, ya, yb, n;
        gmn_pool_window(&px, W, H, w, &xa, &xb, &ya, &yb, &n);
        int32_t * r = out + q * C;
        const int64_t first = ((n * H + ya) * W + xa) * C;
        for (int64_t c0 = 0; c0 < C8; c0 += 8) { /* 8 channels at a time, branch-free in vectors */
            gmn_v8 best = gmn_ld8(xs + first + c0);
            gmn_i8 pick = iota + (int32_t) (first + c0);
            for (int64_t iy = ya; iy < yb; iy++) {
                for (int64_t ix = xa; ix < xb; ix++) {
                    const int64_t base = ((n * H + iy) * W + ix) * C + c0;
                    const gmn_v8 v = gmn_ld8(xs + base);
                    const gmn_i8 gt = v > best; /* all ones where v is larger */
                    best = (gmn_v8) (((gmn_i8) v & gt) | ((gmn_i8) best & ~gt));
                    pick = ((iota + (int32_t) base) & gt) | (pick & ~gt);
                }
            }
            memcpy(r + c0, &pick, sizeof(pick));
        }
        for (int64_t c = C8; c < C; c++) { /* the rest one by one */
            float best = xs[first + c];
            int32_t pick = (int32_t) (first + c);
            for (int64_t iy = ya; iy < yb; iy++) {
                for (int64_t ix = xa; ix < xb; ix++) {
                    const int64_t e = ((n * H + iy) * W + ix) * C + c;
                    if (xs[e] > best) {
                        best = xs[e];
                        pick = (int32_t) e;
                    }
                }
            }
            r[c] = pick;
        }
    }
}

/* The flat index into x (src 0) of each element of x's other layout: channels-first [W, H, C, N] to
 * channels-last [C, W, H, N] when ud is NULL, else channels-last to channels-first. dst I32 [nelements(x)]. */
static void gmn_op_relayout(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const struct ggml_tensor * x = dst->src[0];
    const int to_cf = ud != NULL;
    const int64_t C = to_cf ? x->ne[0] : x->ne[2], W = to_cf ? x->ne[1] : x->ne[0], H = to_cf ? x->ne[2] : x->ne[1];
    const int64_t WH = W * H, CWH = C * WH;
    int32_t * out = (int32_t *) dst->data;
    int64_t lo, hi;
    gmn_split(ggml_nelements(x), ith, nth, &lo, &hi);
    for (int64_t q = lo; q < hi; q++) {
        const int64_t n = q / CWH, r = q % CWH;
        if (to_cf) { /* q = (w, h, c, n) */
            const int64_t wh = r % WH, c = r / WH;
            out[q] = (int32_t) (n * CWH + wh * C + c);
        } else {     /* q = (c, w, h, n) */
            const int64_t c = r % C, wh = r / C;
            out[q] = (int32_t) (n * CWH + c * WH + wh);
        }
    }
}

/* Max pooling's values, for graphs that need no gradient (prediction): dst F32 [C, OW, OH, N]. */
static void gmn_op_maxpool(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const struct ggml_tensor * x = dst->src[0];
    const struct gmn_window w = gmn_window_unpack(ud);
    const int64_t C = x->ne[0], W = x->ne[1], H = x->ne[2];
    const int64_t OW = gmn_out_side(W, w), OH = gmn_out_side(H, w), P = OW * OH * x->ne[3];
    const float * xs = (const float *) x->data;
    float * out = (float *) dst->data;
    int64_t lo, hi;
    gmn_split(P, ith, nth, &lo, &hi);
    struct gmn_pixel px = gmn_pixel_at(lo, OW, OH);
    for (int64_t q = lo; q < hi; q++, gmn_pixel_next(&px)) {
        int64_t xa, xb, ya, yb, n;
        gmn_pool_window(&px, W, H, w, &xa, &xb, &ya, &yb, &n);
        float * r = out + q * C;
        memcpy(r, xs + ((n * H + ya) * W + xa) * C, (size_t) C * sizeof(float));
        for (int64_t iy = ya; iy < yb; iy++) {
            for (int64_t ix = xa; ix < xb; ix++) {
                const float * v = xs + ((n * H + iy) * W + ix) * C;
                for (int64_t c = 0; c < C; c++) {
                    r[c] = v[c] > r[c] ? v[c] : r[c];
                }
            }
        }
    }
}

/* Average pooling's weights for a window of C channels (ud): dst [C*k*k, CP], column c < C holds 1/(k*k) in the
 * rows of channel c (rows are ordered channel fastest, as gmn_cl_gather_cols and gmn_cl_im2col order a window);
 * columns C .. CP are 0 (gmn_cl_avgpool). */
static void gmn_op_avg_matrix(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const int64_t R = dst->ne[0], CP = dst->ne[1], C = (int64_t) (intptr_t) ud;
    const float v = (float) C / (float) R;
    int64_t lo, hi;
    gmn_split(CP, ith, nth, &lo, &hi);
    for (int64_t c = lo; c < hi; c++) {
        float * col = (float *) dst->data + c * R;
        for (int64_t r = 0; r < R; r++) {
            col[r] = c < C && r % C == c ? v : 0.0f;
        }
    }
}

static void gmn_op_zeros(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    int64_t lo, hi;
    gmn_split(ggml_nelements(dst), ith, nth, &lo, &hi);
    memset((float *) dst->data + lo, 0, (size_t) (hi - lo) * sizeof(float));
}

struct ggml_tensor * gmn_cl_im2col(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int64_t rows) {
    const struct gmn_window w = { k, stride, pad, 0 };
    const int64_t P = gmn_out_side(x->ne[1], w) * gmn_out_side(x->ne[2], w) * x->ne[3];
    return ggml_custom_4d(ctx, GGML_TYPE_F32, rows, P, 1, 1, &x, 1, gmn_op_im2col, GGML_N_TASKS_MAX,
                          gmn_window_pack(k, stride, pad));
}

/* a 2-D a [ne0, ne1] zero-extended to [rows, cols] (a at the start); acc passes the gradient back to a */
struct ggml_tensor * gmn_cl_pad(struct ggml_context * ctx, struct ggml_tensor * a, int64_t rows, int64_t cols) {
    struct ggml_tensor * zeros = ggml_custom_4d(ctx, GGML_TYPE_F32, rows, cols, 1, 1, NULL, 0, gmn_op_zeros, GGML_N_TASKS_MAX, NULL);
    return ggml_acc(ctx, zeros, a, zeros->nb[1], zeros->nb[2], zeros->nb[3], 0);
}

struct ggml_tensor * gmn_cl_first_outputs(struct ggml_context * ctx, struct ggml_tensor * y, int64_t n) {
    return ggml_cont(ctx, ggml_view_2d(ctx, y, n, y->ne[1], y->nb[1], 0));
}

/* The im2col columns of x [C, W, H, N] gathered with get_rows: [C*(k*k + extra), OW*OH*N], the last C*extra rows
 * zero (padding for a faster matrix product) */
struct ggml_tensor * gmn_cl_gather_cols(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int extra) {
    const struct gmn_window w = { k, stride, pad, extra };
    const int64_t C = x->ne[0], R = x->ne[1] * x->ne[2] * x->ne[3];
    const int64_t P = gmn_out_side(x->ne[1], w) * gmn_out_side(x->ne[2], w) * x->ne[3];
    struct ggml_tensor * rows = ggml_reshape_2d(ctx, x, C, R);
    if (pad > 0 || extra > 0) {
        /* one zero row after the pixels, for the positions in the padding and the extra rows */
        rows = gmn_cl_pad(ctx, rows, C, R + 1);
    }
    const int64_t KK = (int64_t) k * k + extra;
    struct ggml_tensor * idx = ggml_custom_4d(ctx, GGML_TYPE_I32, KK * P, 1, 1, 1, &x, 1, gmn_op_im2col_rows,
                                              GGML_N_TASKS_MAX, gmn_window_pack_extra(k, stride, pad, extra));
    return ggml_reshape_2d(ctx, ggml_get_rows(ctx, rows, idx), C * KK, P);
}

struct ggml_tensor * gmn_cl_maxpool(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int grad) {
    const struct gmn_window w = { k, stride, pad, 0 };
    const int64_t C = x->ne[0], OW = gmn_out_side(x->ne[1], w), OH = gmn_out_side(x->ne[2], w), N = x->ne[3];
    if (!grad) {
        return ggml_custom_4d(ctx, GGML_TYPE_F32, C, OW, OH, N, &x, 1, gmn_op_maxpool, GGML_N_TASKS_MAX, gmn_window_pack(k, stride, pad));
    }
    struct ggml_tensor * idx = ggml_custom_4d(ctx, GGML_TYPE_I32, C * OW * OH * N, 1, 1, 1, &x, 1, gmn_op_pool_argmax,
                                              GGML_N_TASKS_MAX, gmn_window_pack(k, stride, pad));
    struct ggml_tensor * picked = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, 1, ggml_nelements(x)), idx);
    return ggml_reshape_4d(ctx, picked, C, OW, OH, N);
}

/* A layout change that ggml can differentiate with a contiguous gradient (a permute's backward pass hands
 * the next op a non-contiguous gradient, which some of ggml's CPU backward kernels misread). */
struct ggml_tensor * gmn_cl_relayout(struct ggml_context * ctx, struct ggml_tensor * x, int to_cf) {
    struct ggml_tensor * idx = ggml_custom_4d(ctx, GGML_TYPE_I32, ggml_nelements(x), 1, 1, 1, &x, 1, gmn_op_relayout,
                                              GGML_N_TASKS_MAX, to_cf ? (void *) 1 : NULL);
    struct ggml_tensor * y = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, 1, ggml_nelements(x)), idx);
    return to_cf ? ggml_reshape_4d(ctx, y, x->ne[1], x->ne[2], x->ne[0], x->ne[3])
                 : ggml_reshape_4d(ctx, y, x->ne[2], x->ne[0], x->ne[1], x->ne[3]);
}

/* ---- element-wise activations for the training graph, as a linearisation --------------------------------
 * ggml's CPU backend has no backward pass for tanh, and building tanh or GELU from ops that have one costs five
 * element-wise passes forward and as many backward. Instead the shim computes, in one multi-threaded pass, the
 * derivative d = f'(x) and the offset c = f(x) - x*d (x*d rounded, as ggml's mul rounds it), and the graph
 * computes y = x*d + c with ggml's mul and add: y equals f(x) to a rounding, and its gradient is d. d and c need
 * no gradient: the op reads x through a one-element I32 node (ggml never differentiates I32 tensors), which also
 * keeps x alive and computed before the op runs. */
static void gmn_op_nop(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) dst, (void) ith, (void) nth, (void) ud;
}

/* tanh(x) to a few units in the last place, without libm (whose tanhf, through expm1f, was a tenth of a
 * lenet5 epoch), in straight-line code that the compiler vectorises: tanh(a) = -m / (2 + m) with
 * m = exp(-2a) - 1 for a = |x| <= 9 (beyond, tanh is 1 in float), exp as 2^n times a polynomial, and m taken
 * from the polynomial itself when n = 0 so that small x keep their relative precision. */
static inline float gmn_tanh_fast(float x) {
    const float a = fminf(fabsf(x), 9.0f);
    const float z = -2.0f * a;                                 /* [-18, 0] */
    const int32_t n = (int32_t) (z * 1.44269504f - 0.5f);      /* round(z / ln 2), z <= 0 */
    const float r = (z - (float) n * 0.693145752f) - (float) n * 1.42860677e-6f; /* |r| <= ln(2) / 2 */
    const float q = r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f +
                    r * 0.00138888892f))))); /* exp(r) - 1 */
    union { int32_t i; float f; } s = { (n + 127) * (1 << 23) };   /* 2^n, n in [-26, 0] */
    const float m = n == 0 ? q : (1.0f + q) * s.f - 1.0f;
    const float t = -m / (2.0f + m);
    return x < 0.0f ? -t : t;
}

/* the values (f in c, f' in d) of an element-wise activation, vectorisable */
GMN_CLONES static void gmn_act_values(int kind, const float * xs, float * d, float * c, int64_t lo, int64_t hi) {
    if (kind == GMN_LAYER_TANH) {
        for (int64_t i = lo; i < hi; i++) {
            const float t = gmn_tanh_fast(xs[i]);
            c[i] = t;
            d[i] = 1.0f - t * t;
        }
        return;
    }
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int64_t i = lo; i < hi; i++) { /* GELU, tanh approximation */
        const float v = fminf(fmaxf(xs[i], -10.0f), 10.0f); /* beyond, GELU is x or 0 to float precision */
        const float t = gmn_tanh_fast(k * (v + 0.044715f * v * v * v));
        const float f = 0.5f * v * (1.0f + t);
        const float g = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * v * v);
        const int big = fabsf(xs[i]) > 10.0f;
        c[i] = big ? (xs[i] > 0.0f ? xs[i] : 0.0f) : f;
        d[i] = big ? (xs[i] > 0.0f ? 1.0f : 0.0f) : g;
    }
}

static void gmn_op_act_lin(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    const struct ggml_tensor * x = dst->src[0]->src[0];
    const int kind = (int) (uintptr_t) ud;
    const int64_t n = dst->ne[0];
    const float * xs = (const float *) x->data;
    float * d = (float *) dst->data;
    float * c = d + n;
    int64_t lo, hi;
    gmn_split(n, ith, nth, &lo, &hi);
    gmn_act_values(kind, xs, d, c, lo, hi);
    for (int64_t i = lo; i < hi; i++) {
        volatile float p = xs[i] * d[i]; /* rounded on its own (as ggml's mul rounds it), never fused */
        c[i] = c[i] - p;
    }
}

/* tanh or GELU of a contiguous f32 x, for a graph that differentiates it (see above) */
struct ggml_tensor * gmn_cl_act_linearized(struct ggml_context * ctx, struct ggml_tensor * x, int kind) {
    const int64_t n = ggml_nelements(x);
    struct ggml_tensor * tok = ggml_custom_4d(ctx, GGML_TYPE_I32, 1, 1, 1, 1, &x, 1, gmn_op_nop, 1, NULL);
    struct ggml_tensor * dc = ggml_custom_4d(ctx, GGML_TYPE_F32, n, 2, 1, 1, &tok, 1, gmn_op_act_lin, GGML_N_TASKS_MAX,
                                             (void *) (uintptr_t) kind);
    const size_t nb1 = x->ne[0] * sizeof(float), nb2 = nb1 * x->ne[1], nb3 = nb2 * x->ne[2];
    struct ggml_tensor * d = ggml_view_4d(ctx, dc, x->ne[0], x->ne[1], x->ne[2], x->ne[3], nb1, nb2, nb3, 0);
    struct ggml_tensor * c = ggml_view_4d(ctx, dc, x->ne[0], x->ne[1], x->ne[2], x->ne[3], nb1, nb2, nb3, n * sizeof(float));
    return ggml_add(ctx, ggml_mul(ctx, x, d), c);
}

/* ---- matrix products for ggml's backward pass ------------------------------------------------------ */
/* ggml's autodiff writes the gradients of a matrix product as out_prod ops, d[i0, i1] = sum_j a[i0, j] b[i1, j],
 * and its CPU kernel for them accumulates one column of a at a time through a single register, which bounds
 * it to a few flops per cycle; in a training step it takes 40-50 % of the time of the dense and wide
 * convolutional networks. gmn_outer computes exactly the same sum (in another order, so the values agree
 * to rounding) in 16 x 6 register tiles that the compiler keeps in vector registers, on all of ggml's threads.
 * gmn_train.c swaps it in for out_prod nodes of the CPU training graph (gmn_cpu_kernels_adopt) before they run. */

/* d[0..8*V) x [0..n) (column c at d + c*ldd) = (acc ? d : 0) + sum over j < J of a[j*lda + 0..8*V) times
 * b[j*sbj + c*sbi], for V = 1 or 2 vectors of rows and n <= 6 columns: 2*6 accumulators fit in AVX2's registers.
 * Every element sums j = 0, 1, ... the same way (one fused multiply-add per term where the CPU has FMA),
 * whatever the shape of its tile. */
static inline __attribute__((always_inline)) void gmn_tile(const int V, const int n, int64_t J, const float * a, int64_t lda,
                                                           const float * b, int64_t sbi, int64_t sbj, float * d, int64_t ldd, int acc) {
    /* twelve named accumulators, not arrays: arrays of vectors made GCC clear them in memory first (rep stos, 5 % of
     * a tile of 256 terms), and walking pointers instead of a counter keeps every integer in a register */
    gmn_v8 x0 = { 0 }, x1 = { 0 }, x2 = { 0 }, x3 = { 0 }, x4 = { 0 }, x5 = { 0 };
    gmn_v8 y0 = { 0 }, y1 = { 0 }, y2 = { 0 }, y3 = { 0 }, y4 = { 0 }, y5 = { 0 };
#define GMN_TILE_LOAD(t)                                  \
    if (n > t) {                                          \
        x##t = gmn_ld8(d + t * ldd);                      \
        if (V > 1) {                                      \
            y##t = gmn_ld8(d + t * ldd + 8);              \
        }                                                 \
    }
    if (acc) {
        GMN_TILE_LOAD(0) GMN_TILE_LOAD(1) GMN_TILE_LOAD(2) GMN_TILE_LOAD(3) GMN_TILE_LOAD(4) GMN_TILE_LOAD(5)
    }
#undef GMN_TILE_LOAD
    const float * ar = a, * br = b;
    const float * const a_end = a + J * lda;
    for (; ar != a_end; ar += lda, br += sbj) {
        const gmn_v8 a0 = gmn_ld8(ar);
        const gmn_v8 a1 = V > 1 ? gmn_ld8(ar + 8) : (gmn_v8) { 0 };
#define GMN_TILE_TERM(t)                                  \
        if (n > t) {                                      \
            const float bt = br[t * sbi];                 \
            x##t += a0 * bt;                              \
            if (V > 1) {                                  \
                y##t += a1 * bt;                          \
            }                                             \
        }
        GMN_TILE_TERM(0) GMN_TILE_TERM(1) GMN_TILE_TERM(2) GMN_TILE_TERM(3) GMN_TILE_TERM(4) GMN_TILE_TERM(5)
#undef GMN_TILE_TERM
    }
#define GMN_TILE_STORE(t)                                 \
    if (n > t) {                                          \
        gmn_st8(d + t * ldd, x##t);                       \
        if (V > 1) {                                      \
            gmn_st8(d + t * ldd + 8, y##t);               \
        }                                                 \
    }
    GMN_TILE_STORE(0) GMN_TILE_STORE(1) GMN_TILE_STORE(2) GMN_TILE_STORE(3) GMN_TILE_STORE(4) GMN_TILE_STORE(5)
#undef GMN_TILE_STORE
}

#define GMN_TILE_FN(V, N)                                                                                            \
    GMN_CLONES static void gmn_tile_##V##_##N(int64_t J, const float * a, int64_t lda, const float * b, int64_t sbi, \
                                              int64_t sbj, float * d, int64_t ldd, int acc) {                        \
        gmn_tile(V, N, J, a, lda, b, sbi, sbj, d, ldd, acc);                                                         \
    }
GMN_TILE_FN(1, 1) GMN_TILE_FN(1, 2) GMN_TILE_FN(1, 3) GMN_TILE_FN(1, 4) GMN_TILE_FN(1, 5) GMN_TILE_FN(1, 6)
GMN_TILE_FN(2, 1) GMN_TILE_FN(2, 2) GMN_TILE_FN(2, 3) GMN_TILE_FN(2, 4) GMN_TILE_FN(2, 5) GMN_TILE_FN(2, 6)

typedef void (*gmn_tile_fn)(int64_t, const float *, int64_t, const float *, int64_t, int64_t, float *, int64_t, int);
static const gmn_tile_fn GMN_TILES[2][6] = {
    { gmn_tile_1_1, gmn_tile_1_2, gmn_tile_1_3, gmn_tile_1_4, gmn_tile_1_5, gmn_tile_1_6 },
    { gmn_tile_2_1, gmn_tile_2_2, gmn_tile_2_3, gmn_tile_2_4, gmn_tile_2_5, gmn_tile_2_6 },
};

/* A tile of 8 rows from a panel p (8 floats a term, zeros below m) of which only the first m < 8 are kept: the
 * same sums as a tile of m rows, through a buffer, so that d's rows below m are neither read nor written. */
static void gmn_tile_kept(int64_t J, const float * p, const float * b, int64_t sbi, int64_t sbj, float * d, int64_t ldd,
                          int64_t m, int64_t n, int acc) {
    float tmp[6 * 8] = { 0 };
    for (int64_t c = 0; c < n && acc; c++) {
        memcpy(tmp + c * 8, d + c * ldd, (size_t) m * sizeof(float));
    }
    GMN_TILES[0][n - 1](J, p, 8, b, sbi, sbj, tmp, 8, acc);
    for (int64_t c = 0; c < n; c++) {
        memcpy(d + c * ldd, tmp + c * 8, (size_t) m * sizeof(float));
    }
}

/* a tile of m < 8 rows and n <= 6 columns */
GMN_CLONES static void gmn_tile_edge(int64_t J, const float * a, int64_t lda, const float * b, int64_t sbi, int64_t sbj,
                                     float * d, int64_t ldd, int64_t m, int64_t n, int acc) {
    float s[6][8] = { { 0 } };
    for (int64_t c = 0; c < n && acc; c++) {
        memcpy(s[c], d + c * ldd, (size_t) m * sizeof(float));
    }
    for (int64_t j = 0; j < J; j++) {
        const float * ar = a + j * lda;
        const float * br = b + j * sbj;
        for (int64_t c = 0; c < n; c++) {
            const float bc = br[c * sbi];
            for (int64_t i = 0; i < m; i++) {
                s[c][i] += ar[i] * bc;
            }
        }
    }
    for (int64_t c = 0; c < n; c++) {
        memcpy(d + c * ldd, s[c], (size_t) m * sizeof(float));
    }
}

/* The tiling of an M x N result: row tiles of 16, then one of 8, then one of the rest (< 8); column tiles of at
 * most 6, as even as possible (8 columns are 4 + 4, not 6 + 2, so that two threads share them evenly). It
 * depends on the shape only, never on the number of threads. */
struct gmn_tiling {
    int64_t M, N, tm, tn, n_base, n_more; /* tn column tiles: the first n_more have n_base + 1 columns */
    int by_rows;                          /* tiles are numbered along rows of tiles (else down columns) */
};

static struct gmn_tiling gmn_tiling_of(int64_t M, int64_t N) {
    struct gmn_tiling g = { M, N, M / 16 + (M % 16 >= 8) + (M % 8 > 0), (N + 5) / 6, 0, 0, 0 };
    if (g.tn > 0) {
        g.n_base = N / g.tn;
        g.n_more = N % g.tn;
    }
    return g;
}

/* the rows of row tile ti: the first, i0, and how many, m (16, 8 or the last 1..7) */
static void gmn_tile_rows(const struct gmn_tiling * g, int64_t ti, int64_t * i0, int64_t * m) {
    const int64_t full = g->M / 16;
    if (ti < full) {
        *i0 = ti * 16;
        *m  = 16;
    } else if (ti == full && g->M % 16 >= 8) {
        *i0 = full * 16;
        *m  = 8;
    } else {
        *i0 = g->M - g->M % 8;
        *m  = g->M % 8;
    }
}

/* the first column of column tile tj (tj = tn: N) */
static int64_t gmn_col_start(const struct gmn_tiling * g, int64_t tj) {
    return tj * g->n_base + (tj < g->n_more ? tj : g->n_more);
}

/* the row tile of tile t in the tiling's order */
static int64_t gmn_tile_row(const struct gmn_tiling * g, int64_t t) {
    return g->by_rows ? t / g->tn : t % g->tm;
}

/* tile t in the tiling's order: rows i0 .. i0 + m, columns i1 .. i1 + n */
static void gmn_tile_at(const struct gmn_tiling * g, int64_t t, int64_t * i0, int64_t * m, int64_t * i1, int64_t * n) {
    const int64_t tj = g->by_rows ? t % g->tn : t / g->tm;
    gmn_tile_rows(g, gmn_tile_row(g, t), i0, m);
    *i1 = gmn_col_start(g, tj);
    *n  = g->n_base + (tj < g->n_more);
}

/* The sum over j runs in blocks of GMN_OUTER_JB, each block visiting all of this thread's tiles, so that a
 * block of a (the im2col columns of a wide convolution are tens of megabytes) is read from cache, not memory,
 * by every tile. Two orders of the tiles:
 * - down columns of tiles, when b is large (the gradient of a convolution's input: N is the pixels of a batch,
 *   J the channels): a thread's consecutive tiles then share b's columns, which stay in the L1 cache;
 * - along rows of tiles, when a block of b fits in the L2 cache and several tiles share each row of tiles (a
 *   weight gradient: N is the outputs, J the pixels or images). For up to GMN_PANEL_TILES rows of tiles at a
 *   time, the thread first copies the rows of a that they use out of the block, reading it in memory order, into
 *   one contiguous panel per row of tiles, which stays in the L1 cache for all the tiles of its row (in place, a
 *   tile would read one cache line from each of 256 rows of a that lie a row of a apart).
 * Each output element sums j = 0, 1, ... in order, whatever the order, the panels or the number of threads. */
#define GMN_OUTER_JB 256
#define GMN_PANEL_TILES (GMN_THREAD_FLOATS / (16 * GMN_OUTER_JB)) /* 32 */
#define GMN_OUTER_B_BYTES (256 * 1024) /* a block of b this size or less stays in the L2 cache */

/* each of ggml's threads keeps its panels between calls (512 KB), freed when the thread ends */
static pthread_key_t g_panel_key;
static int g_panel_key_ok;
static pthread_once_t g_panel_once = PTHREAD_ONCE_INIT;
static void gmn_panel_key_init(void) {
    g_panel_key_ok = pthread_key_create(&g_panel_key, free) == 0;
}

static float * gmn_thread_panels(void) {
    pthread_once(&g_panel_once, gmn_panel_key_init);
    if (!g_panel_key_ok) {
        return NULL; /* no key left: the tiles read a in place */
    }
    float * p = pthread_getspecific(g_panel_key);
    if (p == NULL) {
        p = aligned_alloc(64, (size_t) GMN_THREAD_FLOATS * sizeof(float));
        if (p != NULL && pthread_setspecific(g_panel_key, p) != 0) {
            free(p);
            p = NULL;
        }
    }
    return p;
}

/* an out_prod node's shape, d [M, N] = a [M, J] b [N, J]^T, with its strides in floats: a's rows lda apart,
 * b's elements sbi and its rows sbj apart, d's columns ldd apart */
struct gmn_outer_shape {
    int64_t M, N, J, lda, sbi, sbj, ldd;
};

static void gmn_outer_gemm(struct ggml_tensor * dst, const struct gmn_outer_shape * o, int ith, int nth);

static struct gmn_outer_shape gmn_outer_shape_of(const struct ggml_tensor * dst) {
    const struct ggml_tensor * a = dst->src[0];
    const struct ggml_tensor * b = dst->src[1];
    return (struct gmn_outer_shape) { dst->ne[0], dst->ne[1], a->ne[1], (int64_t) (a->nb[1] / sizeof(float)),
                                      (int64_t) (b->nb[0] / sizeof(float)), (int64_t) (b->nb[1] / sizeof(float)),
                                      (int64_t) (dst->nb[1] / sizeof(float)) };
}

/* d [M, N] = a b^T with M = 6..16, N = 8 or 16 and b's N values of each term side by side: the weight gradient of
 * a small convolution with 8 or 16 outputs (cnn's first, 9 x 8 summed over the pixels of a batch, where the other
 * orders pack a's 9 rows as a tile of 8 and one of 1: 5x slower). Computed as its transpose b a^T,
 * whose single row tile (b's N values of a term, read in place as they lie) serves every column tile (6 of a's
 * rows, also read in place), so nothing is copied into panels; the sums go into the thread's buffer, then into d.
 * Each element adds the same products in the same order (a product's two factors swap sides, which changes no
 * bit of a fused multiply-add), so the bits are those of the other orders. Returns 0, having done nothing, for
 * other shapes (with more of a's rows, reading them in place costs more than the panels: 72 x 16, 0.55x) or
 * without the buffer. */
static int gmn_outer_swapped(struct ggml_tensor * dst, const struct gmn_outer_shape * o, int ith, int nth) {
    const struct ggml_tensor * a = dst->src[0];
    const struct ggml_tensor * b = dst->src[1];
    const int64_t M = o->M, N = o->N, J = o->J, lda = o->lda, sbi = o->sbi, sbj = o->sbj, ldd = o->ldd;
    if ((N != 8 && N != 16) || sbi != 1 || M < 6 || M > 16 || J < GMN_OUTER_JB) {
        return 0;
    }
    float * T = gmn_thread_panels(); /* the transpose's columns, N floats each */
    if (T == NULL) {
        return 0;
    }
    const struct gmn_tiling g = gmn_tiling_of(N, M); /* one row tile of N, column tiles of a's rows */
    int64_t t0, t1;
    gmn_split(g.tn, ith, nth, &t0, &t1);
    const float * A = (const float *) a->data, * B = (const float *) b->data;
    for (int64_t j0 = 0; j0 < J; j0 += GMN_OUTER_JB) {
        const int64_t jn = J - j0 < GMN_OUTER_JB ? J - j0 : GMN_OUTER_JB;
        for (int64_t c = t0; c < t1; c++) {
            const int64_t i0 = gmn_col_start(&g, c), n = g.n_base + (c < g.n_more);
            GMN_TILES[N / 8 - 1][n - 1](jn, B + j0 * sbj, sbj, A + i0 + j0 * lda, 1, lda, T + i0 * N, N, j0 > 0);
        }
    }
    float * d = (float *) dst->data;
    for (int64_t i = gmn_col_start(&g, t0); i < gmn_col_start(&g, t1); i++) {
        for (int64_t k = 0; k < N; k++) {
            d[i + k * ldd] = T[i * N + k];
        }
    }
    return 1;
}

static void gmn_op_outer(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * a = dst->src[0];
    const struct ggml_tensor * b = dst->src[1];
    const struct gmn_outer_shape o = gmn_outer_shape_of(dst);
    const int64_t M = o.M, N = o.N, J = o.J, lda = o.lda, sbi = o.sbi, sbj = o.sbj, ldd = o.ldd;
    if (gmn_outer_swapped(dst, &o, ith, nth)) {
        return;
    }
    struct gmn_tiling g = gmn_tiling_of(M, N);
    const int64_t jb = J < GMN_OUTER_JB ? J : GMN_OUTER_JB;
    g.by_rows = lda > 16 && g.tn >= 3 && N * jb * (int64_t) sizeof(float) <= GMN_OUTER_B_BYTES;
    if (!g.by_rows && sbi == 1) {
        /* b's columns side by side but too many for L2 (fc's weight gradient at batch 1000: 784 x 500 over
         * 1 000 images), or too few to share a row of tiles: gmn_gemm's panels and chunks of b, the same sums */
        gmn_outer_gemm(dst, &o, ith, nth);
        return;
    }
    int64_t lo, hi;
    gmn_split(g.tm * g.tn, ith, nth, &lo, &hi);
    if (J == 0) {
        for (int64_t t = lo; t < hi; t++) {
            int64_t i0, m, i1, n;
            gmn_tile_at(&g, t, &i0, &m, &i1, &n);
            for (int64_t c = 0; c < n; c++) {
                memset((float *) dst->data + i0 + (i1 + c) * ldd, 0, (size_t) m * sizeof(float));
            }
        }
        return;
    }
    /* panels: along rows of tiles, for up to GMN_PANEL_TILES rows of tiles at a time; down columns, for all the
     * rows of tiles at once when there are no more than that; NULL (also out of memory): a is read in place */
    float * const panels = lda > 16 && (g.by_rows || g.tm <= GMN_PANEL_TILES) ? gmn_thread_panels() : NULL;
    const float * const A = (const float *) a->data;
    for (int64_t c0 = lo; c0 < hi;) {
        /* the chunk: tiles c0 .. c1, whose rows of tiles p0 .. p0 + pn have panels */
        int64_t c1 = hi, p0 = 0, pn = g.tm;
        if (g.by_rows) {
            p0 = c0 / g.tn;
            c1 = panels != NULL && (p0 + GMN_PANEL_TILES) * g.tn < hi ? (p0 + GMN_PANEL_TILES) * g.tn : hi;
            pn = (c1 - 1) / g.tn - p0 + 1;
        }
        for (int64_t j0 = 0; j0 < J; j0 += GMN_OUTER_JB) {
            const int64_t jn = J - j0 < GMN_OUTER_JB ? J - j0 : GMN_OUTER_JB;
            if (panels != NULL) {
                for (int64_t j = 0; j < jn; j++) {
                    const float * row = A + (j0 + j) * lda;
                    for (int64_t r = 0; r < pn; r++) { /* rows of 16 or 8; the last 1..7 padded with zeros to 8 */
                        int64_t i0, m;
                        gmn_tile_rows(&g, p0 + r, &i0, &m);
                        float * p = panels + r * 16 * GMN_OUTER_JB + j * (m < 8 ? 8 : m);
                        if (m == 16) {
                            gmn_st8(p, gmn_ld8(row + i0));
                            gmn_st8(p + 8, gmn_ld8(row + i0 + 8));
                        } else if (m == 8) {
                            gmn_st8(p, gmn_ld8(row + i0));
                        } else {
                            for (int64_t i = 0; i < 8; i++) {
                                p[i] = i < m ? row[i0 + i] : 0.0f;
                            }
                        }
                    }
                }
            }
            for (int64_t t = c0; t < c1; t++) {
                int64_t i0, m, i1, n;
                gmn_tile_at(&g, t, &i0, &m, &i1, &n);
                const float * bt = (const float *) b->data + i1 * sbi + j0 * sbj;
                float * dt = (float *) dst->data + i0 + i1 * ldd;
                const float * p = panels != NULL ? panels + (gmn_tile_row(&g, t) - p0) * 16 * GMN_OUTER_JB : NULL;
                if ((m == 16 || m == 8) && p != NULL) {
                    GMN_TILES[m / 8 - 1][n - 1](jn, p, m, bt, sbi, sbj, dt, ldd, j0 > 0);
                } else if (p != NULL) { /* the panel's 8 rows, of which the first m are kept */
                    gmn_tile_kept(jn, p, bt, sbi, sbj, dt, ldd, m, n, j0 > 0);
                } else if (m == 16 || m == 8) {
                    GMN_TILES[m / 8 - 1][n - 1](jn, A + i0 + j0 * lda, lda, bt, sbi, sbj, dt, ldd, j0 > 0);
                } else {
                    gmn_tile_edge(jn, A + i0 + j0 * lda, lda, bt, sbi, sbj, dt, ldd, m, n, j0 > 0);
                }
            }
        }
        c0 = c1;
    }
}

/* ---- matrix products (mul_mat) ------------------------------------------------------------------------------
 * ggml's mul_mat of two F32 matrices, dst [M, N] = a [K, M]^T b [K, N] (both read along K), runs llamafile's
 * sgemm, about 40-50 GFLOP/s per thread here, or for other shapes one dot product per output. gmn_gemm runs the
 * register tiles above on both kinds of product (out_prod too, whose sum runs along a's and b's rows):
 * - a row tile of a (16 or 8 rows; the last 1-7 rows padded with zeros to 8) is first copied into a panel that
 *   holds its 16 or 8 values of each term together, so that the tile reads them as consecutive floats; b's
 *   columns are read in place;
 * - a thread takes whole rows of tiles when there are enough of them (each row of a is then copied by one thread
 *   only), else a range of columns of tiles with all the rows;
 * - its panels go in groups that fit the 512 KB panel buffer, the sum in blocks of at most kb terms, and
 *   the columns in chunks of about GMN_MM_B_BYTES of b, which stay in the L2 cache while every row tile of the
 *   group passes over them.
 * Each output element sums k = 0, 1, ... in order with one fused multiply-add per term (where the CPU has FMA),
 * whatever the shape, the blocking or the number of threads, so the result depends on none of them. */
#define GMN_MM_KB 2048 /* mul_mat: a panel of the whole sum (up to 128 KB) in the L2 cache, b's columns in L1 */
#define GMN_MM_B_BYTES (96 * 1024)

struct gmn_gemm {
    int64_t M, N, K;
    const float * a;   /* element (i, k) of the left operand at a[i * a_i + k * a_k] */
    int64_t a_i, a_k;
    const float * b;   /* element (k, c) of the right operand at b[c * b_c + k * b_k] */
    int64_t b_c, b_k;
    float * d;         /* result (i, c) at d[i + c * ldd] */
    int64_t ldd;
    int64_t kb;        /* the most terms per block (a group of panels holds at least 4 of GMN_MM_KB terms) */
};

/* the panel of rows i0 .. i0 + m and terms k0 .. k0 + kn: p[k * w + i], w = 16 or 8 rows, zeros below m */
GMN_CLONES static void gmn_gemm_pack(const struct gmn_gemm * e, int64_t i0, int64_t m, int64_t k0, int64_t kn, float * p) {
    const int64_t w = m > 8 ? 16 : 8;
    if (e->a_i == 1) { /* rows next to each other: m floats per term */
        for (int64_t k = 0; k < kn; k++) {
            const float * src = e->a + i0 + (k0 + k) * e->a_k;
            if (m == 16) {
                gmn_st8(p + k * 16, gmn_ld8(src));
                gmn_st8(p + k * 16 + 8, gmn_ld8(src + 8));
            } else if (m == 8) {
                gmn_st8(p + k * 8, gmn_ld8(src));
            } else {
                for (int64_t i = 0; i < 8; i++) {
                    p[k * 8 + i] = i < m ? src[i] : 0.0f;
                }
            }
        }
        return;
    }
    for (int64_t i = 0; i < w; i++) { /* terms next to each other: one row at a time */
        const float * row = e->a + (i0 + i) * e->a_i + k0 * e->a_k;
        for (int64_t k = 0; k < kn; k++) {
            p[k * w + i] = i < m ? row[k * e->a_k] : 0.0f;
        }
    }
}

static void gmn_gemm_run(const struct gmn_gemm * e, int ith, int nth) {
    const struct gmn_tiling g = gmn_tiling_of(e->M, e->N);
    int64_t r0 = 0, r1 = g.tm, t0 = 0, t1 = g.tn;
    if (g.tm >= 2 * nth || (g.tn < nth && g.tm > 1)) { /* whole rows of tiles, or too few columns to share */
        gmn_split(g.tm, ith, nth, &r0, &r1);
    } else {
        gmn_split(g.tn, ith, nth, &t0, &t1);
    }
    if (r0 >= r1 || t0 >= t1) {
        return;
    }
    if (e->K == 0) { /* an empty sum */
        for (int64_t c = gmn_col_start(&g, t0); c < gmn_col_start(&g, t1); c++) {
            for (int64_t r = r0; r < r1; r++) {
                int64_t i0, m;
                gmn_tile_rows(&g, r, &i0, &m);
                memset(e->d + i0 + c * e->ldd, 0, (size_t) m * sizeof(float));
            }
        }
        return;
    }
    /* the thread's panel buffer; out of memory for it, one panel of GMN_OUTER_JB terms on the stack, which
     * blocks the sum differently but adds the same terms in the same order: the same bits */
    float local[16 * GMN_OUTER_JB];
    float * panels = gmn_thread_panels();
    int64_t room = GMN_THREAD_FLOATS;
    if (panels == NULL) {
        panels = local;
        room   = 16 * GMN_OUTER_JB;
    }
    int64_t kb = e->K < e->kb ? e->K : e->kb;
    kb = kb < room / 16 ? kb : room / 16;
    const int64_t group = room / (16 * kb); /* row tiles per group of panels */
    const int64_t chunk = GMN_MM_B_BYTES / (kb * (int64_t) sizeof(float)); /* columns of b per chunk (a tile at least) */
    for (int64_t k0 = 0; k0 < e->K; k0 += kb) {
        const int64_t kn = e->K - k0 < kb ? e->K - k0 : kb;
        for (int64_t q0 = r0; q0 < r1; q0 += group) {
            const int64_t q1 = q0 + group < r1 ? q0 + group : r1;
            for (int64_t r = q0; r < q1; r++) {
                int64_t i0, m;
                gmn_tile_rows(&g, r, &i0, &m);
                gmn_gemm_pack(e, i0, m, k0, kn, panels + (r - q0) * 16 * kb);
            }
            for (int64_t c0 = t0; c0 < t1;) {
                int64_t c1 = c0 + 1;
                while (c1 < t1 && gmn_col_start(&g, c1 + 1) - gmn_col_start(&g, c0) <= chunk) {
                    c1++;
                }
                for (int64_t r = q0; r < q1; r++) {
                    int64_t i0, m;
                    gmn_tile_rows(&g, r, &i0, &m);
                    const float * p = panels + (r - q0) * 16 * kb;
                    for (int64_t c = c0; c < c1; c++) {
                        const int64_t j = gmn_col_start(&g, c), n = g.n_base + (c < g.n_more);
                        const float * bt = e->b + j * e->b_c + k0 * e->b_k;
                        float * dt = e->d + i0 + j * e->ldd;
                        if (m == 16 || m == 8) {
                            GMN_TILES[m / 8 - 1][n - 1](kn, p, m, bt, e->b_c, e->b_k, dt, e->ldd, k0 > 0);
                        } else { /* a tile of 8 rows, of which the first m are kept */
                            gmn_tile_kept(kn, p, bt, e->b_c, e->b_k, dt, e->ldd, m, n, k0 > 0);
                        }
                    }
                }
                c0 = c1;
            }
        }
    }
}

/* mul_mat: dst [M, N] = a [K, M]^T b [K, N] */
static void gmn_op_matmul(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * a = dst->src[0];
    const struct ggml_tensor * b = dst->src[1];
    const struct gmn_gemm e = { dst->ne[0], dst->ne[1], a->ne[0], (const float *) a->data, (int64_t) (a->nb[1] / sizeof(float)), 1,
                                (const float *) b->data, (int64_t) (b->nb[1] / sizeof(float)), 1, (float *) dst->data,
                                (int64_t) (dst->nb[1] / sizeof(float)), GMN_MM_KB };
    gmn_gemm_run(&e, ith, nth);
}

/* out_prod through gmn_gemm: dst [M, N] = a [M, J] b [N, J]^T, in blocks of GMN_OUTER_JB terms */
static void gmn_outer_gemm(struct ggml_tensor * dst, const struct gmn_outer_shape * o, int ith, int nth) {
    const struct gmn_gemm e = { o->M, o->N, o->J, (const float *) dst->src[0]->data, 1, o->lda, (const float *) dst->src[1]->data,
                                o->sbi, o->sbj, (float *) dst->data, o->ldd, GMN_OUTER_JB };
    gmn_gemm_run(&e, ith, nth);
}

/* ---- other kernels of ggml's that the CPU training graph swaps for the shim's ----------------------------
 * ggml runs get_rows_back, repeat_back and acc's copy on one thread, and its get_rows spends more time on index
 * arithmetic than on copying the one-float rows that max pooling gathers. These compute exactly the same values,
 * in the same order per element, so swapping them changes no result bit; they only split the work over threads. */

/* rows lo .. hi of get_rows of rows of 8 floats (in its own function: the AVX2 clone of the whole op gathered
 * max pooling's single floats with vgatherdps, slower than plain loads here) */
GMN_CLONES static void gmn_get_rows8(float * d, const char * s, size_t snb, const int32_t * idx, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        gmn_st8(d + i * 8, gmn_ld8((const float *) (s + (size_t) idx[i] * snb)));
    }
}

/* get_rows: dst [nc, nr] = rows idx[0..nr) of src [nc, *] */
static void gmn_op_get_rows(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * src = dst->src[0];
    const int32_t * idx = (const int32_t *) dst->src[1]->data;
    const int64_t nc = src->ne[0], nr = dst->ne[1];
    const size_t snb = src->nb[1];
    const char * s = (const char *) src->data;
    float * d = (float *) dst->data;
    int64_t lo, hi;
    gmn_split(nr, ith, nth, &lo, &hi);
    if (nc == 1) {
        for (int64_t i = lo; i < hi; i++) {
            d[i] = *(const float *) (s + (size_t) idx[i] * snb);
        }
        return;
    }
    if (nc == 8) { /* a convolution's gathered columns of 8 channels: one vector a row */
        gmn_get_rows8(d, s, snb, idx, lo, hi);
        return;
    }
    for (int64_t i = lo; i < hi; i++) {
        const float * r = (const float *) (s + (size_t) idx[i] * snb);
        float * o = d + i * nc;
        for (int64_t c = 0; c < nc; c++) {
            o[c] = r[c];
        }
    }
}

/* get_rows_back: dst [nc, R] = 0, then row idx[i] += grad row i for i = 0, 1, ... (ggml's order); each thread
 * owns a range of dst's rows and scans all of idx */
GMN_CLONES static void gmn_op_get_rows_back(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * g = dst->src[0];
    const int32_t * idx = (const int32_t *) dst->src[1]->data;
    const int64_t nc = dst->ne[0], nr = g->ne[1];
    const size_t gnb = g->nb[1];
    const char * gs = (const char *) g->data;
    float * d = (float *) dst->data;
    int64_t lo, hi;
    gmn_split(dst->ne[1], ith, nth, &lo, &hi);
    memset(d + lo * nc, 0, (size_t) ((hi - lo) * nc) * sizeof(float));
    if (nc == 1 || nc == 8) { /* max pooling's picks; a convolution's gathered columns of 8 channels */
        for (int64_t i = 0; i < nr; i++) {
            const int64_t r = idx[i];
            if (r >= lo && r < hi) {
                const float * gr = (const float *) (gs + (size_t) i * gnb);
                if (nc == 1) {
                    d[r] = d[r] + gr[0];
                } else {
                    gmn_st8(d + r * 8, gmn_ld8(d + r * 8) + gmn_ld8(gr));
                }
            }
        }
        return;
    }
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = idx[i];
        if (r < lo || r >= hi) {
            continue;
        }
        const float * gr = (const float *) (gs + (size_t) i * gnb);
        float * o = d + r * nc;
        for (int64_t c = 0; c < nc; c++) {
            o[c] = o[c] + gr[c];
        }
    }
}

/* repeat_back onto a vector: dst [nc] = sum of src's rows [nc, ...] in memory order (ggml's order); each
 * thread owns a range of the columns */
static void gmn_op_sum_rows_into(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * src = dst->src[0];
    const int64_t nc = dst->ne[0], nr = ggml_nelements(src) / nc;
    const float * s = (const float *) src->data;
    float * d = (float *) dst->data;
    int64_t lo, hi;
    gmn_split((nc + 7) / 8, ith, nth, &lo, &hi);
    for (int64_t c0 = lo * 8; c0 < hi * 8 && c0 < nc; c0 += 8) {
        const int64_t w = nc - c0 < 8 ? nc - c0 : 8;
        float acc[8] = { 0 };
        for (int64_t r = 0; r < nr; r++) {
            const float * sr = s + r * nc + c0;
            if (w == 8) {
                for (int c = 0; c < 8; c++) {
                    acc[c] = acc[c] + sr[c];
                }
            } else {
                for (int64_t c = 0; c < w; c++) {
                    acc[c] = acc[c] + sr[c];
                }
            }
        }
        memcpy(d + c0, acc, (size_t) w * sizeof(float));
    }
}

/* acc at offset 0: dst = src0 plus src1, whose rows lie in dst the acc's nb1 bytes apart (a 2-D src1), or whose
 * elements are dst's first ones (any src1 that is contiguous in dst's layout). Adopting the node replaces its
 * op_params with the custom op's (a function, a task count and a pointer: 24 bytes), so gmn_cpu_kernels_adopt
 * keeps nb1 in the last of the 16 op_params words. */
#define GMN_ACC_STRIDE_PARAM 15
_Static_assert(GGML_MAX_OP_PARAMS / sizeof(int32_t) > GMN_ACC_STRIDE_PARAM, "op_params too small");
static void gmn_op_acc_front(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * src1 = dst->src[1];
    const float * a = (const float *) dst->src[0]->data;
    const float * b = (const float *) src1->data;
    const int two_d = src1->ne[2] == 1 && src1->ne[3] == 1 && src1->ne[1] > 1;
    const int64_t bc = two_d ? src1->ne[0] : ggml_nelements(src1), br = two_d ? src1->ne[1] : 1;
    const int64_t s = two_d ? (int64_t) dst->op_params[GMN_ACC_STRIDE_PARAM] / (int64_t) sizeof(float) : bc;
    float * d = (float *) dst->data;
    int64_t lo, hi;
    gmn_split(ggml_nelements(dst), ith, nth, &lo, &hi);
    if (d != a && hi > lo) {
        memcpy(d + lo, a + lo, (size_t) (hi - lo) * sizeof(float));
    }
    for (int64_t r = s > 0 ? lo / s : br; r < br && r * s < hi; r++) { /* s > 0: adopt turns an empty src1 away */
        const int64_t r0 = r * s;
        const int64_t c0 = lo > r0 ? lo - r0 : 0, c1 = hi - r0 < bc ? hi - r0 : bc;
        for (int64_t c = c0; c < c1; c++) {
            d[r0 + c] = a[r0 + c] + b[r * bc + c];
        }
    }
}

void gmn_cpu_kernels_init(struct ggml_context * ctx, struct gmn_cpu_kernels * k, int64_t * taken) {
    static const ggml_custom_op_t fn[GMN_KERNEL_COUNT] = {
        [GMN_KERNEL_OUTER] = gmn_op_outer, [GMN_KERNEL_MATMUL] = gmn_op_matmul, [GMN_KERNEL_GET_ROWS] = gmn_op_get_rows,
        [GMN_KERNEL_GET_ROWS_BACK] = gmn_op_get_rows_back, [GMN_KERNEL_SUM_ROWS_INTO] = gmn_op_sum_rows_into,
        [GMN_KERNEL_ACC_FRONT] = gmn_op_acc_front,
    };
    for (int i = 0; i < GMN_KERNEL_COUNT; i++) {
        k->tmpl[i] = ggml_custom_4d(ctx, GGML_TYPE_F32, 1, 1, 1, 1, NULL, 0, fn[i], GGML_N_TASKS_MAX, NULL);
    }
    k->taken = taken;
}

static int gmn_f32(const struct ggml_tensor * t) {
    return t != NULL && t->type == GGML_TYPE_F32;
}

static int gmn_plain_vector_i32(const struct ggml_tensor * t) {
    return t != NULL && t->type == GGML_TYPE_I32 && ggml_is_contiguous(t) && ggml_nelements(t) == t->ne[0];
}

/* f32 rows [ne0, ne1] with contiguous elements (rows may be strided) */
static int gmn_f32_rows(const struct ggml_tensor * t) {
    return gmn_f32(t) && t->nb[0] == sizeof(float) && t->ne[2] == 1 && t->ne[3] == 1 && t->nb[1] % sizeof(float) == 0;
}

static int gmn_adopt(struct ggml_tensor * t, const struct gmn_cpu_kernels * k, int kernel) {
    memcpy(t->op_params, k->tmpl[kernel]->op_params, sizeof(t->op_params));
    t->op = GGML_OP_CUSTOM;
    k->taken[kernel]++;
    return 1;
}

/* Turns node t of the CPU training graph into the shim's kernel for its op when there is one and t's operands
 * are of the plain kinds it handles; returns whether it did. Called before t runs (gmn_train.c's eval callback). */
int gmn_cpu_kernels_adopt(struct ggml_tensor * t, const struct gmn_cpu_kernels * k) {
    const struct ggml_tensor * a = t->src[0];
    const struct ggml_tensor * b = t->src[1];
    switch (t->op) {
        case GGML_OP_OUT_PROD:
            if (a == NULL || b == NULL || !gmn_f32(t) || !gmn_f32(a) || !gmn_f32(b) || ggml_n_dims(t) > 2 ||
                ggml_n_dims(a) > 2 || ggml_n_dims(b) > 2 || a->nb[0] != sizeof(float) || t->nb[0] != sizeof(float) ||
                a->nb[1] % sizeof(float) != 0 || b->nb[0] % sizeof(float) != 0 || b->nb[1] % sizeof(float) != 0 ||
                t->nb[1] % sizeof(float) != 0 || a->ne[1] != b->ne[1] || t->ne[0] != a->ne[0] || t->ne[1] != b->ne[0]) {
                return 0;
            }
            return gmn_adopt(t, k, GMN_KERNEL_OUTER);
        case GGML_OP_MUL_MAT:
            if (!gmn_f32_rows(a) || !gmn_f32_rows(b) || !gmn_f32_rows(t) || a->ne[0] != b->ne[0] || a->ne[0] == 0 ||
                t->ne[0] != a->ne[1] || t->ne[1] != b->ne[1] || t->ne[1] < GMN_MM_MIN_N) {
                return 0;
            }
            return gmn_adopt(t, k, GMN_KERNEL_MATMUL);
        case GGML_OP_GET_ROWS:
            if (!gmn_f32_rows(a) || !gmn_plain_vector_i32(b) || !gmn_f32(t) || !ggml_is_contiguous(t) ||
                t->ne[0] != a->ne[0] || t->ne[1] != b->ne[0] || ggml_nelements(t) != t->ne[0] * t->ne[1]) {
                return 0;
            }
            return gmn_adopt(t, k, GMN_KERNEL_GET_ROWS);
        case GGML_OP_GET_ROWS_BACK:
            if (!gmn_f32_rows(a) || !gmn_plain_vector_i32(b) || !gmn_f32(t) || !ggml_is_contiguous(t) ||
                t->ne[0] != a->ne[0] || a->ne[1] != b->ne[0] || ggml_nelements(t) != t->ne[0] * t->ne[1]) {
                return 0;
            }
            return gmn_adopt(t, k, GMN_KERNEL_GET_ROWS_BACK);
        case GGML_OP_REPEAT_BACK:
            if (!gmn_f32(a) || !gmn_f32(t) || !ggml_is_contiguous(a) || !ggml_is_contiguous(t) ||
                ggml_nelements(t) != t->ne[0] || a->ne[0] != t->ne[0] || t->ne[0] == 0) {
                return 0;
            }
            return gmn_adopt(t, k, GMN_KERNEL_SUM_ROWS_INTO);
        case GGML_OP_ACC: {
            const int32_t * p = (const int32_t *) t->op_params; /* nb1, nb2, nb3, offset, inplace */
            if (!gmn_f32(a) || !gmn_f32(b) || !gmn_f32(t) || !ggml_is_contiguous(a) || !ggml_is_contiguous(b) ||
                !ggml_is_contiguous(t) || !ggml_are_same_shape(a, t) || p[3] != 0 || ggml_nelements(b) > ggml_nelements(t) ||
                ggml_nelements(b) == 0) {
                return 0;
            }
            if (b->ne[2] == 1 && b->ne[3] == 1 && b->ne[1] > 1) {
                /* rows of b at a stride of p[0] bytes, inside t */
                if (p[0] <= 0 || p[0] % (int32_t) sizeof(float) != 0 || (size_t) p[0] < b->nb[1] ||
                    (b->ne[1] - 1) * (int64_t) (p[0] / (int32_t) sizeof(float)) + b->ne[0] > ggml_nelements(t)) {
                    return 0;
                }
            } else if ((b->ne[1] > 1 && (size_t) p[0] != b->nb[1]) || (b->ne[2] > 1 && (size_t) p[1] != b->nb[2]) ||
                       (b->ne[3] > 1 && (size_t) p[2] != b->nb[3])) {
                return 0;
            }
            const int32_t row_stride = p[0]; /* read before the custom op's parameters overwrite it */
            gmn_adopt(t, k, GMN_KERNEL_ACC_FRONT);
            t->op_params[GMN_ACC_STRIDE_PARAM] = row_stride;
            return 1;
        }
        default:
            return 0;
    }
}

/* Average pooling (zeros in the padding count, as in ggml's pool_2d) of a channels-last x: the window's pixels
 * gathered as im2col columns, times a constant [C*k*k, C] averaging matrix; its backward pass is a matrix
 * product and a scatter, all multi-threaded, with no layout change. The matrix has as many columns as the plan
 * wants a product's outputs padded to (gmn_plan_outputs), and the pooled map is the first C channels of it. */
struct ggml_tensor * gmn_cl_avgpool(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int grad,
                                    const struct gmn_plan * plan) {
    const struct gmn_window w = { k, stride, pad, 0 };
    const int64_t C = x->ne[0], OW = gmn_out_side(x->ne[1], w), OH = gmn_out_side(x->ne[2], w), N = x->ne[3];
    const int64_t CP = gmn_plan_outputs(plan, C, OW * OH * N);
    struct ggml_tensor * cols = grad ? gmn_cl_gather_cols(ctx, x, k, stride, pad, 0) : gmn_cl_im2col(ctx, x, k, stride, pad, C * k * k);
    struct ggml_tensor * avg = ggml_custom_4d(ctx, GGML_TYPE_F32, C * k * k, CP, 1, 1, NULL, 0, gmn_op_avg_matrix, GGML_N_TASKS_MAX,
                                              (void *) (intptr_t) C);
    struct ggml_tensor * y = ggml_mul_mat(ctx, avg, cols);
    if (CP != C) {
        y = gmn_cl_first_outputs(ctx, y, C);
    }
    return ggml_reshape_4d(ctx, y, C, OW, OH, N);
}
