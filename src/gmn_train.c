/* gmn_train.c - datasets and training with ggml-opt (static graphs, own shuffling and epoch loop). */
#include "gmn_internal.h"

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The threads of a training batch. ggml's CPU threads meet at a spinning barrier tens of times a step, so when
 * another process keeps a core busy, a team of n threads waits on its descheduled member and can run several times
 * slower than one thread. The run therefore times its batches on n threads and, now and then (and at once when n
 * threads slow down), on one, and runs on whichever is faster: on a quiet machine that is n. Threads change no bit
 * of the results (every reduction the graph runs is summed in a fixed order), so neither does this choice. */
#define GMN_TEAM_PROBE_FIRST 4   /* batches on n threads before the first probe of one thread */
#define GMN_TEAM_PROBE_EVERY 100 /* batches between probes, doubled while the choice holds ... */
#define GMN_TEAM_PROBE_MAX   800 /* ... up to this */
#define GMN_TEAM_PROBE_LEN   2   /* batches a probe lasts */
#define GMN_TEAM_SAMPLES     5   /* the latest batch times kept per team size; their median is its estimate */
struct gmn_team {
    double  t[2][GMN_TEAM_SAMPLES]; /* seconds of the latest batches on n threads [0] and on one [1] (0: none) */
    int     next[2];
    int     one;                    /* the faster so far is one thread */
    int64_t until_probe;            /* batches left before the next probe */
    int64_t interval;               /* batches between probes now */
    int     probing;                /* batches of a probe left */
    double  ref_many;               /* the estimate on n threads when the last probe ended: a rise calls a probe */
};

static double gmn_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

/* The median of the latest batch times of one team size (a hiccup of the machine moves it little), or 0. */
static double gmn_team_estimate(const struct gmn_team * t, int one) {
    double v[GMN_TEAM_SAMPLES];
    int n = 0;
    for (int i = 0; i < GMN_TEAM_SAMPLES; i++) {
        if (t->t[one][i] > 0.0) {
            double x = t->t[one][i];
            int j = n++;
            for (; j > 0 && v[j - 1] > x; j--) {
                v[j] = v[j - 1];
            }
            v[j] = x;
        }
    }
    return n == 0 ? 0.0 : v[n / 2];
}

/* The threads for the next batch, of at most n. */
static int gmn_team_threads(const struct gmn_team * t, int n) {
    if (n <= 1) {
        return n;
    }
    return (t->one != (t->probing > 0)) ? 1 : n;
}

/* Note that a batch on threads took seconds, and plan the next. */
static void gmn_team_observe(struct gmn_team * t, int threads, int n, double seconds) {
    if (n <= 1) {
        return;
    }
    if (t->interval == 0) {
        t->interval = GMN_TEAM_PROBE_EVERY;
        t->until_probe = GMN_TEAM_PROBE_FIRST;
    }
    const int one = threads == 1;
    t->t[one][t->next[one]] = seconds;
    t->next[one] = (t->next[one] + 1) % GMN_TEAM_SAMPLES;
    const double many_s = gmn_team_estimate(t, 0), one_s = gmn_team_estimate(t, 1);
    if (t->probing > 0) {
        if (--t->probing == 0) {
            /* one thread must be clearly faster to take over, and n threads faster to take back; a choice that
             * holds is probed less and less often */
            const int was = t->one;
            t->one = t->one ? one_s < many_s : one_s < 0.8 * many_s;
            t->interval = t->one == was && t->interval < GMN_TEAM_PROBE_MAX ? 2 * t->interval : GMN_TEAM_PROBE_EVERY;
            t->until_probe = t->interval;
            t->ref_many = many_s;
        }
        return;
    }
    /* n threads slowing down well past their last estimate (another process took a core) is probed at once */
    const int slowed = !one && t->ref_many > 0.0 && many_s > 1.5 * t->ref_many;
    if (--t->until_probe <= 0 || (slowed && t->interval - t->until_probe >= 2 * GMN_TEAM_SAMPLES)) {
        t->probing = GMN_TEAM_PROBE_LEN;
    }
}

struct gmn_train_state {
    struct gmn_train_config cfg;
    struct gmn_train_timing timing;      /* where the time of this training went (gmn_model_train_timing) */
    ggml_backend_sched_t    sched;
    struct gmn_opt_tracker * tracker;    /* optimizer state tracking for exact resume (gmn_optstate.c), or NULL */
    ggml_backend_sched_eval_callback tracker_cb;
    struct gmn_cpu_kernels  kernels;     /* the shim's kernels for some of ggml's ops (the plan's kernels; else unused) */
    int                     use_kernels;
    struct gmn_consts       consts;      /* the portable graph's index tables */
    struct ggml_context   * ctx_in;      /* the statically allocated input tensor */
    ggml_backend_buffer_t   buf_in;
    struct ggml_tensor    * inputs;
    struct ggml_tensor    * masks[GMN_MAX_LAYERS]; /* dropout masks, per dropout layer (else NULL) */
    float                 * mask_buf;   /* staging for the largest mask */
    struct gmn_rng          mask_rng;   /* own stream, so dropout does not change the shuffle order */
    uint64_t                aug_seed;   /* augmentation: image k of the run draws from (aug_seed, k) */
    uint64_t                aug_count;  /* training images augmented so far */
    struct gmn_aug_ws     * aug_ws;     /* one workspace per gathering thread */
    int                     n_aug_ws;
    int                     augment;    /* cfg.augment does something */
    int                     h, w;       /* image size */
    int                     batches;    /* batches trained since train_init */
    struct ggml_context   * ctx_compute;
    ggml_opt_context_t      opt;
    ggml_opt_result_t       result;
    struct gmn_rng          rng;
    int64_t                 step;        /* optimizer steps taken */
    float                 * xbuf;        /* physical batch of images as floats */
    float                 * ybuf;        /* physical batch of one-hot labels */
    int64_t               * perm;
    int64_t                 perm_cap;
    float                 * probs;       /* validation scratch */
    int64_t                 probs_cap;
    struct gmn_team         team;        /* how many threads each batch runs on */
};

