/* gmn_model.c - model handles: devices, parameter tensors, forward graph and prediction. */
#include "gmn_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

int64_t gmn_image_pixels(const gmn_model * m) {
    return (int64_t) m->net.image_h * m->net.image_w;
}

static int gmn_eval_prepare(gmn_model * m, int64_t batch);
static void gmn_eval_free(gmn_model * m);

static int gmn_default_threads(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) {
            return n;
        }
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int) n : 1;
}

struct gmn_thread_gate {
    pthread_mutex_t lock;
};

static void * gmn_thread_wait(void * arg) {
    struct gmn_thread_gate * gate = arg;
    pthread_mutex_lock(&gate->lock);
    pthread_mutex_unlock(&gate->lock);
    return NULL;
}

/* How many of n threads (the caller's included) can run at once: libgomp exits the whole process when it
 * cannot start a thread of its team, so a team larger than the cores is tried here first, with threads of
 * the same default stack size, held together and then joined. */
static int gmn_threads_startable(int n) {
    struct gmn_thread_gate gate = { PTHREAD_MUTEX_INITIALIZER };
    pthread_t * ids = malloc(sizeof(pthread_t) * (size_t) n);
    if (ids == NULL) {
        return 1;
    }
    pthread_mutex_lock(&gate.lock);
    int started = 0;
    while (started < n - 1 && pthread_create(&ids[started], NULL, gmn_thread_wait, &gate) == 0) {
        started++;
    }
    pthread_mutex_unlock(&gate.lock);
    for (int i = 0; i < started; i++) {
        pthread_join(ids[i], NULL);
    }
    free(ids);
    return started + 1;
}

/* Adds the parameter tensors to the model's weight context, stored as `storage` says (NULL: f32). */
static void gmn_define_params(gmn_model * m, const struct gmn_storage * storage) {
    struct gmn_param_spec specs[GMN_MAX_TENSORS];
    const int n = gmn_net_params(&m->net, specs);
    for (int i = 0; i < n; i++) {
        struct ggml_tensor * t = storage != NULL ? ggml_new_tensor(m->ctx_w, storage[i].type, 4, storage[i].ne)
                                                 : ggml_new_tensor(m->ctx_w, GGML_TYPE_F32, 4, specs[i].ne);
        ggml_set_name(t, specs[i].name);
        m->trainable[m->n_w] = (unsigned char) specs[i].trainable;
        m->w[m->n_w++] = t;
        m->lw[specs[i].layer][specs[i].which] = t;
    }
}

static _Atomic int g_cpu_as_accel; /* gmn_testing_cpu_as_accel */

void gmn_testing_cpu_as_accel(int on) {
    atomic_store_explicit(&g_cpu_as_accel, on != 0, memory_order_relaxed);
}

