/* gmn_testing.c - test-only entry points: one op of the CPU kernel wing (src/cpu/) at a time, built over copies of
 * the caller's operands and computed on ggml's CPU backend, so that tests can hold each kernel against a plain loop. */
#include "gmn_internal.h"

#include <string.h>
#include <time.h>

#define GMN_TESTING_MAX_ELEMENTS ((int64_t) 1 << 26) /* per operand or result */
#define GMN_TESTING_MAX_THREADS  8
#define GMN_TESTING_MAX_IN       2

/* 0 when a is well-formed: sizes and strides in range, at least one element, and every element inside its n */
static int gmn_testing_check_array(const struct gmn_testing_array * a, int i) {
    if (a->n < 1 || a->n > GMN_TESTING_MAX_ELEMENTS || a->data == NULL) {
        return gmn_fail(GMN_E_INVALID, "testing: operand %d holds %lld elements at %p; give 1 to %lld", i,
                        (long long) a->n, a->data, (long long) GMN_TESTING_MAX_ELEMENTS);
    }
    int64_t count = 1, last = 0;
    for (int d = 0; d < 4; d++) {
        if (a->ne[d] < 1 || a->ne[d] > GMN_TESTING_MAX_ELEMENTS || a->nb[d] < 0 || a->nb[d] > GMN_TESTING_MAX_ELEMENTS) {
            return gmn_fail(GMN_E_INVALID, "testing: operand %d has ne[%d] = %lld and nb[%d] = %lld; give 1 to %lld and "
                            "0 to %lld", i, d, (long long) a->ne[d], d, (long long) a->nb[d],
                            (long long) GMN_TESTING_MAX_ELEMENTS, (long long) GMN_TESTING_MAX_ELEMENTS);
        }
        count *= a->ne[d];
        last += (a->ne[d] - 1) * a->nb[d];
        if (count > a->n) {
            return gmn_fail(GMN_E_INVALID, "testing: operand %d has more elements than its n = %lld", i, (long long) a->n);
        }
    }
    if (last >= a->n) {
        return gmn_fail(GMN_E_INVALID, "testing: operand %d reaches element %lld of its n = %lld", i, (long long) last,
                        (long long) a->n);
    }
    return GMN_OK;
}

static int gmn_testing_dims(const struct gmn_testing_array * a) {
    return a->ne[3] > 1 ? 4 : a->ne[2] > 1 ? 3 : a->ne[1] > 1 ? 2 : 1;
}

/* rows of contiguous floats: 2-D, elements side by side, rows apart by at least a row */
static int gmn_testing_rows(const struct gmn_testing_array * a) {
    return !a->i32 && gmn_testing_dims(a) <= 2 && a->nb[0] == 1 && a->nb[1] >= a->ne[0];
}

static int gmn_testing_contiguous(const struct gmn_testing_array * a) {
    return a->nb[0] == 1 && a->nb[1] == a->ne[0] && a->nb[2] == a->ne[0] * a->ne[1] && a->nb[3] == a->ne[0] * a->ne[1] * a->ne[2];
}

/* an index vector whose values lie in [0, limit) */
static int gmn_testing_indices(const struct gmn_testing_array * a, int64_t limit) {
    if (!a->i32 || gmn_testing_dims(a) != 1 || a->nb[0] != 1) {
        return 0;
    }
    const int32_t * v = (const int32_t *) a->data;
    for (int64_t i = 0; i < a->ne[0]; i++) {
        if (v[i] < 0 || v[i] >= limit) {
            return 0;
        }
    }
    return 1;
}

/* a window of side k, stride s and padding p (at most max_pad) that fits an image x [C, W, H, N] at least once */
static int gmn_testing_window(const struct gmn_testing_array * x, int64_t k, int64_t s, int64_t p, int64_t max_pad) {
    return k >= 1 && k <= GMN_MAX_WINDOW && s >= 1 && s <= GMN_MAX_WINDOW && p >= 0 && p <= max_pad &&
           x->ne[1] + 2 * p >= k && x->ne[2] + 2 * p >= k;
}