int gmn_dataset_init(const uint8_t * images, const int32_t * labels, int64_t n, int64_t n_pixels, int n_classes, gmn_dataset ** out) {
    gmn_ensure_init();
    gmn_clear_error();
    if (out == NULL || images == NULL || labels == NULL) {
        return gmn_fail(GMN_E_INVALID, "dataset_init: NULL argument");
    }
    *out = NULL;
    if (n <= 0 || n_pixels <= 0 || n_pixels > 4096LL * 4096LL) {
        return gmn_fail(GMN_E_INVALID, "dataset_init: need n > 0 images of 1..16M pixels, got n=%lld, pixels=%lld",
                        (long long) n, (long long) n_pixels);
    }
    if (n > (int64_t) (SIZE_MAX / 2) / n_pixels) {
        return gmn_fail(GMN_E_INVALID, "dataset_init: %lld images of %lld pixels do not fit in memory", (long long) n, (long long) n_pixels);
    }
    if (n_classes < 2 || n_classes > 1000) {
        return gmn_fail(GMN_E_INVALID, "dataset_init: n_classes is %d; it must be in [2, 1000]", n_classes);
    }
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] < 0 || labels[i] >= n_classes) {
            return gmn_fail(GMN_E_INVALID, "dataset_init: label %d at index %lld is outside [0, %d)", labels[i], (long long) i, n_classes);
        }
    }
    gmn_dataset * ds = calloc(1, sizeof(*ds));
    if (ds == NULL) {
        return gmn_fail(GMN_E_NOMEM, "dataset_init: out of memory");
    }
    ds->images = malloc((size_t) (n * n_pixels));
    ds->labels = malloc((size_t) n * sizeof(int32_t));
    if (ds->images == NULL || ds->labels == NULL) {
        gmn_dataset_free(ds);
        return gmn_fail(GMN_E_NOMEM, "dataset_init: out of memory for %lld images", (long long) n);
    }
    memcpy(ds->images, images, (size_t) (n * n_pixels));
    memcpy(ds->labels, labels, (size_t) n * sizeof(int32_t));
    ds->n = n;
    ds->n_pixels = n_pixels;
    ds->n_classes = n_classes;
    *out = ds;
    return GMN_OK;
}

void gmn_dataset_free(gmn_dataset * ds) {
    if (ds == NULL) {
        return;
    }
    free(ds->images);
    free(ds->labels);
    free(ds);
}

void gmn_train_state_free(struct gmn_train_state * st) {
    if (st == NULL) {
        return;
    }
    ggml_opt_result_free(st->result);
    ggml_opt_free(st->opt);
    free(st->tracker);
    ggml_free(st->ctx_compute);
    gmn_consts_free(&st->consts);
    if (st->buf_in) {
        ggml_backend_buffer_free(st->buf_in);
    }
    ggml_free(st->ctx_in);
    if (st->sched) {
        ggml_backend_sched_free(st->sched);
    }
    free(st->xbuf);
    free(st->ybuf);
    free(st->perm);
    free(st->probs);
    free(st->mask_buf);
    for (int i = 0; i < st->n_aug_ws; i++) {
        gmn_aug_ws_free(&st->aug_ws[i]);
    }
    free(st->aug_ws);
    free(st);
}

static int gmn_check_train_config(const struct gmn_train_config * c) {
    if (c->optimizer != GMN_OPT_ADAMW && c->optimizer != GMN_OPT_SGD) {
        return gmn_fail(GMN_E_INVALID, "train: unknown optimizer code %d (use adamw or sgd)", c->optimizer);
    }
    if (!(c->lr > 0.0f) || !isfinite(c->lr)) {
        return gmn_fail(GMN_E_INVALID, "train: learning rate %g must be a finite number > 0", (double) c->lr);
    }
    if (!(c->max_loss >= 0.0f) || !isfinite(c->max_loss)) {
        return gmn_fail(GMN_E_INVALID, "train: max_loss %g must be >= 0 (0 disables the check)", (double) c->max_loss);
    }
    if (!(c->lr_min_ratio >= 0.0f && c->lr_min_ratio <= 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "train: lr_min_ratio %g must be in [0, 1]", (double) c->lr_min_ratio);
    }
    if (c->schedule < GMN_SCHEDULE_CONSTANT || c->schedule > GMN_SCHEDULE_ONECYCLE) {
        return gmn_fail(GMN_E_INVALID, "train: unknown schedule code %d (use constant, cosine, linear or onecycle)", c->schedule);
    }
    if (!(c->label_smoothing >= 0.0f && c->label_smoothing < 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "train: label_smoothing %g must be in [0, 1) (0.1 is usual; 0 turns it off)",
                        (double) c->label_smoothing);
    }
    if (c->warmup_steps < 0 || c->total_steps <= 0) {
        return gmn_fail(GMN_E_INVALID, "train: warmup_steps %lld must be >= 0 and total_steps %lld > 0",
                        (long long) c->warmup_steps, (long long) c->total_steps);
    }
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "train: betas (%g, %g) must be in [0, 1)", (double) c->beta1, (double) c->beta2);
    }
    if (!(c->eps >= 0.0f) || !isfinite(c->eps)) {
        return gmn_fail(GMN_E_INVALID, "train: eps %g must be >= 0", (double) c->eps);
    }
    if (!(c->weight_decay >= 0.0f && c->weight_decay <= 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "train: weight decay %g must be in [0, 1]", (double) c->weight_decay);
    }
    if (c->weight_decay * c->lr > 1.0f) {
        return gmn_fail(GMN_E_INVALID, "train: weight_decay * lr = %g exceeds 1; lower one of them", (double) (c->weight_decay * c->lr));
    }
    if (c->batch_size <= 0 || c->physical_batch_size <= 0 || c->batch_size > GMN_MAX_BATCH) {
        return gmn_fail(GMN_E_INVALID, "train: batch sizes must be in [1, %d] (batch %lld, physical %lld)",
                        GMN_MAX_BATCH, (long long) c->batch_size, (long long) c->physical_batch_size);
    }
    if (c->batch_size % c->physical_batch_size != 0) {
        return gmn_fail(GMN_E_INVALID, "train: batch size %lld is not a multiple of the physical batch size %lld",
                        (long long) c->batch_size, (long long) c->physical_batch_size);
    }
    return GMN_OK;
}