int gmn_model_create(const struct gmn_net * net, const char * device, int n_threads, const struct gmn_storage * storage,
                     gmn_model ** out) {
    gmn_ensure_init();
    struct gmn_layer layers[GMN_MAX_LAYERS];
    int st = gmn_net_prepare(net, layers, NULL, NULL);
    if (st != GMN_OK) {
        return st;
    }
    if (n_threads < 0 || n_threads > GMN_MAX_THREADS) {
        return gmn_fail(GMN_E_INVALID, "model: n_threads is %d; use 0 (all cores) or 1..%d", n_threads, GMN_MAX_THREADS);
    }
    if (n_threads > gmn_default_threads()) {
        const int can = gmn_threads_startable(n_threads);
        if (can < n_threads) {
            return gmn_fail(GMN_E_INVALID, "model: this process cannot start %d threads (only %d: a memory or process "
                            "limit); use threads=0 (all %d cores) or at most %d", n_threads, can,
                            gmn_default_threads(), can);
        }
    }
    ggml_backend_dev_t dev = NULL;
    st = gmn_find_device(device, &dev);
    if (st != GMN_OK) {
        return st;
    }
    gmn_model * m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return gmn_fail(GMN_E_NOMEM, "model: out of memory");
    }
    memcpy(m->layers, layers, sizeof(layers));
    m->net        = *net;
    m->net.layers = m->layers;
    m->n_classes  = gmn_net_classes(&m->net);
    m->dev       = dev;
    m->n_threads = n_threads > 0 ? n_threads : gmn_default_threads();

    m->backend = ggml_backend_dev_init(dev, NULL);
    if (m->backend == NULL) {
        gmn_model_free(m);
        return gmn_fail(GMN_E_DEVICE, "model: could not initialise device '%s'", ggml_backend_dev_name(dev));
    }
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
        /* accelerator devices such as ggml's BLAS backend take the ops they support (mul_mat, out_prod) */
        for (size_t i = 0; i < ggml_backend_dev_count() && m->n_accel < GMN_MAX_ACCEL; i++) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            if (ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_ACCEL) {
                ggml_backend_t b = ggml_backend_dev_init(d, NULL);
                if (b != NULL) {
                    m->backend_accel[m->n_accel++] = b;
                }
            }
        }
        if (m->n_accel == 0 && atomic_load_explicit(&g_cpu_as_accel, memory_order_relaxed)) {
            ggml_backend_t b = ggml_backend_dev_init(dev, NULL); /* gmn_testing_cpu_as_accel: a second CPU backend */
            if (b != NULL) {
                m->backend_accel[m->n_accel++] = b;
            }
        }
    } else {
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        m->backend_cpu = cpu ? ggml_backend_dev_init(cpu, NULL) : NULL;
        if (m->backend_cpu == NULL) {
            gmn_model_free(m);
            return gmn_fail(GMN_E_DEVICE, "model: could not initialise the CPU backend");
        }
    }
    gmn_model_use_threads(m, m->n_threads);

    struct ggml_init_params ip = { GMN_MAX_TENSORS * ggml_tensor_overhead(), NULL, true };
    m->ctx_w = ggml_init(ip);
    if (m->ctx_w == NULL) {
        gmn_model_free(m);
        return gmn_fail(GMN_E_NOMEM, "model: out of memory");
    }
    gmn_define_params(m, storage);
    m->buf_w = ggml_backend_alloc_ctx_tensors(m->ctx_w, m->backend);
    if (m->buf_w == NULL) {
        gmn_model_free(m);
        return gmn_fail(GMN_E_NOMEM, "model: could not allocate the weights on '%s'", ggml_backend_dev_name(dev));
    }
    ggml_backend_buffer_set_usage(m->buf_w, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

    m->sched_eval = gmn_model_new_sched(m);
    if (m->sched_eval == NULL) {
        gmn_model_free(m);
        return gmn_fail(GMN_E_NOMEM, "model: could not create the scheduler");
    }
    gmn_plan_init(m, GMN_GRAPH_AUTO);
    *out = m;
    return GMN_OK;
}

int gmn_model_set_graph(gmn_model * m, int graph) {
    gmn_clear_error();
    if (m == NULL) {
        return gmn_fail(GMN_E_INVALID, "set_graph: NULL model");
    }
    if (m->train != NULL) {
        return gmn_fail(GMN_E_STATE, "set_graph: a training run is in progress; choose the graph before training");
    }
    const int form = m->plan.graph, kernels = m->plan.kernels;
    const int st = gmn_plan_init(m, graph);
    if (st == GMN_OK && (form != m->plan.graph || kernels != m->plan.kernels)) {
        gmn_eval_free(m); /* the prediction graph (and its record in the plan) is rebuilt in the new form */
    }
    return st;
}

int gmn_model_plan(gmn_model * m, struct gmn_plan_info * out) {
    gmn_clear_error();
    if (m == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "plan: NULL argument");
    }
    const struct gmn_plan * p = &m->plan;
    if (p->train_ops[0] == '\0' && m->ctx_eval == NULL) {
        const int st = gmn_eval_prepare(m, 1);
        if (st != GMN_OK) {
            return st;
        }
    }
    memset(out, 0, sizeof(*out));
    out->graph          = p->graph;
    out->kernels        = p->kernels;
    out->accel_products = p->accel_products;
    out->llamafile      = p->llamafile;
    snprintf(out->why_no_kernels, sizeof(out->why_no_kernels), "%s", p->why);
    const int training = p->train_ops[0] != '\0';
    memcpy(out->taken, training ? p->train_taken : p->taken, sizeof(out->taken));
    snprintf(out->ops, sizeof(out->ops), "%s", training ? p->train_ops : p->ops);
    return GMN_OK;
}

/* OpenMP's thread pool does not survive fork(): a child process that enters a parallel region after its
 * parent has used one waits forever. ggml runs one thread without entering a parallel region, so a
 * forked child is limited to one thread once the parent has run more. */
