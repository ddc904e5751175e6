/* gmn_cl_ops.c - the CPU graph's own operators, as ggml custom ops that run on ggml's threads.
 *
 * None of them is differentiated: each either reads only tensors that need no gradient (the input images,
 * shapes) or writes I32 indices, which ggml's backward pass never differentiates (get_rows' row indices).
 * The gradients flow through ggml's own ops around them: get_rows (whose backward scatters the gradient
 * back), mul_mat, add and acc. Activations here are channels-last: [C, W, H, N], channels fastest.
 *
 * A window (kernel or pool) is packed into the op's userdata as k | stride << 8 | pad << 16 | extra << 24, so
 * that no pointer to memory outliving the graph is needed. */
#include "gmn_cpu_impl.h"

#include <math.h>
#include <stdint.h>
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
    return ggml_reshape_2d(ctx, ggml_get_rows(ctx, rows, gmn_cl_im2col_rows(ctx, x, k, stride, pad, extra)), C * KK, P);
}

struct ggml_tensor * gmn_cl_im2col_rows(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int extra) {
    const struct gmn_window w = { k, stride, pad, extra };
    const int64_t P = gmn_out_side(x->ne[1], w) * gmn_out_side(x->ne[2], w) * x->ne[3];
    return ggml_custom_4d(ctx, GGML_TYPE_I32, ((int64_t) k * k + extra) * P, 1, 1, 1, &x, 1, gmn_op_im2col_rows,
                          GGML_N_TASKS_MAX, gmn_window_pack_extra(k, stride, pad, extra));
}

struct ggml_tensor * gmn_cl_maxpool(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int grad) {
    const struct gmn_window w = { k, stride, pad, 0 };
    const int64_t C = x->ne[0], OW = gmn_out_side(x->ne[1], w), OH = gmn_out_side(x->ne[2], w), N = x->ne[3];
    if (!grad) {
        return ggml_custom_4d(ctx, GGML_TYPE_F32, C, OW, OH, N, &x, 1, gmn_op_maxpool, GGML_N_TASKS_MAX, gmn_window_pack(k, stride, pad));
    }
    struct ggml_tensor * idx = gmn_cl_pool_argmax(ctx, x, k, stride, pad);
    struct ggml_tensor * picked = ggml_get_rows(ctx, ggml_reshape_2d(ctx, x, 1, ggml_nelements(x)), idx);
    return ggml_reshape_4d(ctx, picked, C, OW, OH, N);
}

struct ggml_tensor * gmn_cl_pool_argmax(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad) {
    const struct gmn_window w = { k, stride, pad, 0 };
    const int64_t P = gmn_out_side(x->ne[1], w) * gmn_out_side(x->ne[2], w) * x->ne[3];
    return ggml_custom_4d(ctx, GGML_TYPE_I32, x->ne[0] * P, 1, 1, 1, &x, 1, gmn_op_pool_argmax, GGML_N_TASKS_MAX,
                          gmn_window_pack(k, stride, pad));
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

struct ggml_tensor * gmn_cl_act_values(struct ggml_context * ctx, struct ggml_tensor * x, int kind) {
    struct ggml_tensor * tok = ggml_custom_4d(ctx, GGML_TYPE_I32, 1, 1, 1, 1, &x, 1, gmn_op_nop, 1, NULL);
    return ggml_custom_4d(ctx, GGML_TYPE_F32, ggml_nelements(x), 2, 1, 1, &tok, 1, gmn_op_act_lin, GGML_N_TASKS_MAX,
                          (void *) (uintptr_t) kind);
}

/* tanh or GELU of a contiguous f32 x, for a graph that differentiates it (see above) */
struct ggml_tensor * gmn_cl_act_linearized(struct ggml_context * ctx, struct ggml_tensor * x, int kind) {
    const int64_t n = ggml_nelements(x);
    struct ggml_tensor * dc = gmn_cl_act_values(ctx, x, kind);
    const size_t nb1 = x->ne[0] * sizeof(float), nb2 = nb1 * x->ne[1], nb3 = nb2 * x->ne[2];
    struct ggml_tensor * d = ggml_view_4d(ctx, dc, x->ne[0], x->ne[1], x->ne[2], x->ne[3], nb1, nb2, nb3, 0);
    struct ggml_tensor * c = ggml_view_4d(ctx, dc, x->ne[0], x->ne[1], x->ne[2], x->ne[3], nb1, nb2, nb3, n * sizeof(float));
    return ggml_add(ctx, ggml_mul(ctx, x, d), c);
}

/* Average pooling (zeros in the padding count, as in ggml's pool_2d) of a channels-last x: the window's pixels
 * gathered as im2col columns, times a constant [C*k*k, C] averaging matrix; its backward pass is a matrix
 * product and a scatter, all multi-threaded, with no layout change. The matrix has CP = outputs columns (as many
 * as the plan wants a product's outputs padded to), and the pooled map is the first C channels of it. */
struct ggml_tensor * gmn_cl_avgpool(struct ggml_context * ctx, struct ggml_tensor * x, int k, int stride, int pad, int grad,
                                    int64_t outputs) {
    const struct gmn_window w = { k, stride, pad, 0 };
    const int64_t C = x->ne[0], OW = gmn_out_side(x->ne[1], w), OH = gmn_out_side(x->ne[2], w), N = x->ne[3];
    const int64_t CP = outputs;
    struct ggml_tensor * cols = grad ? gmn_cl_gather_cols(ctx, x, k, stride, pad, 0) : gmn_cl_im2col(ctx, x, k, stride, pad, C * k * k);
    struct ggml_tensor * y = ggml_mul_mat(ctx, gmn_cl_avg_matrix(ctx, C, k, CP), cols);
    if (CP != C) {
        y = gmn_cl_first_outputs(ctx, y, C);
    }
    return ggml_reshape_4d(ctx, y, C, OW, OH, N);
}

struct ggml_tensor * gmn_cl_avg_matrix(struct ggml_context * ctx, int64_t C, int k, int64_t outputs) {
    return ggml_custom_4d(ctx, GGML_TYPE_F32, C * k * k, outputs, 1, 1, NULL, 0, gmn_op_avg_matrix, GGML_N_TASKS_MAX,
                          (void *) (intptr_t) C);
}