/* One-cycle: up from lr/25 to lr over the warm-up, then down to lr*lr_min_ratio, each along half a cosine. */
static float gmn_onecycle_lr(const struct gmn_train_config * c, int64_t step) {
    const int64_t up = c->warmup_steps > 0 ? c->warmup_steps : (c->total_steps * 3 + 9) / 10;
    const double lo = c->lr / 25.0, hi = c->lr, end = c->lr * (double) c->lr_min_ratio;
    double lr;
    if (step < up) {
        const double p = (double) step / (double) up;
        lr = hi + (lo - hi) * 0.5 * (1.0 + cos(M_PI * p));
    } else {
        const int64_t span = c->total_steps - up;
        double p = span > 0 ? (double) (step - up) / (double) span : 1.0;
        p = p > 1.0 ? 1.0 : p;
        lr = end + (hi - end) * 0.5 * (1.0 + cos(M_PI * p));
    }
    return lr > 1e-12 ? (float) lr : 1e-12f; /* ggml-opt requires a positive rate */
}

static float gmn_schedule_lr(const struct gmn_train_config * c, int64_t step) {
    if (c->schedule == GMN_SCHEDULE_ONECYCLE) {
        return gmn_onecycle_lr(c, step);
    }
    if (step < c->warmup_steps) {
        return c->lr * (float) (step + 1) / (float) c->warmup_steps;
    }
    const int64_t span = c->total_steps - c->warmup_steps;
    double p = span > 0 ? (double) (step - c->warmup_steps) / (double) span : 1.0;
    p = p < 0.0 ? 0.0 : (p > 1.0 ? 1.0 : p);
    const double r = c->lr_min_ratio;
    double f = 1.0;
    if (c->schedule == GMN_SCHEDULE_COSINE) {
        f = r + (1.0 - r) * 0.5 * (1.0 + cos(M_PI * p));
    } else if (c->schedule == GMN_SCHEDULE_LINEAR) {
        f = 1.0 - (1.0 - r) * p;
    }
    const float lr = (float) (c->lr * f);
    return lr > 1e-12f ? lr : 1e-12f; /* ggml-opt requires a positive rate */
}

/* Sees every node of the training graph before it runs: with the plan's kernels, the nodes that the CPU kernel
 * wing takes (src/cpu/gmn_override.c: matrix and outer products, get_rows, get_rows_back, repeat_back, acc, repeat) are
 * turned into its kernels; then the optimizer-state tracker, if any. */
static bool gmn_train_eval_cb(struct ggml_tensor * t, bool ask, void * ud) {
    struct gmn_train_state * st = ud;
    if (ask && st->use_kernels) {
        gmn_cpu_kernels_adopt(t, &st->kernels);
    }
    return st->tracker_cb != NULL ? st->tracker_cb(t, ask, st->tracker) : false;
}

static struct ggml_opt_optimizer_params gmn_opt_params(void * ud) {
    struct gmn_train_state * st = ud;
    const struct gmn_train_config * c = &st->cfg;
    struct ggml_opt_optimizer_params p;
    memset(&p, 0, sizeof(p));
    const float lr = gmn_schedule_lr(c, st->step);
    p.adamw.alpha = lr;
    p.adamw.beta1 = c->beta1;
    p.adamw.beta2 = c->beta2;
    p.adamw.eps   = c->eps;
    p.adamw.wd    = c->weight_decay;
    p.sgd.alpha   = lr;
    p.sgd.wd      = c->weight_decay;
    st->step++;
    return p;
}

/* Room for what ggml-opt adds to the training graph beyond the record below (its loss, prediction and count nodes) and
 * for the tensors of its context that are no nodes. */
#define GMN_OPT_EXTRA_NODES 64

/* Records in the model's plan the ops of the training graph of a batch of B images: forward, loss, backward and
 * optimizer step. */
