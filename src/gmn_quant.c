/* gmn_quant.c - how weights are stored (f32, f16 or one of ggml's block types), conversions through ggml's own
 * routines (ggml_quantize_chunk one way, the type traits' to_float the other) and quantising a model. */
#include "gmn_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The weight types, in order of precision; the block types hold 32 values a block. */
static const enum ggml_type GMN_WEIGHT_TYPES[] = { GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q5_0, GGML_TYPE_Q4_0 };
#define GMN_N_WEIGHT_TYPES ((int) (sizeof(GMN_WEIGHT_TYPES) / sizeof(GMN_WEIGHT_TYPES[0])))
#define GMN_WEIGHT_TYPE_LIST "f32, f16, q8_0, q5_0 or q4_0"

int gmn_weight_type_count(void) {
    return GMN_N_WEIGHT_TYPES;
}

const char * gmn_weight_type_name(int i) {
    return i >= 0 && i < GMN_N_WEIGHT_TYPES ? ggml_type_name(GMN_WEIGHT_TYPES[i]) : NULL;
}

static int gmn_weight_type_known(enum ggml_type type) {
    for (int i = 0; i < GMN_N_WEIGHT_TYPES; i++) {
        if (GMN_WEIGHT_TYPES[i] == type) {
            return 1;
        }
    }
    return 0;
}

static int64_t gmn_round_up(int64_t n, int64_t block) {
    return (n + block - 1) / block * block;
}

int gmn_storage_allowed(const struct gmn_param_spec * s, enum ggml_type type, int64_t ne0, char * why, size_t cap) {
    if (!gmn_weight_type_known(type)) {
        snprintf(why, cap, "has type %s; weights are stored as " GMN_WEIGHT_TYPE_LIST, ggml_type_name(type));
        return 0;
    }
    if (type == GGML_TYPE_F16 && s->store == GMN_STORE_F32) {
        snprintf(why, cap, "has type f16; biases are stored as f32");
        return 0;
    }
    if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16) {
        if (ne0 != s->ne[0]) {
            snprintf(why, cap, "has rows of %lld values but %lld are expected", (long long) ne0, (long long) s->ne[0]);
            return 0;
        }
        return 1;
    }
    if (s->store != GMN_STORE_BLOCKS) {
        snprintf(why, cap, "has type %s; only dense weights take block types (conv kernels are f32 or f16, biases f32)",
                 ggml_type_name(type));
        return 0;
    }
    const int64_t block = ggml_blck_size(type);
    if (ne0 % block != 0 || (ne0 != s->ne[0] && ne0 != gmn_round_up(s->ne[0], block))) {
        snprintf(why, cap, "has rows of %lld values but %s rows of this layer hold %lld (%lld zero-padded)", (long long) ne0,
                 ggml_type_name(type), (long long) s->ne[0], (long long) gmn_round_up(s->ne[0], block));
        return 0;
    }
    return 1;
}

int gmn_storage_finite(enum ggml_type type, const void * raw, int64_t ne0, int64_t rows) {
    if (type == GGML_TYPE_F32) {
        const float * v = raw;
        for (int64_t j = 0; j < ne0 * rows; j++) {
            if (!isfinite(v[j])) {
                return 0;
            }
        }
        return 1;
    }
    float * row = malloc((size_t) ne0 * sizeof(float));
    if (row == NULL) {
        return -1;
    }
    const ggml_to_float_t to_float = ggml_get_type_traits(type)->to_float;
    const size_t row_bytes = ggml_row_size(type, ne0);
    int ok = 1;
    for (int64_t r = 0; r < rows && ok; r++) {
        to_float((const char *) raw + (size_t) r * row_bytes, row, ne0);
        for (int64_t j = 0; j < ne0 && ok; j++) {
            ok = isfinite(row[j]);
        }
    }
    free(row);
    return ok;
}

int gmn_tensor_get_f32(const struct ggml_tensor * t, int64_t ne0, float * out) {
    if (t->type == GGML_TYPE_F32 && ne0 == t->ne[0]) {
        ggml_backend_tensor_get((struct ggml_tensor *) t, out, 0, ggml_nbytes(t));
        return GMN_OK;
    }
    const int64_t rows = ggml_nrows(t);
    const size_t row_bytes = ggml_row_size(t->type, t->ne[0]);
    char * raw = malloc(ggml_nbytes(t));
    float * row = malloc((size_t) t->ne[0] * sizeof(float));
    if (raw == NULL || row == NULL) {
        free(raw);
        free(row);
        return gmn_fail(GMN_E_NOMEM, "tensor access: out of memory");
    }
    ggml_backend_tensor_get((struct ggml_tensor *) t, raw, 0, ggml_nbytes(t));
    const ggml_to_float_t to_float = ggml_get_type_traits(t->type)->to_float;
    for (int64_t r = 0; r < rows; r++) {
        to_float(raw + (size_t) r * row_bytes, row, t->ne[0]);
        memcpy(out + r * ne0, row, (size_t) ne0 * sizeof(float));
    }
    free(raw);
    free(row);
    return GMN_OK;
}

/* Storage of a tensor when quantising to type: block types where the rows take whole blocks (or, with pad, any dense
 * weight, its rows zero-padded to whole blocks), else f16 where the tensor may be f16, else f32. */
static struct gmn_storage gmn_storage_choose(const struct gmn_param_spec * s, enum ggml_type type, int pad) {
    struct gmn_storage out = { GGML_TYPE_F32, s->ne[0] };
    if (type == GGML_TYPE_F32 || s->store == GMN_STORE_F32) {
        return out;
    }
    out.type = GGML_TYPE_F16;
    if (type == GGML_TYPE_F16 || s->store != GMN_STORE_BLOCKS) {
        return out;
    }
    const int64_t block = ggml_blck_size(type);
    if (s->ne[0] % block == 0 || pad) {
        out.type = type;
        out.ne0 = gmn_round_up(s->ne[0], block);
    }
    return out;
}

