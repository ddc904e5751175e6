/* gmn_gemm.c - the strided matrix products of the CPU kernel wing: register tiles, the tiling of a result, and
 * the drivers of ggml's out_prod and mul_mat nodes of f32 matrices (swapped in by gmn_override.c). */
#include "gmn_cpu_impl.h"

#include <stdint.h>
#include <string.h>

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

void gmn_op_outer(struct ggml_tensor * dst, int ith, int nth, void * ud) {
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
void gmn_op_matmul(struct ggml_tensor * dst, int ith, int nth, void * ud) {
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

/* The same multiply-add as a tile's, in a function cloned like the tiles: GCC contracts it into one fused
 * operation (-ffp-contract=fast, gnu11's default) in exactly the clones where it fuses the tiles' terms. */
GMN_CLONES static float gmn_mul_add(float a, float b, float c) {
    return a * b + c;
}

int gmn_testing_cpu_fma(void) {
    volatile float a = 1.0f + 0x1p-12f, c = -(1.0f + 0x1p-11f); /* a * a = 1 + 2^-11 + 2^-24, exact only when fused */
    return gmn_mul_add(a, a, c) != 0.0f;
}