static _Atomic int g_threads_used = 0;
static _Atomic int g_thread_limit = 0; /* 0: none */

static void gmn_after_fork_child(void) {
    if (g_threads_used) {
        g_thread_limit = 1;
    }
}

static pthread_once_t g_fork_once = PTHREAD_ONCE_INIT;

static void gmn_register_fork_handler(void) {
    pthread_atfork(NULL, NULL, gmn_after_fork_child);
}

int gmn_thread_limit(void) {
    return g_thread_limit;
}

int gmn_model_use_threads(gmn_model * m, int n_threads) {
    pthread_once(&g_fork_once, gmn_register_fork_handler);
    if (g_thread_limit > 0 && n_threads > g_thread_limit) {
        n_threads = g_thread_limit;
    }
    if (n_threads > 1) {
        g_threads_used = 1;
    }
    gmn_backend_set_threads(m->backend_cpu != NULL ? m->backend_cpu : m->backend, n_threads);
    for (int i = 0; i < m->n_accel; i++) {
        gmn_backend_set_threads(m->backend_accel[i], n_threads);
    }
    return n_threads;
}

ggml_backend_sched_t gmn_model_new_sched(const gmn_model * m) {
    /* priority order: the chosen device, then accelerators, then the CPU (always last) */
    ggml_backend_t backends[GMN_MAX_ACCEL + 2];
    int n = 0;
    if (m->backend_cpu != NULL) {
        backends[n++] = m->backend;
    }
    for (int i = 0; i < m->n_accel; i++) {
        backends[n++] = m->backend_accel[i];
    }
    backends[n++] = m->backend_cpu != NULL ? m->backend_cpu : m->backend;
    return ggml_backend_sched_new(backends, NULL, n, GGML_DEFAULT_GRAPH_SIZE, false, false);
}

int gmn_model_init(const struct gmn_net * net, const char * device, int n_threads, uint64_t seed, gmn_model ** out) {
    gmn_clear_error();
    if (out == NULL) {
        return gmn_fail(GMN_E_INVALID, "model_init: out is NULL");
    }
    *out = NULL;
    gmn_model * m = NULL;
    int st = gmn_model_create(net, device, n_threads, NULL, &m);
    if (st != GMN_OK) {
        return st;
    }
    struct gmn_param_spec specs[GMN_MAX_TENSORS];
    gmn_net_params(&m->net, specs);
    /* PyTorch's defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weights and biases of convolutions and dense
     * layers (drawn in tensor order from one stream), constants for batch normalisation (weight and running variance
     * 1, bias and running mean 0) */
    struct gmn_rng rng;
    gmn_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_w; i++) {
        struct ggml_tensor * t = m->w[i];
        const int64_t ne = ggml_nelements(t);
        float * buf = malloc((size_t) ne * sizeof(float));
        if (buf == NULL) {
            gmn_model_free(m);
            return gmn_fail(GMN_E_NOMEM, "model_init: out of memory");
        }
        const double bound = 1.0 / sqrt((double) specs[i].fan_in);
        for (int64_t j = 0; j < ne; j++) {
            buf[j] = specs[i].init == GMN_INIT_ONES  ? 1.0f
                   : specs[i].init == GMN_INIT_ZEROS ? 0.0f
                   : (float) ((2.0 * gmn_rng_uniform(&rng) - 1.0) * bound);
        }
        ggml_backend_tensor_set(t, buf, 0, ggml_nbytes(t));
        free(buf);
    }
    *out = m;
    return GMN_OK;
}

static void gmn_eval_free(gmn_model * m) {
    gmn_consts_free(&m->eval_consts);
    ggml_free(m->ctx_eval);
    m->ctx_eval   = NULL;
    m->gf_eval    = NULL;
    m->eval_in    = NULL;
    m->eval_out   = NULL;
    m->eval_batch = 0;
    free(m->eval_buf);
    m->eval_buf = NULL;
}