/* Converts rows x ne0 floats with ggml_quantize_chunk into dst, whose rows hold to.ne0 >= ne0 values (zero-padded). */
static int gmn_quantize_rows(struct gmn_storage to, const float * src, int64_t ne0, int64_t rows, void * dst) {
    if (to.ne0 == ne0) {
        ggml_quantize_chunk(to.type, src, dst, 0, rows, ne0, NULL);
        return GMN_OK;
    }
    float * padded = calloc((size_t) (to.ne0 * rows), sizeof(float));
    if (padded == NULL) {
        return gmn_fail(GMN_E_NOMEM, "quantize: out of memory");
    }
    for (int64_t r = 0; r < rows; r++) {
        memcpy(padded + r * to.ne0, src + r * ne0, (size_t) ne0 * sizeof(float));
    }
    ggml_quantize_chunk(to.type, padded, dst, 0, rows, to.ne0, NULL);
    free(padded);
    return GMN_OK;
}

/* Fills tensor i of q from the same tensor of m, converted to q's storage. */
static int gmn_quantize_tensor(const gmn_model * m, gmn_model * q, const struct gmn_param_spec * spec, int i) {
    struct ggml_tensor * dst = q->w[i];
    const int64_t rows = ggml_nrows(dst);
    float * values = malloc((size_t) (spec->ne[0] * rows) * sizeof(float));
    void * raw = malloc(ggml_nbytes(dst));
    int st = values != NULL && raw != NULL ? GMN_OK : gmn_fail(GMN_E_NOMEM, "quantize: out of memory");
    if (st == GMN_OK) st = gmn_tensor_get_f32(m->w[i], spec->ne[0], values);
    if (st == GMN_OK) st = gmn_quantize_rows((struct gmn_storage) { dst->type, dst->ne[0] }, values, spec->ne[0], rows, raw);
    if (st == GMN_OK) {
        const int finite = gmn_storage_finite(dst->type, raw, dst->ne[0], rows);
        if (finite < 0) {
            st = gmn_fail(GMN_E_NOMEM, "quantize: out of memory");
        } else if (!finite) {
            st = gmn_fail(GMN_E_INVALID, "quantize: tensor %s holds values beyond the range of %s (65504 in magnitude); "
                          "keep this model in f32", spec->name, ggml_type_name(dst->type));
        }
    }
    if (st == GMN_OK) {
        ggml_backend_tensor_set(dst, raw, 0, ggml_nbytes(dst));
    }
    free(values);
    free(raw);
    return st;
}

int gmn_model_quantize(const gmn_model * m, const char * type_name, int pad, gmn_model ** out) {
    gmn_clear_error();
    if (m == NULL || type_name == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "quantize: NULL argument");
    }
    *out = NULL;
    int t = 0;
    while (t < GMN_N_WEIGHT_TYPES && strcmp(type_name, ggml_type_name(GMN_WEIGHT_TYPES[t])) != 0) {
        t++;
    }
    if (t == GMN_N_WEIGHT_TYPES) {
        return gmn_fail(GMN_E_INVALID, "quantize: unknown type '%.32s'; use " GMN_WEIGHT_TYPE_LIST, type_name);
    }
    const enum ggml_type type = GMN_WEIGHT_TYPES[t];
    struct gmn_param_spec specs[GMN_MAX_TENSORS];
    struct gmn_storage storage[GMN_MAX_TENSORS];
    const int n = gmn_net_params(&m->net, specs);
    int taken = 0;
    char rows[256] = "";
    for (int i = 0; i < n; i++) {
        storage[i] = gmn_storage_choose(&specs[i], type, pad);
        taken += storage[i].type == type;
        const size_t len = strlen(rows);
        if (specs[i].store == GMN_STORE_BLOCKS) {
            snprintf(rows + len, sizeof(rows) - len, "%s%s %lld", len ? ", " : "", specs[i].name, (long long) specs[i].ne[0]);
        }
    }
    if (taken == 0) {
        return gmn_fail(GMN_E_INVALID, "quantize: no tensor of this network can be stored as %s: its blocks need rows of a "
                        "multiple of %lld values, and the dense weights have rows of %s (conv kernels go to f16 at most); "
                        "zero-pad the rows (pad / --pad) or choose f16", type_name, (long long) ggml_blck_size(type), rows);
    }
    char device[128];
    snprintf(device, sizeof(device), "%s", ggml_backend_dev_name(m->dev));
    gmn_model * q = NULL;
    int st = gmn_model_create(&m->net, device, m->n_threads, storage, &q);
    for (int i = 0; st == GMN_OK && i < n; i++) {
        st = gmn_quantize_tensor(m, q, &specs[i], i);
    }
    if (st != GMN_OK) {
        gmn_model_free(q);
        return st;
    }
    *out = q;
    return GMN_OK;
}

int gmn_model_tensor_storage(const gmn_model * m, int i, const char ** type, int64_t * row_len, int64_t * nbytes) {
    gmn_clear_error();
    if (m == NULL || type == NULL || row_len == NULL || nbytes == NULL) {
        return gmn_fail(GMN_E_INVALID, "model_tensor_storage: NULL argument");
    }
    if (i < 0 || i >= m->n_w) {
        return gmn_fail(GMN_E_INVALID, "model_tensor_storage: index %d out of range [0, %d)", i, m->n_w);
    }
    *type = ggml_type_name(m->w[i]->type);
    *row_len = m->w[i]->ne[0];
    *nbytes = (int64_t) ggml_nbytes(m->w[i]);
    return GMN_OK;
}
