/* gmn_plan.c - a model's backend plan: which graph form runs, whether the shim's CPU kernels take ggml's nodes
 * (behind a version gate), how ggml's matrix products want their operands padded, and what the last graph built
 * held (its ops and the nodes each kernel took). */
#include "gmn_internal.h"

#include <stdlib.h>
#include <string.h>

#ifndef GMN_GGML_PIN
#error "GMN_GGML_PIN, the pinned ggml version (external/ggml.cmake), must be defined by the build"
#endif

/* The kernels rewrite a ggml node's op and op_params from the scheduler's eval callback and read ACC's parameter
 * layout: private to ggml, and checked against the pinned version only. */
static char g_pretend_version[64];
static int  g_pretending = 0;

void gmn_testing_set_ggml_version(const char * version) {
    g_pretending = version != NULL;
    if (version != NULL) {
        snprintf(g_pretend_version, sizeof(g_pretend_version), "%s", version);
    }
}

static const char * gmn_running_ggml(void) {
    return g_pretending ? g_pretend_version : ggml_version();
}

const char * gmn_kernel_name(int kernel) {
    static const char * names[GMN_KERNEL_COUNT] = {
        [GMN_KERNEL_OUTER] = "out_prod", [GMN_KERNEL_MATMUL] = "mul_mat", [GMN_KERNEL_GET_ROWS] = "get_rows",
        [GMN_KERNEL_GET_ROWS_BACK] = "get_rows_back", [GMN_KERNEL_SUM_ROWS_INTO] = "repeat_back",
        [GMN_KERNEL_ACC_FRONT] = "acc", [GMN_KERNEL_REPEAT_ROWS] = "repeat",
    };
    return kernel >= 0 && kernel < GMN_KERNEL_COUNT ? names[kernel] : NULL;
}

/* Whether the CPU backend's registry reports feature name as on (asked through the registry, so that a build
 * whose backends load at run time links too). */
static int gmn_cpu_feature(const char * name) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_reg_t reg = cpu != NULL ? ggml_backend_dev_backend_reg(cpu) : NULL;
    ggml_backend_get_features_t get =
        reg != NULL ? (ggml_backend_get_features_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features") : NULL;
    if (get == NULL) {
        return 0;
    }
    for (struct ggml_backend_feature * f = get(reg); f != NULL && f->name != NULL; f++) {
        if (strcmp(f->name, name) == 0) {
            return f->value != NULL && strcmp(f->value, "0") != 0;
        }
    }
    return 0;
}

static int gmn_has_quantized_kernel(const gmn_model * m) {
    for (int i = 0; i < m->net.n_layers; i++) {
        if (m->net.layers[i].kind == GMN_LAYER_CONV2D && m->lw[i][0]->type != GGML_TYPE_F32) {
            return 1;
        }
    }
    return 0;
}

int gmn_plan_init(gmn_model * m, int asked) {
    if (asked != GMN_GRAPH_AUTO && asked != GMN_GRAPH_CPU && asked != GMN_GRAPH_PORTABLE) {
        return gmn_fail(GMN_E_INVALID, "graph must be auto, cpu or portable (got %d)", asked);
    }
    const int on_cpu = m->backend_cpu == NULL;
    if (asked == GMN_GRAPH_CPU && !on_cpu) {
        return gmn_fail(GMN_E_INVALID, "graph 'cpu' runs on the CPU device only, and this model runs on %s; use "
                        "graph='portable' (or 'auto')", ggml_backend_dev_name(m->dev));
    }
    struct gmn_plan * p = &m->plan; /* the choices only: the records of graphs built stay until they are rebuilt */
    p->kernels        = 0;
    p->why[0]         = '\0';
    p->accel_products = m->n_accel > 0;
    p->llamafile      = gmn_cpu_feature("LLAMAFILE");
    const int quantized = gmn_has_quantized_kernel(m);
    p->graph = asked == GMN_GRAPH_PORTABLE || !on_cpu || quantized ? GMN_GRAPH_PORTABLE : GMN_GRAPH_CPU;
    const char * running = gmn_running_ggml();
    if (p->graph != GMN_GRAPH_CPU) {
        snprintf(p->why, sizeof(p->why), "%s", !on_cpu ? "the model runs on an accelerator: the portable graph, ggml's ops"
                 : quantized ? "quantised convolution kernels run in the portable graph" : "the portable graph asks for ggml's ops only");
    } else if (p->accel_products) {
        snprintf(p->why, sizeof(p->why), "an accelerator beside the CPU (%s) runs the matrix products",
                 ggml_backend_name(m->backend_accel[0]));
    } else if (strcmp(running, GMN_GGML_PIN) != 0) {
        snprintf(p->why, sizeof(p->why), "ggml %s is not the pinned %s whose private layouts the kernels rely on: "
                 "ggml's own kernels run", running, GMN_GGML_PIN);
    } else {
        p->kernels = 1;
    }
    return GMN_OK;
}

/* Products the shim's kernel does not take run in ggml: its CPU product (llamafile's sgemm) wants padded shapes,
 * and so do the small ones an accelerator (BLAS) leaves to the CPU; padding changes no bit of a product. */
int gmn_plan_ggml_product(const struct gmn_plan * p, int64_t P) {
    return !p->kernels || P < GMN_MM_MIN_N;
}

int64_t gmn_plan_rows(const struct gmn_plan * p, int64_t K, int64_t P) {
    return gmn_plan_ggml_product(p, P) && p->llamafile ? (K + 7) / 8 * 8 : K;
}

int64_t gmn_plan_outputs(const struct gmn_plan * p, int64_t n, int64_t P) {
    return gmn_plan_ggml_product(p, P) && p->llamafile && n % 4 != 0 ? (n + 3) / 4 * 4 : n;
}

static int gmn_cmp_str(const void * a, const void * b) {
    return strcmp(*(const char * const *) a, *(const char * const *) b);
}

void gmn_plan_record_ops(struct gmn_plan * p, const struct ggml_cgraph * g, int training) {
    char * ops = training ? p->train_ops : p->ops;
    const char * names[GGML_OP_COUNT + GGML_UNARY_OP_COUNT];
    int n = 0;
    for (int i = 0; i < ggml_graph_n_nodes((struct ggml_cgraph *) g); i++) {
        const char * name = ggml_op_desc(ggml_graph_node((struct ggml_cgraph *) g, i));
        int seen = 0;
        for (int j = 0; j < n && !seen; j++) {
            seen = strcmp(names[j], name) == 0;
        }
        if (!seen && n < (int) (sizeof(names) / sizeof(names[0]))) {
            names[n++] = name;
        }
    }
    qsort(names, (size_t) n, sizeof(names[0]), gmn_cmp_str);
    const size_t cap = sizeof(p->ops);
    ops[0] = '\0';
    size_t used = 0;
    for (int j = 0; j < n; j++) {
        const int w = snprintf(ops + used, cap - used, "%s%s", j ? " " : "", names[j]);
        if (w < 0 || (size_t) w >= cap - used) {
            break;
        }
        used += (size_t) w;
    }
    memset(training ? p->train_taken : p->taken, 0, sizeof(p->taken));
}
