/* gmn_optstate.c - the optimizer state of a run (AdamW moments, step, random streams): captured from
 * ggml-opt while training, saved in and loaded from GGUF, and restored for an exact resume.
 *
 * ggml-opt keeps the AdamW moments and its iteration counter private. Both are reached through public
 * API only: the scheduler we hand to ggml-opt calls our eval callback in its "ask" phase for every node
 * before computing it. For each GGML_OP_OPT_STEP_ADAMW node, src[2] and src[3] are the persistent
 * moments m and v (read and written with ggml_backend_tensor_get/set) and src[4] holds the step's
 * parameters {alpha, beta1, beta2, eps, wd, beta1h, beta2h}; ggml-opt derives beta1h/beta2h from its own
 * counter, which restarts at 1 in a new optimizer, so a resumed run overwrites them from the restored
 * step count. The callback never asks for a node's data, so the scheduler computes each split in one go. */
#include "gmn_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GMN_OPT_KEY        GMN_META_PREFIX "opt.position"
#define GMN_OPT_VERSION    1
#define GMN_OPT_POS_WORDS  13 /* version, optimizer, step, batches, rng[4], mask_rng[4], aug_count */

struct gmn_optstate {
    int                   optimizer;  /* enum gmn_optimizer */
    struct gmn_train_pos  pos;
    int                   n;          /* the model's tensors (0 for SGD) */
    struct ggml_context * ctx;        /* host tensors opt.m.<param>, opt.v.<param>, in parameter order */
    struct ggml_tensor  * mom[GMN_MAX_TENSORS][2]; /* per model tensor; NULL for those not trained (running statistics) */
};

struct gmn_opt_tracker {
    gmn_model                 * m;
    struct ggml_tensor          seen[GMN_MAX_TENSORS][2]; /* shallow copies: buffer and data of m and v */
    int                         have[GMN_MAX_TENSORS];
    const struct gmn_optstate * restore;                  /* moments to write before the next step */
    int                         pending[GMN_MAX_TENSORS];
    int                         patch;                    /* 1: overwrite beta1h/beta2h from our step count */
};

void gmn_optstate_free(struct gmn_optstate * os) {
    if (os != NULL) {
        ggml_free(os->ctx);
        free(os);
    }
}

static int gmn_param_index(const gmn_model * m, const struct ggml_tensor * t) {
    for (int i = 0; i < m->n_w; i++) {
        if (strcmp(t->name, m->w[i]->name) == 0) {
            return i;
        }
    }
    return -1;
}

static bool gmn_opt_eval_cb(struct ggml_tensor * t, bool ask, void * ud) {
    struct gmn_opt_tracker * tr = ud;
    if (!ask || t->op != GGML_OP_OPT_STEP_ADAMW) {
        return false;
    }
    const int i = gmn_param_index(tr->m, t->src[0]);
    if (i < 0) {
        return false;
    }
    tr->seen[i][0] = *t->src[2];
    tr->seen[i][1] = *t->src[3];
    tr->have[i] = 1;
    if (tr->restore != NULL && tr->pending[i]) {
        ggml_backend_tensor_set(t->src[2], tr->restore->mom[i][0]->data, 0, ggml_nbytes(t->src[2]));
        ggml_backend_tensor_set(t->src[3], tr->restore->mom[i][1]->data, 0, ggml_nbytes(t->src[3]));
        tr->pending[i] = 0;
    }
    if (tr->patch) {
        /* the same expression as ggml-opt's, with the step count of the whole run (1 for the first step) */
        float pars[7];
        ggml_backend_tensor_get(t->src[4], pars, 0, sizeof(pars));
        const int64_t iter = gmn_train_steps(tr->m->train);
        pars[5] = 1.0f / (1.0f - powf(pars[1], iter));
        pars[6] = 1.0f / (1.0f - powf(pars[2], iter));
        ggml_backend_tensor_set(t->src[4], pars + 5, 5 * sizeof(float), 2 * sizeof(float));
    }
    return false;
}

