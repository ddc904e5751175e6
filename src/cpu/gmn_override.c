/* gmn_override.c - the override: a predicate per ggml op that the shim has a kernel for, which turns a node of the
 * CPU graph into the shim's kernel (a custom op over the node's own sources and result) or leaves it to ggml. */
#include "gmn_cpu_impl.h"

#include <string.h>

void gmn_cpu_kernels_init(struct ggml_context * ctx, struct gmn_cpu_kernels * k, int64_t * taken) {
    static const ggml_custom_op_t fn[GMN_KERNEL_COUNT] = {
        [GMN_KERNEL_OUTER] = gmn_op_outer, [GMN_KERNEL_MATMUL] = gmn_op_matmul, [GMN_KERNEL_GET_ROWS] = gmn_op_get_rows,
        [GMN_KERNEL_GET_ROWS_BACK] = gmn_op_get_rows_back, [GMN_KERNEL_SUM_ROWS_INTO] = gmn_op_sum_rows_into,
        [GMN_KERNEL_ACC_FRONT] = gmn_op_acc_front, [GMN_KERNEL_REPEAT_ROWS] = gmn_op_repeat_rows,
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
        case GGML_OP_REPEAT:
            if (!gmn_f32(a) || !gmn_f32(t) || !ggml_is_contiguous(a) || !ggml_is_contiguous(t) ||
                ggml_nelements(a) != a->ne[0] || a->ne[0] != t->ne[0] || t->ne[0] == 0) {
                return 0;
            }
            return gmn_adopt(t, k, GMN_KERNEL_REPEAT_ROWS);
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

int64_t gmn_testing_cpu_mm_min_n(void) {
    return GMN_MM_MIN_N;
}
