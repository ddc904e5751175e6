/* gmn_cpu_impl.h - what the CPU kernel wing's own files share (src/cpu/ only; the rest of the shim includes
 * gmn_cpu.h): the thread split, 8-float vectors, the per-thread scratch buffer and the kernels that the override
 * (gmn_override.c) swaps in for ggml's. */
#ifndef GMN_CPU_IMPL_H
#define GMN_CPU_IMPL_H

#include "gmn_cpu.h"

#include <stdint.h>
#include <string.h>

/* kernels built twice, for AVX2 + FMA CPUs and for any x86-64, chosen at load time */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GMN_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GMN_CLONES
#endif

/* rows [*lo, *hi) of n for thread ith of nth */
static inline void gmn_split(int64_t n, int ith, int nth, int64_t * lo, int64_t * hi) {
    const int64_t per = (n + nth - 1) / nth;
    *lo = per * ith < n ? per * ith : n;
    *hi = *lo + per < n ? *lo + per : n;
}

typedef float gmn_v8 __attribute__((vector_size(32)));
typedef int32_t gmn_i8 __attribute__((vector_size(32)));

/* 8 floats loaded or stored unaligned */
static inline gmn_v8 gmn_ld8(const float * p) {
    gmn_v8 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void gmn_st8(float * p, gmn_v8 v) {
    memcpy(p, &v, sizeof(v));
}

/* each of ggml's threads keeps a scratch buffer of GMN_THREAD_FLOATS floats between calls (the matrix products'
 * panels, im2col's padded rows), 64-byte aligned and freed when the thread ends; NULL when there is no memory
 * for it, and every caller then takes its fallback (gmn_scratch.c) */
#define GMN_THREAD_FLOATS ((int64_t) 128 * 1024) /* 512 KB */
float * gmn_thread_panels(void);

/* The kernels that the override swaps in for ggml's own (ggml_custom_op_t; dst keeps ggml's node, its srcs and
 * shape): out_prod and mul_mat of f32 matrices (gmn_gemm.c), get_rows, get_rows_back, repeat_back onto a vector,
 * acc at offset 0 and repeat of a vector into rows (gmn_row_ops.c). */
void gmn_op_outer(struct ggml_tensor * dst, int ith, int nth, void * ud);
void gmn_op_matmul(struct ggml_tensor * dst, int ith, int nth, void * ud);
void gmn_op_get_rows(struct ggml_tensor * dst, int ith, int nth, void * ud);
void gmn_op_get_rows_back(struct ggml_tensor * dst, int ith, int nth, void * ud);
void gmn_op_sum_rows_into(struct ggml_tensor * dst, int ith, int nth, void * ud);
void gmn_op_acc_front(struct ggml_tensor * dst, int ith, int nth, void * ud);
void gmn_op_repeat_rows(struct ggml_tensor * dst, int ith, int nth, void * ud);

/* Adopting an acc node replaces its op_params with the custom op's (a function, a task count and a pointer:
 * 24 bytes), so gmn_cpu_kernels_adopt keeps acc's nb1 in the last of the 16 op_params words. */
#define GMN_ACC_STRIDE_PARAM 15
_Static_assert(GGML_MAX_OP_PARAMS / sizeof(int32_t) > GMN_ACC_STRIDE_PARAM, "op_params too small");

#endif