int gmn_model_train_keep_optimizer(gmn_model * m, int resume) {
    gmn_clear_error();
    if (m == NULL) {
        return gmn_fail(GMN_E_INVALID, "train_keep_optimizer: NULL argument");
    }
    if (m->train == NULL || gmn_train_steps(m->train) != 0) {
        return gmn_fail(GMN_E_STATE, "train_keep_optimizer: call it right after train_init, before the first epoch");
    }
    const struct gmn_optstate * os = m->opt;
    if (resume) {
        if (os == NULL || m->opt_stale) {
            return gmn_fail(GMN_E_STATE, "resume: the model holds no optimizer state for its weights; save it with the "
                            "optimizer state (--save-optimizer / save_optimizer=True) at an epoch's end to resume exactly, "
                            "or fine-tune it instead (--init)");
        }
        const int want = gmn_train_optimizer(m->train);
        if (os->optimizer != want) {
            return gmn_fail(GMN_E_INVALID, "resume: the saved optimizer state is %s but this run uses %s; resume with the "
                            "same optimizer", os->optimizer == GMN_OPT_SGD ? "sgd" : "adamw", want == GMN_OPT_SGD ? "sgd" : "adamw");
        }
    }
    struct gmn_opt_tracker * tr = calloc(1, sizeof(*tr));
    if (tr == NULL) {
        return gmn_fail(GMN_E_NOMEM, "train_keep_optimizer: out of memory");
    }
    tr->m = m;
    if (resume) {
        tr->restore = os;
        for (int i = 0; i < os->n; i++) {
            tr->pending[i] = 1;
        }
        tr->patch = os->optimizer == GMN_OPT_ADAMW;
        gmn_train_set_pos(m->train, &os->pos);
    }
    gmn_train_set_tracker(m->train, tr, gmn_opt_eval_cb);
    return GMN_OK;
}

/* Bounds of the AdamW moments a saved run may hold: a gradient of 1e6 (a squared one of 1e12) has diverged
 * long before, and larger moments turn the first resumed step into inf weights. */
#define GMN_MAX_MOMENT1 1e6f
#define GMN_MAX_MOMENT2 1e12f

/* Host tensor for moment k (0: m, 1: v) of parameter w: F32 of w's shape, named opt.m.<name> / opt.v.<name>. */
static struct ggml_tensor * gmn_moment_tensor(struct ggml_context * ctx, const struct ggml_tensor * w, int k) {
    struct ggml_tensor * t = ggml_new_tensor(ctx, GGML_TYPE_F32, GGML_MAX_DIMS, w->ne);
    ggml_format_name(t, "opt.%c.%s", k == 0 ? 'm' : 'v', w->name);
    return t;
}

/* The moments of an AdamW run must have been seen for every parameter, i.e. after at least one step. */
static int gmn_tracker_complete(const gmn_model * m, const struct gmn_opt_tracker * tr) {
    for (int i = 0; i < m->n_w; i++) {
        if (m->trainable[i] && !tr->have[i]) {
            return 0;
        }
    }
    return 1;
}