static int gmn_train_record_ops(gmn_model * m, int64_t B, int optimizer) {
    struct ggml_init_params ip = { 4 * GGML_DEFAULT_GRAPH_SIZE * ggml_tensor_overhead() +
                                   ggml_graph_overhead_custom(4 * GGML_DEFAULT_GRAPH_SIZE, true), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    struct gmn_consts consts;
    if (ctx == NULL || gmn_consts_init(&consts) != GMN_OK) {
        ggml_free(ctx);
        return gmn_fail(GMN_E_NOMEM, "plan: out of memory");
    }
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, gmn_image_pixels(m), B);
    struct ggml_tensor * masks[GMN_MAX_LAYERS] = { NULL };
    gmn_net_train_inputs(&m->net, ctx, B, masks); /* checked by the caller */
    for (int i = 0; i < m->n_w; i++) {
        if (m->trainable[i]) {
            ggml_set_param(m->w[i]); /* as training does: ggml's backward pass starts from the parameters */
        }
    }
    struct ggml_tensor * logits = gmn_forward(m, ctx, x, masks, &consts);
    struct ggml_tensor * labels = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, m->n_classes, B);
    struct ggml_tensor * loss = ggml_cross_entropy_loss(ctx, logits, labels);
    ggml_set_loss(loss);
    struct ggml_cgraph * g = ggml_new_graph_custom(ctx, 4 * GGML_DEFAULT_GRAPH_SIZE, true);
    ggml_build_forward_expand(g, loss);
    ggml_build_forward_expand(g, ggml_count_equal(ctx, ggml_argmax(ctx, logits), ggml_argmax(ctx, labels)));
    ggml_build_backward_expand(ctx, g, NULL);
    /* ggml-opt's hyperparameter tensors: 7 values for AdamW, 2 for SGD */
    struct ggml_tensor * hyper = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, optimizer == GMN_OPT_SGD ? 2 : 7);
    for (int i = 0; i < m->n_w; i++) {
        struct ggml_tensor * grad = ggml_graph_get_grad(g, m->w[i]);
        if (grad == NULL) {
            continue;
        }
        struct ggml_tensor * step = optimizer == GMN_OPT_SGD
            ? ggml_opt_step_sgd(ctx, m->w[i], grad, hyper)
            : ggml_opt_step_adamw(ctx, m->w[i], grad, ggml_dup_tensor(ctx, grad), ggml_dup_tensor(ctx, grad), hyper);
        ggml_build_forward_expand(g, step);
    }
    gmn_plan_record_ops(&m->plan, g, 1);
    /* ggml-opt builds the same graph (and, with gradient accumulation, one accumulation per parameter) in graphs and a
     * context of GGML_DEFAULT_GRAPH_SIZE nodes and tensors, and aborts when they do not fit */
    const int64_t nodes = ggml_graph_n_nodes(g) + m->n_w + GMN_OPT_EXTRA_NODES;
    gmn_consts_free(&consts);
    ggml_free(ctx);
    if (nodes > GGML_DEFAULT_GRAPH_SIZE) {
        return gmn_fail(GMN_E_INVALID, "train: the training graph of this network has about %lld nodes, more than the %d "
                        "that ggml-opt builds; use fewer layers (batchnorm layers and residual blocks take the most)",
                        (long long) nodes, GGML_DEFAULT_GRAPH_SIZE);
    }
    return GMN_OK;
}