/* The node that op makes of the operands (t: their tensors) and p, or NULL when they do not fit it. */
static struct ggml_tensor * gmn_testing_node(struct ggml_context * ctx, int op, const int64_t * p, int n_p,
                                             const struct gmn_testing_array * in, int n_in, struct ggml_tensor ** t) {
    const struct gmn_testing_array * a = &in[0], * b = &in[1];
    const int x_ok = n_in >= 1 && !a->i32 && gmn_testing_contiguous(a);
    switch (op) {
        case GMN_TESTING_OUT_PROD:
            return n_in == 2 && gmn_testing_rows(a) && !b->i32 && gmn_testing_dims(b) <= 2 && a->ne[1] == b->ne[1]
                       ? ggml_out_prod(ctx, t[0], t[1]) : NULL;
        case GMN_TESTING_MUL_MAT:
            return n_in == 2 && gmn_testing_rows(a) && gmn_testing_rows(b) && a->ne[0] == b->ne[0]
                       ? ggml_mul_mat(ctx, t[0], t[1]) : NULL;
        case GMN_TESTING_GET_ROWS:
            return n_in == 2 && gmn_testing_rows(a) && gmn_testing_indices(b, a->ne[1]) ? ggml_get_rows(ctx, t[0], t[1]) : NULL;
        case GMN_TESTING_GET_ROWS_BACK:
            if (n_in != 2 || n_p != 1 || p[0] < 1 || p[0] > GMN_TESTING_MAX_ELEMENTS / a->ne[0] || !gmn_testing_rows(a) ||
                !gmn_testing_indices(b, p[0]) || b->ne[0] != a->ne[1]) {
                return NULL;
            }
            return ggml_get_rows_back(ctx, t[0], t[1], ggml_new_tensor_2d(ctx, GGML_TYPE_F32, a->ne[0], p[0]));
        case GMN_TESTING_REPEAT_BACK:
            return n_in == 1 && x_ok ? ggml_repeat_back(ctx, t[0], ggml_new_tensor_1d(ctx, GGML_TYPE_F32, a->ne[0])) : NULL;
        case GMN_TESTING_REPEAT:
            if (n_in != 1 || n_p != 1 || !x_ok || gmn_testing_dims(a) > 2 || p[0] < 1 || p[0] % a->ne[1] != 0 ||
                p[0] > GMN_TESTING_MAX_ELEMENTS / a->ne[0]) {
                return NULL;
            }
            return ggml_repeat(ctx, t[0], ggml_new_tensor_2d(ctx, GGML_TYPE_F32, a->ne[0], p[0]));
        case GMN_TESTING_ACC: {
            if (n_in != 2 || n_p != 2 || !x_ok || b->i32 || b->nb[0] != 1 || p[0] < b->ne[0] || p[0] > GMN_TESTING_MAX_ELEMENTS) {
                return NULL;
            }
            const int64_t nb1 = p[0], nb2 = nb1 * b->ne[1], nb3 = nb2 * b->ne[2];
            const int64_t na = a->ne[0] * a->ne[1] * a->ne[2] * a->ne[3];
            if ((b->ne[3] - 1) * nb3 + (b->ne[2] - 1) * nb2 + (b->ne[1] - 1) * nb1 + b->ne[0] > na ||
                b->ne[0] * b->ne[1] * b->ne[2] * b->ne[3] > na || nb3 * b->ne[3] > INT32_MAX / (int64_t) sizeof(float)) {
                return NULL;
            }
            const size_t s = sizeof(float);
            return p[1] ? ggml_acc_inplace(ctx, t[0], t[1], nb1 * s, nb2 * s, nb3 * s, 0)
                        : ggml_acc(ctx, t[0], t[1], nb1 * s, nb2 * s, nb3 * s, 0);
        }
        case GMN_TESTING_IM2COL:
        case GMN_TESTING_IM2COL_ROWS:
        case GMN_TESTING_GATHER_COLS:
            if (n_in != 1 || n_p != 4 || !x_ok || !gmn_testing_window(a, p[0], p[1], p[2], p[0] - 1)) {
                return NULL;
            }
            if (op == GMN_TESTING_IM2COL) {
                return p[3] >= a->ne[0] * p[0] * p[0] && p[3] <= a->ne[0] * p[0] * p[0] + 64
                           ? gmn_cl_im2col(ctx, t[0], (int) p[0], (int) p[1], (int) p[2], p[3]) : NULL;
            }
            if (p[3] < 0 || p[3] > 8) {
                return NULL;
            }
            return op == GMN_TESTING_IM2COL_ROWS ? gmn_cl_im2col_rows(ctx, t[0], (int) p[0], (int) p[1], (int) p[2], (int) p[3])
                                                 : gmn_cl_gather_cols(ctx, t[0], (int) p[0], (int) p[1], (int) p[2], (int) p[3]);
        case GMN_TESTING_MAXPOOL:
        case GMN_TESTING_POOL_ARGMAX:
            if (n_in != 1 || n_p != 3 || !x_ok || !gmn_testing_window(a, p[0], p[1], p[2], p[0] / 2)) {
                return NULL;
            }
            return op == GMN_TESTING_MAXPOOL ? gmn_cl_maxpool(ctx, t[0], (int) p[0], (int) p[1], (int) p[2], 0)
                                             : gmn_cl_pool_argmax(ctx, t[0], (int) p[0], (int) p[1], (int) p[2]);
        case GMN_TESTING_AVGPOOL:
            if (n_in != 1 || n_p != 5 || !x_ok || !gmn_testing_window(a, p[0], p[1], p[2], p[0] / 2) || p[4] < a->ne[0] ||
                p[4] > a->ne[0] + 64) {
                return NULL;
            }
            return gmn_cl_avgpool(ctx, t[0], (int) p[0], (int) p[1], (int) p[2], p[3] != 0, p[4]);
        case GMN_TESTING_AVG_MATRIX:
            if (n_in != 0 || n_p != 3 || p[0] < 1 || p[0] > GMN_MAX_CHANNELS || p[1] < 1 || p[1] > GMN_MAX_WINDOW ||
                p[2] < p[0] || p[2] > p[0] + 64 || p[0] * p[1] * p[1] * p[2] > GMN_TESTING_MAX_ELEMENTS) {
                return NULL;
            }
            return gmn_cl_avg_matrix(ctx, p[0], (int) p[1], p[2]);
        case GMN_TESTING_RELAYOUT:
            return n_in == 1 && n_p == 1 && x_ok && (p[0] == 0 || p[0] == 1) ? gmn_cl_relayout(ctx, t[0], (int) p[0]) : NULL;
        case GMN_TESTING_ACT_VALUES:
            return n_in == 1 && n_p == 1 && x_ok && (p[0] == GMN_LAYER_TANH || p[0] == GMN_LAYER_GELU)
                       ? gmn_cl_act_values(ctx, t[0], (int) p[0]) : NULL;
        default:
            return NULL;
    }
}