int gmn_model_optimizer_snapshot(gmn_model * m) {
    gmn_clear_error();
    if (m == NULL) {
        return gmn_fail(GMN_E_INVALID, "optimizer_snapshot: NULL argument");
    }
    struct gmn_opt_tracker * tr = m->train ? gmn_train_tracker(m->train) : NULL;
    if (tr == NULL) {
        return gmn_fail(GMN_E_STATE, "optimizer_snapshot: the optimizer is not being tracked (train_keep_optimizer)");
    }
    const int adamw = gmn_train_optimizer(m->train) == GMN_OPT_ADAMW;
    if (gmn_train_steps(m->train) == 0 || (adamw && tr->restore == NULL && !gmn_tracker_complete(m, tr))) {
        return gmn_fail(GMN_E_STATE, "optimizer_snapshot: no optimizer step has run yet");
    }
    struct gmn_optstate * os = calloc(1, sizeof(*os));
    if (os == NULL) {
        return gmn_fail(GMN_E_NOMEM, "optimizer_snapshot: out of memory");
    }
    os->optimizer = gmn_train_optimizer(m->train);
    gmn_train_get_pos(m->train, &os->pos);
    if (adamw) {
        size_t total = 0;
        for (int i = 0; i < m->n_w; i++) {
            total += 2 * ((size_t) ggml_nelements(m->w[i]) * sizeof(float) + 64);
        }
        struct ggml_init_params ip = { total + 2 * GMN_MAX_TENSORS * ggml_tensor_overhead(), NULL, false };
        os->ctx = ggml_init(ip);
        if (os->ctx == NULL) {
            gmn_optstate_free(os);
            return gmn_fail(GMN_E_NOMEM, "optimizer_snapshot: out of memory");
        }
        os->n = m->n_w;
        for (int i = 0; i < m->n_w; i++) {
            for (int k = 0; k < 2 && m->trainable[i]; k++) {
                struct ggml_tensor * t = gmn_moment_tensor(os->ctx, m->w[i], k);
                if (tr->have[i]) {
                    ggml_backend_tensor_get(&tr->seen[i][k], t->data, 0, ggml_nbytes(t));
                } else { /* resumed, and no step has reached this parameter yet: still the restored moments */
                    memcpy(t->data, tr->restore->mom[i][k]->data, ggml_nbytes(t));
                }
                os->mom[i][k] = t;
            }
        }
    }
    /* a resumed run restores moments from the state it was loaded with until each parameter's first step; the new
     * state holds those moments too, and the old one is freed */
    if (tr->restore != NULL) {
        tr->restore = os;
    }
    gmn_optstate_free(m->opt);
    m->opt       = os;
    m->opt_free  = gmn_optstate_free;
    m->opt_stale = 0;
    return GMN_OK;
}

int64_t gmn_model_optimizer_steps(const gmn_model * m) {
    return m != NULL && m->opt != NULL && !m->opt_stale ? m->opt->pos.step : -1;
}

void gmn_model_optimizer_drop(gmn_model * m) {
    if (m == NULL) {
        return;
    }
    const struct gmn_opt_tracker * tr = m->train ? gmn_train_tracker(m->train) : NULL;
    if (tr != NULL && tr->restore != NULL && tr->restore == m->opt) {
        m->opt_stale = 1; /* a resumed run still restores from it: hidden until the epoch's snapshot replaces it */
        return;
    }
    gmn_optstate_free(m->opt);
    m->opt = NULL;
}

void gmn_optstate_write(const struct gmn_optstate * os, struct gguf_context * g) {
    if (os == NULL) {
        return;
    }
    uint64_t words[GMN_OPT_POS_WORDS] = { GMN_OPT_VERSION, (uint64_t) os->optimizer, (uint64_t) os->pos.step,
                                          (uint64_t) os->pos.batches };
    memcpy(words + 4, os->pos.rng.s, sizeof(os->pos.rng.s));
    memcpy(words + 8, os->pos.mask_rng.s, sizeof(os->pos.mask_rng.s));
    words[12] = os->pos.aug_count;
    gguf_set_arr_data(g, GMN_OPT_KEY, GGUF_TYPE_UINT64, words, GMN_OPT_POS_WORDS);
    for (int i = 0; i < os->n; i++) {
        if (os->mom[i][0] != NULL) {
            gguf_add_tensor(g, os->mom[i][0]);
            gguf_add_tensor(g, os->mom[i][1]);
        }
    }
}