int gmn_model_train_init(gmn_model * m, const struct gmn_train_config * config) {
    gmn_clear_error();
    if (m == NULL || config == NULL) {
        return gmn_fail(GMN_E_INVALID, "train_init: NULL argument");
    }
    const struct ggml_tensor * q = gmn_model_first_quantized(m);
    if (q != NULL) {
        return gmn_fail(GMN_E_STATE, "train_init: the model is quantised (%s is %s) and cannot be trained; fine-tune its "
                        "dequantised weights instead (Model.dequantize(), or mnist-train --init FILE)",
                        ggml_get_name(q), ggml_type_name(q->type));
    }
    int rc = gmn_check_train_config(config);
    if (rc == GMN_OK) {
        rc = gmn_augment_check(&config->augment, m->net.image_h, m->net.image_w);
    }
    if (rc != GMN_OK) {
        return rc;
    }
    gmn_train_state_free(m->train);
    m->train = NULL;

    struct gmn_train_state * st = calloc(1, sizeof(*st));
    if (st == NULL) {
        return gmn_fail(GMN_E_NOMEM, "train_init: out of memory");
    }
    st->cfg = *config;
    gmn_rng_seed(&st->rng, config->seed);
    gmn_rng_seed(&st->mask_rng, config->seed ^ 0x6d61736b64726f70ULL);
    st->aug_seed = config->seed ^ 0x6175676d656e7421ULL;
    st->augment = gmn_augment_active(&config->augment);
    st->h = m->net.image_h;
    st->w = m->net.image_w;
    /* the batch is gathered by the model's threads (gmn_gather_batch), each with its own workspace */
    if (st->augment) {
        st->aug_ws = calloc((size_t) m->n_threads, sizeof(*st->aug_ws));
        if (st->aug_ws == NULL) {
            gmn_train_state_free(st);
            return gmn_fail(GMN_E_NOMEM, "train_init: out of memory");
        }
        for (; st->n_aug_ws < m->n_threads; st->n_aug_ws++) {
            if (gmn_aug_ws_init(&st->aug_ws[st->n_aug_ws], &config->augment, m->net.image_h, m->net.image_w) != GMN_OK) {
                gmn_train_state_free(st);
                return GMN_E_NOMEM;
            }
        }
    }
    const int64_t B = config->physical_batch_size;
    const int64_t npix = gmn_image_pixels(m);
    st->xbuf = malloc((size_t) (B * npix) * sizeof(float));
    st->ybuf = malloc((size_t) (B * m->n_classes) * sizeof(float));

    st->sched = gmn_model_new_sched(m);

    struct ggml_init_params ip_in = { (1 + GMN_MAX_LAYERS) * ggml_tensor_overhead(), NULL, true };
    st->ctx_in = ggml_init(ip_in);
    struct ggml_init_params ip_c = { GGML_DEFAULT_GRAPH_SIZE * ggml_tensor_overhead() + 3 * ggml_graph_overhead_custom(GGML_DEFAULT_GRAPH_SIZE, true), NULL, true };
    st->ctx_compute = ggml_init(ip_c);
    if (st->xbuf == NULL || st->ybuf == NULL || st->sched == NULL || st->ctx_in == NULL || st->ctx_compute == NULL) {
        gmn_train_state_free(st);
        return gmn_fail(GMN_E_NOMEM, "train_init: out of memory");
    }
    st->inputs = ggml_new_tensor_2d(st->ctx_in, GGML_TYPE_F32, npix, B);
    ggml_set_name(st->inputs, "images");
    ggml_set_input(st->inputs);
    /* dropout masks (inputs) and batchnorm statistics (written by the graph, read after each batch) */
    rc = gmn_net_train_inputs(&m->net, st->ctx_in, B, st->masks);
    if (rc != GMN_OK) {
        gmn_train_state_free(st);
        return rc;
    }
    int64_t mask_max = 0;
    for (int i = 0; i < m->net.n_layers; i++) {
        if (m->layers[i].kind == GMN_LAYER_DROPOUT) {
            ggml_set_input(st->masks[i]);
            mask_max = ggml_nelements(st->masks[i]) > mask_max ? ggml_nelements(st->masks[i]) : mask_max;
        }
    }
    st->mask_buf = mask_max > 0 ? malloc((size_t) mask_max * sizeof(float)) : NULL;
    if (mask_max > 0 && st->mask_buf == NULL) {
        gmn_train_state_free(st);
        return gmn_fail(GMN_E_NOMEM, "train_init: out of memory for the dropout masks");
    }
    st->buf_in = ggml_backend_alloc_ctx_tensors(st->ctx_in, m->backend);
    if (st->buf_in == NULL) {
        gmn_train_state_free(st);
        return gmn_fail(GMN_E_NOMEM, "train_init: could not allocate a batch of %lld images on the device", (long long) B);
    }
    for (int i = 0; i < m->n_w; i++) {
        if (m->trainable[i]) { /* batchnorm's running statistics are not */
            ggml_set_param(m->w[i]);
        }
    }
    rc = gmn_consts_init(&st->consts);
    struct ggml_tensor * logits = rc == GMN_OK ? gmn_forward(m, st->ctx_compute, st->inputs, st->masks, &st->consts) : NULL;
    /* forward activations, their gradients and the backward temporaries: at most about 3x the forward */
    if (rc == GMN_OK) {
        rc = gmn_check_graph_memory(m->dev, logits, 3.0, "train_init", B);
    }
    if (rc == GMN_OK) {
        rc = gmn_consts_upload(&st->consts, m->backend, "train_init");
    }
    if (rc == GMN_OK) {
        rc = gmn_train_record_ops(m, B, config->optimizer);
    }
    if (rc != GMN_OK) {
        gmn_train_state_free(st);
        return rc;
    }

    struct ggml_opt_params op = ggml_opt_default_params(st->sched, GGML_OPT_LOSS_TYPE_CROSS_ENTROPY);
    op.ctx_compute     = st->ctx_compute;
    op.inputs          = st->inputs;
    op.outputs         = logits;
    op.opt_period      = (int32_t) (config->batch_size / B);
    op.get_opt_pars    = gmn_opt_params;
    op.get_opt_pars_ud = st;
    op.optimizer       = config->optimizer == GMN_OPT_SGD ? GGML_OPT_OPTIMIZER_TYPE_SGD : GGML_OPT_OPTIMIZER_TYPE_ADAMW;
    st->opt    = ggml_opt_init(op);
    st->result = ggml_opt_result_init();
    if (m->plan.kernels) {
        gmn_cpu_kernels_init(st->ctx_compute, &st->kernels, m->plan.train_taken);
        st->use_kernels = 1;
        ggml_backend_sched_set_eval_callback(st->sched, gmn_train_eval_cb, st);
    }
    if (st->opt == NULL || st->result == NULL) {
        gmn_train_state_free(st);
        return gmn_fail(GMN_E_NOMEM, "train_init: could not create the optimizer");
    }
    m->train      = st;
    m->train_free = gmn_train_state_free;
    return GMN_OK;
}

static int gmn_check_indices(const gmn_dataset * ds, const int64_t * idx, int64_t n, const char * what) {
    if (n < 0 || (n > 0 && idx == NULL)) {
        return gmn_fail(GMN_E_INVALID, "train_epoch: bad %s index array (n=%lld)", what, (long long) n);
    }
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= ds->n) {
            return gmn_fail(GMN_E_INVALID, "train_epoch: %s index %lld at position %lld is outside [0, %lld)",
                            what, (long long) idx[i], (long long) i, (long long) ds->n);
        }
    }
    return GMN_OK;
}

static void gmn_gather_rows(struct gmn_train_state * st, const gmn_dataset * ds, const int64_t * rows, int64_t r0, int64_t r1,
                            int n_classes, struct gmn_aug_ws * ws) {
    const int64_t npix = ds->n_pixels;
    const float s = st->cfg.label_smoothing, off = s / (float) n_classes, on = 1.0f - s + off;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * img = ds->images + rows[r] * npix;
        if (st->augment) {
            const uint64_t seed = gmn_augment_image_seed(st->aug_seed, st->aug_count + (uint64_t) r);
            gmn_augment_one(&st->cfg.augment, seed, ws, img, st->h, st->w, st->xbuf + r * npix);
        } else {
            gmn_u8_to_f32(st->xbuf + r * npix, img, npix);
        }
        if (s > 0.0f) {
            for (int k = 0; k < n_classes; k++) {
                st->ybuf[r * n_classes + k] = off;
            }
        }
        st->ybuf[r * n_classes + ds->labels[rows[r]]] = s > 0.0f ? on : 1.0f;
    }
}

/* Fills the batch buffers with images rows (augmented, when the run augments) and their one-hot labels. Every
 * image draws its augmentation from its own position in the run, so the result does not depend on the threads:
 * the model's threads share the rows, through OpenMP, whose workers are ggml's own and wait between graphs.
 * n_threads is what gmn_model_use_threads set: 1 in a process forked after threads ran, which must never enter a
 * parallel region. */
