/* gmn_gemm.c - the strided matrix product of the CPU kernel wing: register tiles, the tiling of a result and one
 * driver, of which ggml's out_prod and mul_mat nodes of f32 matrices are descriptions (swapped in by
 * gmn_override.c). Every element of a result sums its terms in order, one multiply-add each, so the values agree
 * with a plain loop's bit for bit where the CPU fuses multiply-adds as the loop does. */
#include "gmn_cpu_impl.h"

#include <stdint.h>
#include <string.h>

/* ---- register tiles ------------------------------------------------------------------------------------------ */
/* d[0..8*V) x [0..n) (column c at d + c*ldd) = (acc ? d : 0) + sum over j < J of a[j*lda + 0..8*V) times
 * b[j*sbj + c*sbi], for V = 1 or 2 vectors of rows and n <= 6 columns: 2*6 accumulators fit in AVX2's registers.
 * Every element sums j = 0, 1, ... the same way (one fused multiply-add per term where the CPU has FMA),
 * whatever the shape of its tile. */
static inline __attribute__((always_inline)) void gmn_tile(const int V, const int n, int64_t J, const float * a, int64_t lda,
                                                           const float * b, int64_t sbi, int64_t sbj, float * d, int64_t ldd, int acc) {
    /* twelve named accumulators, not arrays: arrays of vectors made GCC clear them in memory first (rep stos), and
     * walking pointers instead of a counter keeps every integer in a register */
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


/* ---- the driver: one strided product for mul_mat and out_prod alike ------------------------------------------
 * d (i, c) = sum over k = 0 .. K-1 of a (i, k) b (k, c), every operand and the result read and written through
 * strides, so that both of ggml's products (and a product computed as its transpose) are descriptions of it:
 * - the result is cut into tiles (gmn_tiling); the threads share the tiles in order along rows of tiles or
 *   down columns of tiles, a contiguous run of that order each;
 * - the rows of a that a row tile uses (16 or 8; the last 1-7 padded with zeros to 8) are copied into a panel
 *   that holds their values of each term together, so that the tile reads consecutive floats; an a of one row
 *   tile of 8 or 16 rows next to each other holds them so already and is read in place;
 * - the rows of tiles go in groups whose panels fit the thread's 512 KB buffer; for each group the sum runs in
 *   blocks of at most kb terms, and a block's columns in chunks of about b_bytes of b (0: one column tile), which
 *   stay in the cache while every row tile of the group passes over them;
 * - a tile of 1-7 rows goes through a buffer on the stack; so does a small result whose rows are not adjacent, as
 *   a whole, and a larger one tile by tile.
 * Each output element sums k = 0, 1, ... in order with one fused multiply-add per term (where the CPU has FMA),
 * whatever the shape, the strides, the blocking or the number of threads, so the result depends on none of them.
 * Without the thread's buffer, one panel of GMN_GEMM_LOCAL_KB terms on the stack does: the same bits. */
struct gmn_gemm {
    int64_t M, N, K;
    const float * a;   /* element (i, k) of the left operand at a[i * a_i + k * a_k] */
    int64_t a_i, a_k;
    const float * b;   /* element (k, c) of the right operand at b[c * b_c + k * b_k] */
    int64_t b_c, b_k;
    float * d;         /* result (i, c) at d[i * d_i + c * d_c] */
    int64_t d_i, d_c;
    int64_t kb;        /* the most terms per block */
    int64_t b_bytes;   /* the bytes of b per chunk of columns (0: a column tile) */
    int by_rows;       /* the threads share the tiles along rows of tiles (else down columns) */
};

#define GMN_GEMM_LOCAL_KB 256

/* The tiling of an M x N result: row tiles of 16, then one of 8, then one of the rest (< 8); column tiles of at
 * most 6, as even as possible (8 columns are 4 + 4, not 6 + 2, so that two threads share them evenly). It
 * depends on the shape only, never on the number of threads. */
struct gmn_tiling {
    int64_t M, N, tm, tn, n_base, n_more; /* tn column tiles: the first n_more have n_base + 1 columns */
};

static struct gmn_tiling gmn_tiling_of(int64_t M, int64_t N) {
    struct gmn_tiling g = { M, N, M / 16 + (M % 16 >= 8) + (M % 8 > 0), (N + 5) / 6, 0, 0 };
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

/* the column tiles [*cs, *ce) of row tile r among the tiles lo .. hi of the order (along rows, or down columns) */
static void gmn_row_span(const struct gmn_tiling * g, int by_rows, int64_t lo, int64_t hi, int64_t r, int64_t * cs, int64_t * ce) {
    if (by_rows) { /* tile r * tn + c */
        *cs = lo - r * g->tn;
        *ce = hi - r * g->tn;
    } else {       /* tile c * tm + r */
        *cs = lo - r <= 0 ? 0 : (lo - r + g->tm - 1) / g->tm;
        *ce = hi - r <= 0 ? 0 : (hi - r - 1) / g->tm + 1;
    }
    *cs = *cs < 0 ? 0 : *cs > g->tn ? g->tn : *cs;
    *ce = *ce < *cs ? *cs : *ce > g->tn ? g->tn : *ce;
}

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

/* the tile of rows i0 .. i0 + m and columns j .. j + n over terms k0 .. k0 + kn, from its panel p (lp floats a
 * term), through a buffer: the tiles that the driver cannot call in place, those of 1-7 rows (the panel's 8 rows are
 * computed and the first m kept, so that d's rows below them are neither read nor written) and those of a result
 * whose rows are not adjacent */
static void gmn_gemm_tile_buffered(const struct gmn_gemm * e, const float * p, int64_t lp, int64_t i0, int64_t m, int64_t j,
                                   int64_t n, int64_t k0, int64_t kn) {
    const float * bt = e->b + j * e->b_c + k0 * e->b_k;
    float * dt = e->d + i0 * e->d_i + j * e->d_c;
    const int acc = k0 > 0;
    const int64_t w = m > 8 ? 16 : 8;
    float s[6 * 16] = { 0 }; /* rows m .. w stay 0 */
    for (int64_t c = 0; c < n && acc; c++) {
        for (int64_t i = 0; i < m; i++) {
            s[c * w + i] = dt[i * e->d_i + c * e->d_c];
        }
    }
    GMN_TILES[w / 8 - 1][n - 1](kn, p, lp, bt, e->b_c, e->b_k, s, w, acc);
    for (int64_t c = 0; c < n; c++) {
        for (int64_t i = 0; i < m; i++) {
            dt[i * e->d_i + c * e->d_c] = s[c * w + i];
        }
    }
}

/* the rows of tiles of a group of panels at most (their spans are kept on the stack) */
#define GMN_GEMM_GROUP 64
/* a result whose rows are apart and that has no more elements than this is computed into a buffer on the stack and
 * then written, instead of through the buffer of each tile at each block of terms */
#define GMN_GEMM_SMALL_RESULT 256

static void gmn_gemm_run(const struct gmn_gemm * e, int ith, int nth) {
    const struct gmn_tiling g = gmn_tiling_of(e->M, e->N);
    int64_t lo, hi;
    gmn_split(g.tm * g.tn, ith, nth, &lo, &hi);
    if (lo >= hi) {
        return;
    }
    /* the thread's rows of tiles: those of its run along rows; down columns, every row (a run shorter than a
     * column leaves some of them empty) */
    const int64_t r_lo = e->by_rows ? lo / g.tn : 0, r_hi = e->by_rows ? (hi - 1) / g.tn + 1 : g.tm;
    if (e->d_i != 1 && e->M * e->N <= GMN_GEMM_SMALL_RESULT) {
        float buf[GMN_GEMM_SMALL_RESULT];
        struct gmn_gemm c = *e;
        c.d   = buf;
        c.d_i = 1;
        c.d_c = e->M;
        gmn_gemm_run(&c, ith, nth);
        for (int64_t r = r_lo; r < r_hi; r++) {
            int64_t i0, m, cs, ce;
            gmn_tile_rows(&g, r, &i0, &m);
            gmn_row_span(&g, e->by_rows, lo, hi, r, &cs, &ce);
            for (int64_t j = gmn_col_start(&g, cs); j < gmn_col_start(&g, ce); j++) {
                for (int64_t i = i0; i < i0 + m; i++) {
                    e->d[i * e->d_i + j * e->d_c] = buf[i + j * e->M];
                }
            }
        }
        return;
    }
    if (e->K == 0) { /* an empty sum */
        for (int64_t r = r_lo; r < r_hi; r++) {
            int64_t i0, m, cs, ce;
            gmn_tile_rows(&g, r, &i0, &m);
            gmn_row_span(&g, e->by_rows, lo, hi, r, &cs, &ce);
            for (int64_t c = gmn_col_start(&g, cs); c < gmn_col_start(&g, ce); c++) {
                for (int64_t i = 0; i < m; i++) {
                    e->d[(i0 + i) * e->d_i + c * e->d_c] = 0.0f;
                }
            }
        }
        return;
    }
    const int in_place = e->a_i == 1 && (e->M == 16 || e->M == 8);
    float local[16 * GMN_GEMM_LOCAL_KB];
    float * panels = NULL;
    int64_t room = 16 * GMN_GEMM_LOCAL_KB, kb = e->K < e->kb ? e->K : e->kb;
    if (!in_place) {
        panels = gmn_thread_panels();
        room   = GMN_THREAD_FLOATS;
        if (panels == NULL) {
            panels = local;
            room   = 16 * GMN_GEMM_LOCAL_KB;
        }
        kb = kb < room / 16 ? kb : room / 16;
    }
    int64_t group = room / (16 * kb); /* rows of tiles per group of panels (read in place: one row tile) */
    group = group < 1 ? 1 : group < GMN_GEMM_GROUP ? group : GMN_GEMM_GROUP;
    const int64_t chunk = e->b_bytes / (kb * (int64_t) sizeof(float)); /* columns of b per chunk */
    int64_t span_cs[GMN_GEMM_GROUP], span_ce[GMN_GEMM_GROUP], row_i0[GMN_GEMM_GROUP], row_m[GMN_GEMM_GROUP];
    const float * const a = e->a, * const b = e->b;
    float * const d = e->d;
    const int64_t a_k = e->a_k, b_c = e->b_c, b_k = e->b_k, d_c = e->d_c;
    for (int64_t q0 = r_lo; q0 < r_hi; q0 += group) {
        const int64_t q1 = q0 + group < r_hi ? q0 + group : r_hi;
        int64_t c_lo = g.tn, c_hi = 0; /* the column tiles of the group's rows */
        for (int64_t r = q0; r < q1; r++) {
            gmn_row_span(&g, e->by_rows, lo, hi, r, &span_cs[r - q0], &span_ce[r - q0]);
            gmn_tile_rows(&g, r, &row_i0[r - q0], &row_m[r - q0]);
            if (span_cs[r - q0] < span_ce[r - q0]) {
                c_lo = span_cs[r - q0] < c_lo ? span_cs[r - q0] : c_lo;
                c_hi = span_ce[r - q0] > c_hi ? span_ce[r - q0] : c_hi;
            }
        }
        for (int64_t k0 = 0; k0 < e->K; k0 += kb) {
            const int64_t kn = e->K - k0 < kb ? e->K - k0 : kb;
            for (int64_t r = 0; r < q1 - q0 && !in_place; r++) {
                if (span_cs[r] < span_ce[r]) {
                    gmn_gemm_pack(e, row_i0[r], row_m[r], k0, kn, panels + r * 16 * kb);
                }
            }
            for (int64_t c0 = c_lo; c0 < c_hi;) {
                int64_t c1 = c0 + 1;
                while (c1 < c_hi && gmn_col_start(&g, c1 + 1) - gmn_col_start(&g, c0) <= chunk) {
                    c1++;
                }
                for (int64_t r = 0; r < q1 - q0; r++) {
                    const int64_t cs = span_cs[r] > c0 ? span_cs[r] : c0, ce = span_ce[r] < c1 ? span_ce[r] : c1;
                    const int64_t i0 = row_i0[r], m = row_m[r];
                    const float * p  = in_place ? a + k0 * a_k : panels + r * 16 * kb;
                    const int64_t lp = in_place ? a_k : m > 8 ? 16 : 8;
                    const gmn_tile_fn * fns = GMN_TILES[m > 8];
                    const int direct = (m == 16 || m == 8) && e->d_i == 1;
                    for (int64_t c = cs, j = gmn_col_start(&g, cs); c < ce; c++) {
                        const int64_t n = g.n_base + (c < g.n_more);
                        if (direct) { /* the common tile, called here: its driver's work is a few instructions */
                            fns[n - 1](kn, p, lp, b + j * b_c + k0 * b_k, b_c, b_k, d + i0 + j * d_c, d_c, k0 > 0);
                        } else {
                            gmn_gemm_tile_buffered(e, p, lp, i0, m, j, n, k0, kn);
                        }
                        j += n;
                    }
                }
                c0 = c1;
            }
        }
    }
}

/* ---- ggml's two products, described for the driver ------------------------------------------------------------ */

/* mul_mat's split of an M x N result: whole rows of tiles when there are enough of them (each row of a is then
 * copied by one thread only), else columns with all the rows */
static int gmn_gemm_rows_first(int64_t M, int64_t N, int nth) {
    const struct gmn_tiling g = gmn_tiling_of(M, N);
    return g.tm >= 2 * nth || (g.tn < nth && g.tm > 1);
}

/* mul_mat: dst [M, N] = a [K, M]^T b [K, N], both read along K (ggml runs llamafile's sgemm on these). A panel of
 * up to GMN_MM_KB terms stays in the L2 cache and b's columns in L1. */
#define GMN_MM_KB 2048
#define GMN_MM_B_BYTES (96 * 1024)

void gmn_op_matmul(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * a = dst->src[0];
    const struct ggml_tensor * b = dst->src[1];
    const struct gmn_gemm e = {
        .M = dst->ne[0], .N = dst->ne[1], .K = a->ne[0],
        .a = (const float *) a->data, .a_i = (int64_t) (a->nb[1] / sizeof(float)), .a_k = 1,
        .b = (const float *) b->data, .b_c = (int64_t) (b->nb[1] / sizeof(float)), .b_k = 1,
        .d = (float *) dst->data, .d_i = 1, .d_c = (int64_t) (dst->nb[1] / sizeof(float)),
        .kb = GMN_MM_KB, .b_bytes = GMN_MM_B_BYTES, .by_rows = gmn_gemm_rows_first(dst->ne[0], dst->ne[1], nth),
    };
    gmn_gemm_run(&e, ith, nth);
}

/* out_prod: dst [M, N] = a [M, J] b [N, J]^T, the gradients of a matrix product in ggml's autodiff (its CPU kernel
 * accumulates one column of a at a time through a single register). The sum runs in blocks of GMN_OUTER_JB terms, so that a block of a (the im2col
 * columns of a wide convolution are tens of megabytes) is read from the cache by every tile. The threads share
 * the tiles
 * - along rows of tiles, when a block of b fits in the L2 cache and several tiles share each row of tiles (a
 *   weight gradient: N is the outputs, J the pixels or images), with all the columns in one chunk: a row tile's
 *   panel stays in the L1 cache for every tile of its row;
 * - down columns of tiles, when b's values of a term are apart (the gradient of a convolution's input: N is the
 *   pixels of a batch, J the channels), in chunks of b that stay in the L1 cache while every row tile passes over
 *   them;
 * - else as mul_mat does (b's columns side by side but too many for L2, such as fc's weight gradient at batch
 *   1000, 784 x 500 over 1 000 images; or too few column tiles to share a row).
 * With 8 or 16 outputs, 6-16 of a's rows and b's N values of each term side by side (the weight gradient of a small
 * convolution, cnn's first: 9 x 8 summed over the pixels of a batch, where the orders above would pack a's 9 rows
 * as a tile of 8 and one of 1), it computes the transpose b a^T instead, whose single row tile is b itself,
 * read in place, and whose columns are a's rows, written to dst's rows. A product's two factors swap sides in each
 * multiply-add, which changes no bit of it. */
#define GMN_OUTER_JB 256
#define GMN_OUTER_B_BYTES (256 * 1024) /* a block of b this size or less stays in the L2 cache */
#define GMN_OUTER_COLS_BYTES (16 * 1024) /* down columns: chunks of b that stay in the L1 cache */

void gmn_op_outer(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * a = dst->src[0];
    const struct ggml_tensor * b = dst->src[1];
    const int64_t M = dst->ne[0], N = dst->ne[1], J = a->ne[1], lda = (int64_t) (a->nb[1] / sizeof(float)),
                  sbi = (int64_t) (b->nb[0] / sizeof(float)), sbj = (int64_t) (b->nb[1] / sizeof(float)),
                  ldd = (int64_t) (dst->nb[1] / sizeof(float));
    const float * A = (const float *) a->data, * B = (const float *) b->data;
    struct gmn_gemm e;
    if ((N == 8 || N == 16) && sbi == 1 && M >= 6 && M <= 16 && J >= GMN_OUTER_JB) {
        e = (struct gmn_gemm) { .M = N, .N = M, .K = J, .a = B, .a_i = 1, .a_k = sbj, .b = A, .b_c = 1, .b_k = lda,
                                .d = (float *) dst->data, .d_i = ldd, .d_c = 1, .kb = GMN_OUTER_JB, .b_bytes = GMN_OUTER_B_BYTES };
        gmn_gemm_run(&e, ith, nth);
        return;
    }
    const struct gmn_tiling g = gmn_tiling_of(M, N);
    const int64_t jb = J < GMN_OUTER_JB ? J : GMN_OUTER_JB;
    e = (struct gmn_gemm) { .M = M, .N = N, .K = J, .a = A, .a_i = 1, .a_k = lda, .b = B, .b_c = sbi, .b_k = sbj,
                            .d = (float *) dst->data, .d_i = 1, .d_c = ldd, .kb = GMN_OUTER_JB };
    if (lda > 16 && g.tn >= 3 && N * jb * (int64_t) sizeof(float) <= GMN_OUTER_B_BYTES) {
        e.by_rows = 1;
        e.b_bytes = GMN_OUTER_B_BYTES;
    } else if (sbi == 1) {
        e.by_rows = gmn_gemm_rows_first(M, N, nth);
        e.b_bytes = GMN_MM_B_BYTES;
    } else {
        e.by_rows = 0;
        e.b_bytes = GMN_OUTER_COLS_BYTES;
    }
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