void gmn_model_free(gmn_model * m) {
    if (m == NULL) {
        return;
    }
    if (m->train != NULL) {
        m->train_free(m->train);
    }
    if (m->opt != NULL) {
        m->opt_free(m->opt);
    }
    gmn_eval_free(m);
    if (m->sched_eval) {
        ggml_backend_sched_free(m->sched_eval);
    }
    if (m->buf_w) {
        ggml_backend_buffer_free(m->buf_w);
    }
    ggml_free(m->ctx_w);
    for (int i = 0; i < m->n_accel; i++) {
        ggml_backend_free(m->backend_accel[i]);
    }
    if (m->backend_cpu) {
        ggml_backend_free(m->backend_cpu);
    }
    if (m->backend) {
        ggml_backend_free(m->backend);
    }
    for (int i = 0; i < m->n_meta; i++) {
        free(m->meta_keys[i]);
        free(m->meta_values[i]);
    }
    free(m->meta_keys);
    free(m->meta_values);
    free(m);
}

int gmn_model_get_net(const gmn_model * m, struct gmn_net * out, struct gmn_layer * layers, int cap) {
    gmn_clear_error();
    if (m == NULL || out == NULL || (cap > 0 && layers == NULL)) {
        return gmn_fail(GMN_E_INVALID, "model_get_net: NULL argument");
    }
    *out = m->net;
    const int n = cap < m->net.n_layers ? (cap > 0 ? cap : 0) : m->net.n_layers;
    if (n > 0) {
        memcpy(layers, m->layers, (size_t) n * sizeof(struct gmn_layer));
    }
    out->layers = layers;
    return GMN_OK;
}

int gmn_model_n_classes(const gmn_model * m) {
    return m ? m->n_classes : 0;
}

int gmn_model_device(const gmn_model * m, char * name, size_t n) {
    gmn_clear_error();
    if (m == NULL || name == NULL || n == 0) {
        return gmn_fail(GMN_E_INVALID, "model_device: NULL argument");
    }
    snprintf(name, n, "%s", ggml_backend_dev_name(m->dev));
    return GMN_OK;
}

const struct ggml_tensor * gmn_model_first_quantized(const gmn_model * m) {
    for (int i = 0; i < m->n_w; i++) {
        if (m->w[i]->type != GGML_TYPE_F32) {
            return m->w[i];
        }
    }
    return NULL;
}

const char * gmn_model_arch_name(const gmn_model * m) {
    return gmn_model_first_quantized(m) != NULL ? GMN_ARCH_OWN : gmn_net_arch_name(&m->net);
}

const char * gmn_model_architecture(const gmn_model * m) {
    return m ? gmn_model_arch_name(m) : "";
}

/* The network's description of parameter i. */
static struct gmn_param_spec gmn_model_spec(const gmn_model * m, int i) {
    struct gmn_param_spec specs[GMN_MAX_TENSORS];
    gmn_net_params(&m->net, specs);
    return specs[i];
}

static int gmn_tensor_index(const gmn_model * m, const struct ggml_tensor * t) {
    for (int i = 0; i < m->n_w; i++) {
        if (m->w[i] == t) {
            return i;
        }
    }
    return -1;
}

int gmn_model_n_tensors(const gmn_model * m) {
    return m ? m->n_w : 0;
}

int gmn_model_tensor_info(const gmn_model * m, int i, char * name, size_t name_cap, int64_t * ne4) {
    gmn_clear_error();
    if (m == NULL || name == NULL || ne4 == NULL || name_cap == 0) {
        return gmn_fail(GMN_E_INVALID, "model_tensor_info: NULL argument");
    }
    if (i < 0 || i >= m->n_w) {
        return gmn_fail(GMN_E_INVALID, "model_tensor_info: index %d out of range [0, %d)", i, m->n_w);
    }
    snprintf(name, name_cap, "%s", ggml_get_name(m->w[i]));
    for (int d = 0; d < 4; d++) {
        ne4[d] = gmn_model_spec(m, i).ne[d];
    }
    return GMN_OK;
}

struct ggml_tensor * gmn_model_tensor(const gmn_model * m, const char * name) {
    for (int i = 0; i < m->n_w; i++) {
        if (strcmp(ggml_get_name(m->w[i]), name) == 0) {
            return m->w[i];
        }
    }
    return NULL;
}