static void gmn_gather_batch(struct gmn_train_state * st, const gmn_dataset * ds, const int64_t * rows, int64_t B,
                             int n_classes, int n_threads) {
    memset(st->ybuf, 0, (size_t) (B * n_classes) * sizeof(float));
    if (st->augment && n_threads > st->n_aug_ws) {
        n_threads = st->n_aug_ws;
    }
#ifdef _OPENMP
    if (n_threads > 1 && B >= 2 * n_threads) {
#pragma omp parallel num_threads(n_threads)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            gmn_gather_rows(st, ds, rows, B * t / nt, B * (t + 1) / nt, n_classes, st->augment ? &st->aug_ws[t] : NULL);
        }
    } else
#endif
    {
        gmn_gather_rows(st, ds, rows, 0, B, n_classes, st->augment ? &st->aug_ws[0] : NULL);
    }
    if (st->augment) {
        st->aug_count += (uint64_t) B;
    }
}

/* Draws every dropout mask for the next batch: 0 with probability p, else 1/(1-p). */
static void gmn_fill_masks(gmn_model * m, struct gmn_train_state * st) {
    for (int i = 0; i < m->net.n_layers; i++) {
        if (st->masks[i] == NULL || m->layers[i].kind != GMN_LAYER_DROPOUT) {
            continue;
        }
        const double p = m->layers[i].p;
        const float keep = (float) (1.0 / (1.0 - p));
        const int64_t n = ggml_nelements(st->masks[i]);
        for (int64_t j = 0; j < n; j++) {
            st->mask_buf[j] = gmn_rng_uniform(&st->mask_rng) < p ? 0.0f : keep;
        }
        ggml_backend_tensor_set(st->masks[i], st->mask_buf, 0, ggml_nbytes(st->masks[i]));
    }
}

void gmn_model_train_free(gmn_model * m) {
    if (m != NULL) {
        gmn_train_state_free(m->train);
        m->train = NULL;
    }
}

int gmn_model_dropout_mask(const gmn_model * m, int layer, float * mask, int64_t n) {
    gmn_clear_error();
    if (m == NULL || mask == NULL) {
        return gmn_fail(GMN_E_INVALID, "dropout_mask: NULL argument");
    }
    if (layer < 0 || layer >= m->net.n_layers || m->layers[layer].kind != GMN_LAYER_DROPOUT) {
        return gmn_fail(GMN_E_INVALID, "dropout_mask: layer %d is not a dropout layer", layer);
    }
    if (m->train == NULL || m->train->batches == 0) {
        return gmn_fail(GMN_E_STATE, "dropout_mask: no training batch has run yet");
    }
    const struct ggml_tensor * t = m->train->masks[layer];
    if (n != ggml_nelements(t)) {
        return gmn_fail(GMN_E_INVALID, "dropout_mask: the mask has %lld elements, got room for %lld",
                        (long long) ggml_nelements(t), (long long) n);
    }
    ggml_backend_tensor_get(t, mask, 0, ggml_nbytes(t));
    return GMN_OK;
}

int gmn_model_last_batch(const gmn_model * m, float * images, int64_t n_images, float * labels, int64_t n_labels) {
    gmn_clear_error();
    if (m == NULL || images == NULL || labels == NULL) {
        return gmn_fail(GMN_E_INVALID, "last_batch: NULL argument");
    }
    if (m->train == NULL || m->train->batches == 0) {
        return gmn_fail(GMN_E_STATE, "last_batch: no training batch has run yet");
    }
    const int64_t B = m->train->cfg.physical_batch_size;
    if (n_images != B * gmn_image_pixels(m) || n_labels != B * m->n_classes) {
        return gmn_fail(GMN_E_INVALID, "last_batch: the batch has %lld pixels and %lld label values, got room for %lld and %lld",
                        (long long) (B * gmn_image_pixels(m)), (long long) (B * m->n_classes), (long long) n_images, (long long) n_labels);
    }
    memcpy(images, m->train->xbuf, (size_t) n_images * sizeof(float));
    memcpy(labels, m->train->ybuf, (size_t) n_labels * sizeof(float));
    return GMN_OK;
}

/* Sums of the cross-entropy loss, its square and the correct predictions of the model on rows idx of ds. */
struct gmn_sums { double loss, loss2; int64_t correct; };

static int gmn_rows_sums(gmn_model * m, const gmn_dataset * ds, const int64_t * idx, int64_t n, struct gmn_sums * out) {
    struct gmn_train_state * st = m->train;
    const int C = m->n_classes;
    if (st->probs_cap < n * C) {
        free(st->probs);
        st->probs = malloc((size_t) (n * C) * sizeof(float));
        st->probs_cap = st->probs ? n * C : 0;
        if (st->probs == NULL) {
            return gmn_fail(GMN_E_NOMEM, "validation: out of memory");
        }
    }
    int rc = gmn_predict_rows(m, ds, idx, n, st->probs);
    if (rc != GMN_OK) {
        return rc;
    }
    double sum = 0.0, sum2 = 0.0;
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i++) {
        const float * p = st->probs + i * C;
        const int y = ds->labels[idx[i]];
        int best = 0;
        for (int k = 1; k < C; k++) {
            if (p[k] > p[best]) {
                best = k;
            }
        }
        correct += best == y;
        const double l = isnan(p[y]) ? NAN : -log(p[y] > 1e-30f ? (double) p[y] : 1e-30);
        sum += l;
        sum2 += l * l;
    }
    *out = (struct gmn_sums) { sum, sum2, correct };
    return GMN_OK;
}