int gmn_optstate_read(gmn_model * m, const struct gguf_context * g, struct ggml_context * meta, const char * path, FILE * f,
                      long long file_size) {
    const int64_t kid = gguf_find_key(g, GMN_OPT_KEY);
    if (kid < 0) {
        return GMN_OK;
    }
    if (gguf_get_kv_type(g, kid) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, kid) != GGUF_TYPE_UINT64 ||
        gguf_get_arr_n(g, kid) != GMN_OPT_POS_WORDS) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': %s must be an array of %d uint64", path, GMN_OPT_KEY, GMN_OPT_POS_WORDS);
    }
    uint64_t words[GMN_OPT_POS_WORDS];
    memcpy(words, gguf_get_arr_data(g, kid), sizeof(words));
    if (words[0] != GMN_OPT_VERSION || words[1] > GMN_OPT_SGD || words[2] > (uint64_t) INT64_MAX / 2 ||
        words[3] > (uint64_t) INT32_MAX) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': unknown optimizer state (version %llu); load it with the ggml-mnist "
                        "that wrote it, or drop the state by fine-tuning", path, (unsigned long long) words[0]);
    }
    struct gmn_optstate * os = calloc(1, sizeof(*os));
    if (os == NULL) {
        return gmn_fail(GMN_E_NOMEM, "model_load: out of memory");
    }
    os->optimizer = (int) words[1];
    os->pos.step = (int64_t) words[2];
    os->pos.batches = (int64_t) words[3];
    memcpy(os->pos.rng.s, words + 4, sizeof(os->pos.rng.s));
    memcpy(os->pos.mask_rng.s, words + 8, sizeof(os->pos.mask_rng.s));
    os->pos.aug_count = words[12];
    int st = GMN_OK;
    if (os->optimizer == GMN_OPT_ADAMW) {
        size_t total = 0;
        for (int i = 0; i < m->n_w; i++) {
            total += 2 * ((size_t) ggml_nelements(m->w[i]) * sizeof(float) + 64);
        }
        struct ggml_init_params ip = { total + 2 * GMN_MAX_TENSORS * ggml_tensor_overhead(), NULL, false };
        os->ctx = ggml_init(ip);
        st = os->ctx ? GMN_OK : gmn_fail(GMN_E_NOMEM, "model_load: out of memory");
        os->n = m->n_w;
        const size_t data_off = gguf_get_data_offset(g);
        for (int i = 0; i < m->n_w && st == GMN_OK; i++) {
            for (int k = 0; k < 2 && st == GMN_OK && m->trainable[i]; k++) {
                struct ggml_tensor * t = gmn_moment_tensor(os->ctx, m->w[i], k);
                os->mom[i][k] = t;
                const int64_t tid = gguf_find_tensor(g, t->name);
                const struct ggml_tensor * have = tid >= 0 ? ggml_get_tensor(meta, t->name) : NULL;
                const size_t off = tid >= 0 ? data_off + gguf_get_tensor_offset(g, tid) : 0;
                if (have == NULL || have->type != GGML_TYPE_F32 || !ggml_are_same_shape(have, t)) {
                    st = gmn_fail(GMN_E_FORMAT, "model_load: '%s': the optimizer state lacks tensor %s or it has the wrong "
                                  "type or shape", path, t->name);
                } else if ((long long) off > file_size || (long long) ggml_nbytes(t) > file_size - (long long) off ||
                           fseeko(f, (off_t) off, SEEK_SET) != 0 || fread(t->data, 1, ggml_nbytes(t), f) != ggml_nbytes(t)) {
                    st = gmn_fail(GMN_E_FORMAT, "model_load: '%s': could not read tensor %s (truncated?)", path, t->name);
                } else {
                    const float * v = t->data;
                    for (int64_t j = 0; j < ggml_nelements(t) && st == GMN_OK; j++) {
                        const int bad = !isfinite(v[j]) || (k == 0 ? fabsf(v[j]) > GMN_MAX_MOMENT1 :
                                                                     (v[j] < 0.0f || v[j] > GMN_MAX_MOMENT2));
                        if (bad) {
                            st = gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor %s holds %g at element %lld, %s; the "
                                          "optimizer state is damaged: fine-tune from the weights with --init (init=) "
                                          "instead of resuming", path, t->name, (double) v[j], (long long) j,
                                          k == 0 ? "outside [-1e6, 1e6]" : "outside [0, 1e12]");
                        }
                    }
                }
            }
        }
    }
    if (st != GMN_OK) {
        gmn_optstate_free(os);
        return st;
    }
    m->opt      = os;
    m->opt_free = gmn_optstate_free;
    return GMN_OK;
}