static int    g_repeat;
static double g_seconds;

void gmn_testing_cpu_repeat(int n) {
    g_repeat = n > 0 ? n : 0;
}

double gmn_testing_cpu_seconds(void) {
    return g_seconds;
}

/* computes g, or fails naming op */
static int gmn_testing_compute(ggml_backend_t backend, struct ggml_cgraph * g, int op) {
    if (ggml_backend_graph_compute(backend, g) != GGML_STATUS_SUCCESS) {
        return gmn_fail(GMN_E_NOMEM, "testing: ggml could not compute op %d", op);
    }
    return GMN_OK;
}

static double gmn_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

int gmn_testing_cpu_op(int op, const int64_t * p, int n_p, const struct gmn_testing_array * in, int n_in, int n_threads,
                       int adopt, struct gmn_testing_array * out, int64_t * taken) {
    gmn_clear_error();
    gmn_ensure_init();
    if (n_in < 0 || n_in > GMN_TESTING_MAX_IN || (n_in > 0 && in == NULL) || n_p < 0 || n_p > 8 || (n_p > 0 && p == NULL) ||
        out == NULL || (out->n > 0 && out->data == NULL) || n_threads < 1 || n_threads > GMN_TESTING_MAX_THREADS) {
        return gmn_fail(GMN_E_INVALID, "testing: give up to %d operands, up to 8 parameters, an output and 1 to %d threads",
                        GMN_TESTING_MAX_IN, GMN_TESTING_MAX_THREADS);
    }
    for (int i = 0; i < n_in; i++) {
        const int st = gmn_testing_check_array(&in[i], i);
        if (st != GMN_OK) {
            return st;
        }
    }
    if (gmn_thread_limit() > 0 && n_threads > gmn_thread_limit()) {
        n_threads = gmn_thread_limit();
    }
    const struct ggml_init_params ip = { 64 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    ggml_backend_t backend = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    ggml_backend_buffer_t buf = NULL;
    int st = GMN_OK;
    if (ctx == NULL || backend == NULL) {
        st = gmn_fail(GMN_E_NOMEM, "testing: no memory for a context or the CPU backend");
        goto done;
    }
    struct ggml_tensor * base[GMN_TESTING_MAX_IN], * t[GMN_TESTING_MAX_IN];
    for (int i = 0; i < n_in; i++) {
        const struct gmn_testing_array * a = &in[i];
        const size_t es = sizeof(float); /* int32 too */
        base[i] = ggml_new_tensor_1d(ctx, a->i32 ? GGML_TYPE_I32 : GGML_TYPE_F32, a->n);
        t[i] = ggml_view_4d(ctx, base[i], a->ne[0], a->ne[1], a->ne[2], a->ne[3], a->nb[1] * es, a->nb[2] * es, a->nb[3] * es, 0);
        t[i]->nb[0] = a->nb[0] * es; /* a strided or transposed view, as ggml_permute makes */
    }
    struct ggml_tensor * node = gmn_testing_node(ctx, op, p, n_p, in, n_in, t);
    if (node == NULL) {
        st = gmn_fail(GMN_E_INVALID, "testing: the operands or parameters do not fit op %d (see enum gmn_testing_op)", op);
        goto done;
    }
    const int64_t count = ggml_nelements(node);
    if (count > out->n || count > GMN_TESTING_MAX_ELEMENTS) {
        st = gmn_fail(GMN_E_INVALID, "testing: the result has %lld elements and the output room for %lld", (long long) count,
                      (long long) out->n);
        goto done;
    }
    int64_t counted[GMN_KERNEL_COUNT] = { 0 };
    struct gmn_cpu_kernels k;
    if (adopt) {
        gmn_cpu_kernels_init(ctx, &k, counted);
    }
    struct ggml_cgraph * g = ggml_new_graph(ctx);
    ggml_build_forward_expand(g, node);
    buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (buf == NULL) {
        st = gmn_fail(GMN_E_NOMEM, "testing: no memory for the op's tensors");
        goto done;
    }
    for (int i = 0; i < n_in; i++) {
        ggml_backend_tensor_set(base[i], in[i].data, 0, ggml_nbytes(base[i]));
    }
    for (int i = 0; adopt && i < ggml_graph_n_nodes(g); i++) {
        gmn_cpu_kernels_adopt(ggml_graph_node(g, i), &k);
    }
    gmn_backend_set_threads(backend, n_threads);
    st = gmn_testing_compute(backend, g, op);
    if (st != GMN_OK) {
        goto done;
    }
    out->i32 = node->type == GGML_TYPE_I32;
    for (int d = 0; d < 4; d++) {
        out->ne[d] = node->ne[d];
        out->nb[d] = d == 0 ? 1 : out->nb[d - 1] * node->ne[d - 1];
    }
    ggml_backend_tensor_get(node, out->data, 0, (size_t) count * sizeof(float));
    g_seconds = 0.0;
    for (int r = 0; r < g_repeat; r++) {
        const double t0 = gmn_now();
        st = gmn_testing_compute(backend, g, op);
        if (st != GMN_OK) {
            goto done;
        }
        const double dt = gmn_now() - t0;
        g_seconds = r == 0 || dt < g_seconds ? dt : g_seconds;
    }
    if (taken != NULL) {
        memcpy(taken, counted, sizeof(counted));
    }
done:
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
    ggml_free(ctx);
    return st;
}