static int gmn_validate(gmn_model * m, const gmn_dataset * ds, const int64_t * idx, int64_t n, struct gmn_epoch_result * out,
                        gmn_progress_fn progress, void * ud) {
    struct gmn_sums s;
    const int rc = gmn_rows_sums(m, ds, idx, n, &s);
    if (rc != GMN_OK) {
        return rc;
    }
    const double sum = s.loss, sum2 = s.loss2;
    const int64_t correct = s.correct;
    const double mean = sum / (double) n;
    const double acc = (double) correct / (double) n;
    out->n_val = n;
    out->val_loss = mean;
    out->val_acc = acc;
    out->val_loss_unc = n > 1 ? sqrt(fmax(sum2 / (double) n - mean * mean, 0.0) / (double) (n - 1)) : NAN;
    out->val_acc_unc = n > 1 ? sqrt(acc * (1.0 - acc) / (double) (n - 1)) : NAN;
    if (progress != NULL) {
        progress(ud, GMN_PHASE_VALIDATION, 1, 1, mean, acc);
    }
    return GMN_OK;
}

/* ds's images fit the model: their pixel count and classes; what names the dataset in messages */
static int gmn_check_dataset_fits(const gmn_model * m, const gmn_dataset * ds, const char * what) {
    if (ds->n_pixels != gmn_image_pixels(m)) {
        return gmn_fail(GMN_E_INVALID, "train_epoch: %s images have %lld pixels but the model takes %dx%d", what,
                        (long long) ds->n_pixels, m->net.image_h, m->net.image_w);
    }
    if (ds->n_classes > m->n_classes) {
        return gmn_fail(GMN_E_INVALID, "train_epoch: %s has %d classes but the model only %d", what, ds->n_classes,
                        m->n_classes);
    }
    return GMN_OK;
}

int gmn_model_train_epoch(gmn_model * m, const gmn_dataset * ds,
                          const int64_t * train_idx, int64_t n_train,
                          const gmn_dataset * val_ds, const int64_t * val_idx, int64_t n_val,
                          gmn_progress_fn progress, void * ud,
                          struct gmn_epoch_result * out) {
    gmn_clear_error();
    if (m == NULL || ds == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "train_epoch: NULL argument");
    }
    struct gmn_train_state * st = m->train;
    if (st == NULL) {
        return gmn_fail(GMN_E_STATE, "train_epoch: call train_init first");
    }
    if (val_ds == NULL) {
        val_ds = ds;
    }
    int rc = gmn_check_dataset_fits(m, ds, "dataset");
    if (rc == GMN_OK && val_ds != ds) {
        rc = gmn_check_dataset_fits(m, val_ds, "validation dataset");
    }
    if (rc == GMN_OK) {
        rc = gmn_check_indices(ds, train_idx, n_train, "train");
    }
    if (rc == GMN_OK) {
        rc = gmn_check_indices(val_ds, val_idx, n_val, "validation");
    }
    if (rc != GMN_OK) {
        return rc;
    }
    const int64_t B = st->cfg.physical_batch_size;
    const int64_t nb_logical = n_train / st->cfg.batch_size;
    if (nb_logical < 1) {
        return gmn_fail(GMN_E_INVALID, "train_epoch: %lld training images are fewer than one batch of %lld; lower the batch size",
                        (long long) n_train, (long long) st->cfg.batch_size);
    }
    const int64_t parts  = st->cfg.batch_size / B; /* graph runs per optimizer step */
    const int64_t nbatch = nb_logical * parts;
    if (st->perm_cap < n_train) {
        free(st->perm);
        st->perm = malloc((size_t) n_train * sizeof(int64_t));
        st->perm_cap = st->perm ? n_train : 0;
        if (st->perm == NULL) {
            return gmn_fail(GMN_E_NOMEM, "train_epoch: out of memory");
        }
    }
    memcpy(st->perm, train_idx, (size_t) n_train * sizeof(int64_t));
    for (int64_t i = n_train - 1; i > 0; i--) {
        const int64_t j = (int64_t) (gmn_rng_next(&st->rng) % (uint64_t) (i + 1));
        const int64_t t = st->perm[i];
        st->perm[i] = st->perm[j];
        st->perm[j] = t;
    }

    memset(out, 0, sizeof(*out));
    const int n_threads = gmn_model_use_threads(m, m->n_threads);
    ggml_opt_result_reset(st->result);
    struct ggml_tensor * labels = ggml_opt_labels(st->opt);
    const int C = m->n_classes;
    double prev_sum = 0.0;
    int64_t last = 0; /* the last batch trained */
    m->opt_stale = 1; /* until the snapshot at the epoch's end */
    for (int64_t ib = 0; ib < nbatch; ib++) {
        last = ib;
        const int threads = gmn_team_threads(&st->team, n_threads);
        gmn_model_use_threads(m, threads);
        const double t0 = gmn_seconds();
        gmn_gather_batch(st, ds, st->perm + ib * B, B, C, threads);
        const double t_gathered = gmn_seconds();
        st->timing.data += t_gathered - t0;
        ggml_opt_alloc(st->opt, true);
        gmn_fill_masks(m, st);
        st->batches++;
        ggml_backend_tensor_set(st->inputs, st->xbuf, 0, ggml_nbytes(st->inputs));
        ggml_backend_tensor_set(labels, st->ybuf, 0, ggml_nbytes(labels));
        ggml_opt_eval(st->opt, st->result);
        const double t_done = gmn_seconds();
        /* batchnorm's running statistics follow every physical batch (with gradient accumulation, each part of a
         * batch counts as a batch of its own, as in PyTorch) */
        rc = gmn_net_update_running_stats(m, st->masks, B);
        if (rc != GMN_OK) {
            return rc;
        }
        if (st->batches > 1) { /* the first batch also builds and allocates the graphs */
            gmn_team_observe(&st->team, threads, n_threads, t_done - t0);
            st->timing.graph += t_done - t_gathered;
        } else {
            st->timing.first_graph += t_done - t_gathered;
        }
        st->timing.graph_runs++;

        double loss = 0.0, acc = 0.0;
        ggml_opt_result_loss(st->result, &loss, NULL);
        ggml_opt_result_accuracy(st->result, &acc, NULL);
        /* the result holds the running mean; recover this batch's own loss from it */
        const double batch_loss = loss * (double) (ib + 1) - prev_sum;
        prev_sum = loss * (double) (ib + 1);
        if (!isfinite(batch_loss) || (st->cfg.max_loss > 0.0f && batch_loss > st->cfg.max_loss)) {
            m->diverged = 1;
            if (st->cfg.optimizer == GMN_OPT_ADAMW && st->cfg.eps == 0.0f && !isfinite(batch_loss)) {
                return gmn_fail(GMN_E_DIVERGED, "train: the loss became %s at batch %lld; AdamW with eps 0 divides 0 by 0 "
                                "for weights whose gradient is 0 (such as always-black pixels); use eps > 0 (default 1e-8)",
                                isnan(batch_loss) ? "NaN" : "infinite", (long long) (ib / parts));
            }
            char what[64];
            if (isfinite(batch_loss)) {
                snprintf(what, sizeof(what), "%.3g (above max_loss %g)", batch_loss, (double) st->cfg.max_loss);
            } else {
                snprintf(what, sizeof(what), "%s", isnan(batch_loss) ? "NaN" : "infinite");
            }
            return gmn_fail(GMN_E_DIVERGED, "train: training diverged: the loss became %s at batch %lld; "
                            "the learning rate %g is too high, try 10x lower (the weights are unusable and will not be saved)",
                            what, (long long) (ib / parts), (double) st->cfg.lr);
        }
        /* progress and stopping go by optimizer steps (whole batches), however many graph runs each one takes;
         * the running mean over equal parts is the running mean over batches */
        if (progress != NULL && (ib + 1) % parts == 0) {
            const double t_cb = gmn_seconds();
            const int stop = progress(ud, GMN_PHASE_TRAIN, (ib + 1) / parts, nb_logical, loss, acc);
            st->timing.callback += gmn_seconds() - t_cb;
            if (stop != 0) {
                out->stopped = 1;
                break;
            }
        }
    }
    const double t_check = gmn_seconds();
    {
        /* the last optimizer step (also of a run stopped early) is not seen by any batch loss: check the
         * final weights on the last batch */
        struct gmn_sums s;
        rc = gmn_rows_sums(m, ds, st->perm + last * B, B, &s);
        if (rc != GMN_OK) {
            return rc;
        }
        const double final_loss = s.loss / (double) B;
        if (!isfinite(final_loss) || (st->cfg.max_loss > 0.0f && final_loss > st->cfg.max_loss)) {
            m->diverged = 1;
            return gmn_fail(GMN_E_DIVERGED, "train: training diverged: after the last step of the epoch the loss is %.3g; "
                            "the learning rate %g is too high, try 10x lower (the weights are unusable and will not be saved)",
                            final_loss, (double) st->cfg.lr);
        }
    }
    st->timing.check += gmn_seconds() - t_check;
    int64_t nd = 0;
    ggml_opt_result_ndata(st->result, &nd);
    out->n_train = nd;
    if (nd > 0) {
        ggml_opt_result_loss(st->result, &out->train_loss, &out->train_loss_unc);
        ggml_opt_result_accuracy(st->result, &out->train_acc, &out->train_acc_unc);
    }
    if (n_val > 0 && !out->stopped) {
        rc = gmn_validate(m, val_ds, val_idx, n_val, out, progress, ud);
    }
    return rc;
}