/* Finds parameter `name` for a copy of n floats to or from data. */
static int gmn_lookup_tensor(const gmn_model * m, const char * name, int64_t n, const void * data, struct ggml_tensor ** out) {
    gmn_clear_error();
    if (m == NULL || name == NULL || data == NULL) {
        return gmn_fail(GMN_E_INVALID, "tensor access: NULL argument");
    }
    struct ggml_tensor * t = gmn_model_tensor(m, name);
    if (t == NULL) {
        return gmn_fail(GMN_E_INVALID, "tensor access: the %s model has no tensor '%s'", gmn_model_arch_name(m), name);
    }
    const struct gmn_param_spec spec = gmn_model_spec(m, gmn_tensor_index(m, t));
    const int64_t ne = spec.ne[0] * spec.ne[1] * spec.ne[2] * spec.ne[3];
    if (n != ne) {
        return gmn_fail(GMN_E_INVALID, "tensor access: '%s' has %lld elements, got %lld", name, (long long) ne, (long long) n);
    }
    *out = t;
    return GMN_OK;
}

int gmn_model_get_tensor(const gmn_model * m, const char * name, float * data, int64_t n) {
    struct ggml_tensor * t = NULL;
    int st = gmn_lookup_tensor(m, name, n, data, &t);
    if (st != GMN_OK) {
        return st;
    }
    const struct gmn_param_spec spec = gmn_model_spec(m, gmn_tensor_index(m, t));
    return gmn_tensor_get_f32(t, gmn_storage_row(&spec, t), data);
}

int gmn_model_set_tensor(gmn_model * m, const char * name, const float * data, int64_t n) {
    struct ggml_tensor * t = NULL;
    int st = gmn_lookup_tensor(m, name, n, data, &t);
    if (st != GMN_OK) {
        return st;
    }
    if (t->type != GGML_TYPE_F32) {
        return gmn_fail(GMN_E_STATE, "set_tensor: '%s' is stored as %s; the weights of a quantised model are read-only: "
                        "set them on a dequantised copy (quantize to f32)", name, ggml_type_name(t->type));
    }
    const int variance = gmn_is_running_var(name);
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(data[i])) {
            return gmn_fail(GMN_E_INVALID, "set_tensor: '%s' element %lld is not finite", name, (long long) i);
        }
        if (variance && data[i] < 0.0f) {
            return gmn_fail(GMN_E_INVALID, "set_tensor: '%s' element %lld is %g, but a running variance is never negative",
                            name, (long long) i, (double) data[i]);
        }
    }
    ggml_backend_tensor_set(t, data, 0, ggml_nbytes(t));
    m->diverged = 0;
    m->opt_stale = 1;
    return GMN_OK;
}

int gmn_model_meta_count(const gmn_model * m) {
    return m ? m->n_meta : 0;
}

int gmn_model_meta_get(const gmn_model * m, int i, const char ** key, const char ** value) {
    gmn_clear_error();
    if (m == NULL || key == NULL || value == NULL) {
        return gmn_fail(GMN_E_INVALID, "model_meta_get: NULL argument");
    }
    if (i < 0 || i >= m->n_meta) {
        return gmn_fail(GMN_E_INVALID, "model_meta_get: index %d out of range [0, %d)", i, m->n_meta);
    }
    *key   = m->meta_keys[i];
    *value = m->meta_values[i];
    return GMN_OK;
}

