/* gmn_row_ops.c - the CPU kernel wing's kernels for ggml's get_rows, get_rows_back, repeat_back, acc and repeat
 * nodes (swapped in by gmn_override.c). */
#include "gmn_cpu_impl.h"

#include <stdint.h>
#include <string.h>

/* ---- other kernels of ggml's that the CPU training graph swaps for the shim's ----------------------------
 * ggml runs get_rows_back, repeat_back, acc's copy and repeat on one thread, and its get_rows spends more time on
 * index arithmetic than on copying the one-float rows that max pooling gathers. These compute exactly the same values,
 * in the same order per element, so swapping them changes no result bit; they only split the work over threads. */

/* rows lo .. hi of get_rows of rows of 8 floats (in its own function: the AVX2 clone of the whole op gathered
 * max pooling's single floats with vgatherdps, slower than plain loads here) */
GMN_CLONES static void gmn_get_rows8(float * d, const char * s, size_t snb, const int32_t * idx, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        gmn_st8(d + i * 8, gmn_ld8((const float *) (s + (size_t) idx[i] * snb)));
    }
}

/* get_rows: dst [nc, nr] = rows idx[0..nr) of src [nc, *] */
void gmn_op_get_rows(struct ggml_tensor * dst, int ith, int nth, void * ud) {
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
GMN_CLONES void gmn_op_get_rows_back(struct ggml_tensor * dst, int ith, int nth, void * ud) {
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
 * thread owns a range of the columns (whole vectors of 8), which it sums GMN_SUM_BLOCK columns at a time, a row
 * after another: every row's piece is contiguous and every cache line is read once. (Summing each vector of 8
 * down all the rows before the next read each line twice and touched a new page every row, a fifth of the time
 * of a network with batch normalisation.) Each column is still summed row by row, so the bits are the same. */
#define GMN_SUM_BLOCK 256

GMN_CLONES void gmn_op_sum_rows_into(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const struct ggml_tensor * src = dst->src[0];
    const int64_t nc = dst->ne[0], nr = ggml_nelements(src) / nc;
    const float * s = (const float *) src->data;
    float * d = (float *) dst->data;
    int64_t lo, hi;
    gmn_split((nc + 7) / 8, ith, nth, &lo, &hi);
    const int64_t end = hi * 8 < nc ? hi * 8 : nc;
    for (int64_t c0 = lo * 8; c0 < end; c0 += GMN_SUM_BLOCK) {
        const int64_t w = end - c0 < GMN_SUM_BLOCK ? end - c0 : GMN_SUM_BLOCK;
        const int64_t nv = w / 8; /* whole vectors; the last w % 8 columns (only at the end of a row) one by one */
        gmn_v8 acc[GMN_SUM_BLOCK / 8];
        float tail[8] = { 0 };
        for (int64_t v = 0; v < nv; v++) {
            acc[v] = (gmn_v8) { 0 };
        }
        for (int64_t r = 0; r < nr; r++) {
            const float * sr = s + r * nc + c0;
            for (int64_t v = 0; v < nv; v++) {
                acc[v] = acc[v] + gmn_ld8(sr + 8 * v);
            }
            for (int64_t c = nv * 8; c < w; c++) {
                tail[c - nv * 8] = tail[c - nv * 8] + sr[c];
            }
        }
        for (int64_t v = 0; v < nv; v++) {
            gmn_st8(d + c0 + 8 * v, acc[v]);
        }
        memcpy(d + c0 + nv * 8, tail, (size_t) (w - nv * 8) * sizeof(float));
    }
}

/* acc at offset 0: dst = src0 plus src1, whose rows lie in dst the acc's nb1 bytes apart (a 2-D src1; nb1 in
 * op_params word GMN_ACC_STRIDE_PARAM), or whose elements are dst's first ones (any src1 that is contiguous in
 * dst's layout). */
void gmn_op_acc_front(struct ggml_tensor * dst, int ith, int nth, void * ud) {
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

/* repeat of a vector src [nc] into every row of dst [nc, ...] (the backward pass of a sum over the rows, as in batch
 * normalisation's statistics); each thread copies a range of the rows */
void gmn_op_repeat_rows(struct ggml_tensor * dst, int ith, int nth, void * ud) {
    (void) ud;
    const float * s = (const float *) dst->src[0]->data;
    const int64_t nc = dst->ne[0], nr = ggml_nelements(dst) / nc;
    float * d = (float *) dst->data;
    int64_t lo, hi;
    gmn_split(nr, ith, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++) {
        memcpy(d + r * nc, s, (size_t) nc * sizeof(float));
    }
}