/* ---- access for the optimizer state (gmn_optstate.c) and the run log ---- */

int64_t gmn_train_steps(const struct gmn_train_state * st) {
    return st->step;
}

int gmn_train_optimizer(const struct gmn_train_state * st) {
    return st->cfg.optimizer;
}

void gmn_train_get_pos(const struct gmn_train_state * st, struct gmn_train_pos * pos) {
    pos->step = st->step;
    pos->batches = st->batches;
    pos->rng = st->rng;
    pos->mask_rng = st->mask_rng;
    pos->aug_count = st->aug_count;
}

void gmn_train_set_pos(struct gmn_train_state * st, const struct gmn_train_pos * pos) {
    st->step = pos->step;
    st->batches = (int) pos->batches;
    st->rng = pos->rng;
    st->mask_rng = pos->mask_rng;
    st->aug_count = pos->aug_count;
}

void gmn_train_set_tracker(struct gmn_train_state * st, struct gmn_opt_tracker * tr, ggml_backend_sched_eval_callback cb) {
    free(st->tracker);
    st->tracker = tr;
    st->tracker_cb = cb;
    ggml_backend_sched_set_eval_callback(st->sched, gmn_train_eval_cb, st);
}

struct gmn_opt_tracker * gmn_train_tracker(const struct gmn_train_state * st) {
    return st->tracker;
}

double gmn_model_train_lr(const gmn_model * m) {
    if (m == NULL || m->train == NULL || m->train->step == 0) {
        return 0.0;
    }
    return gmn_schedule_lr(&m->train->cfg, m->train->step - 1);
}

int gmn_model_train_timing(const gmn_model * m, struct gmn_train_timing * out) {
    gmn_clear_error();
    if (m == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "train_timing: NULL argument");
    }
    if (m->train == NULL) {
        return gmn_fail(GMN_E_STATE, "train_timing: the model is not training (call it while train() runs, e.g. from on_epoch)");
    }
    *out = m->train->timing;
    return GMN_OK;
}