static int gmn_eval_prepare(gmn_model * m, int64_t batch) {
    if (m->ctx_eval != NULL && m->eval_batch == batch) {
        return GMN_OK;
    }
    gmn_eval_free(m);
    const int64_t npix = gmn_image_pixels(m);
    struct ggml_init_params ip = { GGML_DEFAULT_GRAPH_SIZE * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    m->ctx_eval = ggml_init(ip);
    m->eval_buf = malloc((size_t) (batch * npix) * sizeof(float));
    if (m->ctx_eval == NULL || m->eval_buf == NULL) {
        gmn_eval_free(m);
        return gmn_fail(GMN_E_NOMEM, "predict: out of memory for a batch of %lld images", (long long) batch);
    }
    m->eval_in = ggml_new_tensor_2d(m->ctx_eval, GGML_TYPE_F32, npix, batch);
    ggml_set_name(m->eval_in, "images");
    ggml_set_input(m->eval_in);
    int st = gmn_consts_init(&m->eval_consts);
    if (st != GMN_OK) {
        gmn_eval_free(m);
        return st;
    }
    m->eval_out = ggml_soft_max(m->ctx_eval, gmn_forward(m, m->ctx_eval, m->eval_in, NULL, &m->eval_consts));
    ggml_set_name(m->eval_out, "probs");
    ggml_set_output(m->eval_out);
    m->gf_eval = ggml_new_graph(m->ctx_eval);
    ggml_build_forward_expand(m->gf_eval, m->eval_out);
    st = gmn_check_graph_memory(m->dev, m->eval_out, 1.0, "predict", batch);
    if (st == GMN_OK) {
        st = gmn_consts_upload(&m->eval_consts, m->backend, "predict");
    }
    if (st != GMN_OK) {
        gmn_eval_free(m);
        return st;
    }
    gmn_plan_record_ops(&m->plan, m->gf_eval, 0);
    ggml_backend_sched_reset(m->sched_eval);
    if (!ggml_backend_sched_alloc_graph(m->sched_eval, m->gf_eval)) {
        gmn_eval_free(m);
        return gmn_fail(GMN_E_NOMEM, "predict: could not allocate the compute graph for %lld images", (long long) batch);
    }
    if (m->plan.kernels) {
        /* on the CPU, matrix products (and the other ops the shim has kernels for) run the shim's kernels, as in
         * training; the graph is allocated, so changing a node's op no longer changes its memory */
        struct gmn_cpu_kernels k;
        gmn_cpu_kernels_init(m->ctx_eval, &k, m->plan.taken);
        for (int i = 0; i < ggml_graph_n_nodes(m->gf_eval); i++) {
            gmn_cpu_kernels_adopt(ggml_graph_node(m->gf_eval, i), &k);
        }
    }
    m->eval_batch = batch;
    return GMN_OK;
}

static int gmn_eval_run(gmn_model * m, int64_t rows, float * probs) {
    const int64_t npix = gmn_image_pixels(m);
    if (rows < m->eval_batch) {
        memset(m->eval_buf + rows * npix, 0, (size_t) ((m->eval_batch - rows) * npix) * sizeof(float));
    }
    ggml_backend_tensor_set(m->eval_in, m->eval_buf, 0, ggml_nbytes(m->eval_in));
    /* a few images are too little work to share: waking a second thread costs more than it saves */
    gmn_model_use_threads(m, m->eval_batch < GMN_SMALL_BATCH ? 1 : m->n_threads);
    if (ggml_backend_sched_graph_compute(m->sched_eval, m->gf_eval) != GGML_STATUS_SUCCESS) {
        return gmn_fail(GMN_E_DEVICE, "predict: the backend failed to compute the graph");
    }
    ggml_backend_tensor_get(m->eval_out, probs, 0, (size_t) (rows * m->n_classes) * sizeof(float));
    return GMN_OK;
}

/* Fills eval_buf with images [i0, i0 + rows) of some source; returns a status. */
typedef int (*gmn_fill_fn)(gmn_model * m, const void * src, int64_t i0, int64_t rows);

/* Predicts n images chunk by chunk through the eval graph, fill() supplying each chunk's pixels. */
static int gmn_predict_chunks(gmn_model * m, int64_t n, gmn_fill_fn fill, const void * src, float * probs) {
    int st = gmn_eval_prepare(m, n < GMN_EVAL_BATCH ? n : GMN_EVAL_BATCH);
    for (int64_t i0 = 0; st == GMN_OK && i0 < n; i0 += m->eval_batch) {
        const int64_t rows = (n - i0) < m->eval_batch ? (n - i0) : m->eval_batch;
        st = fill(m, src, i0, rows);
        if (st == GMN_OK) {
            st = gmn_eval_run(m, rows, probs + i0 * m->n_classes);
        }
    }
    return st;
}

static int gmn_fill_u8(gmn_model * m, const void * src, int64_t i0, int64_t rows) {
    const int64_t npix = gmn_image_pixels(m);
    gmn_u8_to_f32(m->eval_buf, (const uint8_t *) src + i0 * npix, rows * npix);
    return GMN_OK;
}

static int gmn_fill_f32(gmn_model * m, const void * src, int64_t i0, int64_t rows) {
    const int64_t npix = gmn_image_pixels(m);
    const float * x = (const float *) src + i0 * npix;
    for (int64_t j = 0; j < rows * npix; j++) {
        if (!isfinite(x[j])) {
            return gmn_fail(GMN_E_INVALID, "predict: image %lld has a non-finite pixel", (long long) (i0 + j / npix));
        }
    }
    memcpy(m->eval_buf, x, (size_t) (rows * npix) * sizeof(float));
    return GMN_OK;
}

struct gmn_rows_src {
    const gmn_dataset * ds;
    const int64_t     * idx;
};

static int gmn_fill_rows(gmn_model * m, const void * src, int64_t i0, int64_t rows) {
    const struct gmn_rows_src * r = src;
    const int64_t npix = r->ds->n_pixels;
    for (int64_t i = 0; i < rows; i++) {
        gmn_u8_to_f32(m->eval_buf + i * npix, r->ds->images + r->idx[i0 + i] * npix, npix);
    }
    return GMN_OK;
}

int gmn_model_predict(gmn_model * m, const void * x, int x_is_float, int64_t n, float * probs) {
    gmn_clear_error();
    if (m == NULL || x == NULL || probs == NULL) {
        return gmn_fail(GMN_E_INVALID, "predict: NULL argument");
    }
    if (n <= 0) {
        return gmn_fail(GMN_E_INVALID, "predict: need at least one image, got %lld", (long long) n);
    }
    return gmn_predict_chunks(m, n, x_is_float ? gmn_fill_f32 : gmn_fill_u8, x, probs);
}

int gmn_model_activation(gmn_model * m, const float * x, int layer, float * out, int64_t n) {
    gmn_clear_error();
    if (m == NULL || x == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "activation: NULL argument");
    }
    if (layer < 0 || layer >= m->net.n_layers) {
        return gmn_fail(GMN_E_INVALID, "activation: layer %d out of range [0, %d)", layer, m->net.n_layers);
    }
    const int64_t npix = gmn_image_pixels(m);
    for (int64_t j = 0; j < npix; j++) {
        if (!isfinite(x[j])) {
            return gmn_fail(GMN_E_INVALID, "activation: the image has a non-finite pixel");
        }
    }
    gmn_eval_free(m); /* the scheduler's allocation is about to change; predict rebuilds its graph */
    struct ggml_init_params ip = { GGML_DEFAULT_GRAPH_SIZE * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    if (ctx == NULL) {
        return gmn_fail(GMN_E_NOMEM, "activation: out of memory for the graph");
    }
    struct gmn_consts consts;
    if (gmn_consts_init(&consts) != GMN_OK) {
        ggml_free(ctx);
        return gmn_fail(GMN_E_NOMEM, "activation: out of memory for the graph");
    }
    struct ggml_tensor * in = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, npix, 1);
    ggml_set_input(in);
    struct ggml_tensor * y = ggml_cont(ctx, gmn_forward_layers(m, ctx, in, NULL, layer + 1, &consts));
    ggml_set_output(y);
    if (ggml_nelements(y) != n) {
        const int64_t want = ggml_nelements(y);
        gmn_consts_free(&consts);
        ggml_free(ctx);
        return gmn_fail(GMN_E_INVALID, "activation: layer %d has %lld values, the buffer holds %lld", layer,
                        (long long) want, (long long) n);
    }
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    int st = gmn_check_graph_memory(m->dev, y, 1.0, "activation", 1);
    if (st == GMN_OK) {
        st = gmn_consts_upload(&consts, m->backend, "activation");
    }
    if (st == GMN_OK) {
        ggml_backend_sched_reset(m->sched_eval);
        if (!ggml_backend_sched_alloc_graph(m->sched_eval, gf)) {
            st = gmn_fail(GMN_E_NOMEM, "activation: could not allocate the compute graph");
        }
    }
    if (st == GMN_OK) {
        ggml_backend_tensor_set(in, x, 0, ggml_nbytes(in));
        gmn_model_use_threads(m, 1);
        if (ggml_backend_sched_graph_compute(m->sched_eval, gf) != GGML_STATUS_SUCCESS) {
            st = gmn_fail(GMN_E_DEVICE, "activation: the backend failed to compute the graph");
        } else {
            ggml_backend_tensor_get(y, out, 0, (size_t) n * sizeof(float));
        }
    }
    ggml_backend_sched_reset(m->sched_eval);
    gmn_consts_free(&consts);
    ggml_free(ctx);
    return st;
}

int gmn_predict_rows(gmn_model * m, const gmn_dataset * ds, const int64_t * idx, int64_t n, float * probs) {
    const struct gmn_rows_src src = { ds, idx };
    return gmn_predict_chunks(m, n, gmn_fill_rows, &src, probs);
}
