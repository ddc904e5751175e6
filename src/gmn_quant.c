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

static int64_t gmn_spec_rows(const struct gmn_param_spec * s) {
    return s->ne[0] * s->ne[1] * s->ne[2] * s->ne[3] / s->fan_in;
}

/* The shape of a tensor of spec stored as type with rows of ne0 values (block types; else the network's shape). */
static void gmn_storage_shape(const struct gmn_param_spec * s, enum ggml_type type, int64_t ne0, int64_t * ne) {
    const int blocks = ggml_is_quantized(type);
    for (int d = 0; d < 4; d++) {
        ne[d] = blocks ? (d == 0 ? ne0 : d == 1 ? gmn_spec_rows(s) : 1) : s->ne[d];
    }
}

int gmn_storage_allowed(const struct gmn_param_spec * s, enum ggml_type type, const int64_t * ne, char * why, size_t cap) {
    if (!gmn_weight_type_known(type)) {
        snprintf(why, cap, "has type %s; weights are stored as " GMN_WEIGHT_TYPE_LIST, ggml_type_name(type));
        return 0;
    }
    if (type != GGML_TYPE_F32 && s->store == GMN_STORE_F32) {
        snprintf(why, cap, "has type %s; biases are stored as f32", ggml_type_name(type));
        return 0;
    }
    const int64_t block = ggml_blck_size(type);
    const int padded = ne[0] != s->fan_in && ne[0] == gmn_round_up(s->fan_in, block);
    int64_t want[4];
    gmn_storage_shape(s, type, padded ? ne[0] : s->fan_in, want);
    if (ne[0] != want[0] || ne[1] != want[1] || ne[2] != want[2] || ne[3] != want[3]) {
        const int blocks = ggml_is_quantized(type);
        snprintf(why, cap, "has shape [%lld,%lld,%lld,%lld] but [%lld,%lld,%lld,%lld] is expected%s%s%s",
                 (long long) ne[0], (long long) ne[1], (long long) ne[2], (long long) ne[3], (long long) want[0],
                 (long long) want[1], (long long) want[2], (long long) want[3], blocks ? " for " : "",
                 blocks ? ggml_type_name(type) : "", blocks ? " (rows of the layer's inputs, or zero-padded to whole blocks)" : "");
        return 0;
    }
    return 1;
}

int64_t gmn_storage_row(const struct gmn_param_spec * s, const struct ggml_tensor * t) {
    return ggml_is_quantized(t->type) ? s->fan_in : t->ne[0];
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

/* Storage of a tensor when quantising to type: a block type where the rows take whole blocks, or with pad where
 * rows zero-padded to whole blocks are still smaller than f16 rows; else f16, and f32 for biases. */
static struct gmn_storage gmn_storage_choose(const struct gmn_param_spec * s, enum ggml_type type, int pad) {
    struct gmn_storage out = { GGML_TYPE_F32, { 0 } };
    if (type != GGML_TYPE_F32 && s->store != GMN_STORE_F32) {
        const int64_t block = ggml_blck_size(type), padded = gmn_round_up(s->fan_in, block);
        const int whole = s->fan_in % block == 0;
        const int worth = ggml_row_size(type, padded) < ggml_row_size(GGML_TYPE_F16, s->fan_in);
        out.type = type == GGML_TYPE_F16 || whole || (pad && worth) ? type : GGML_TYPE_F16;
    }
    gmn_storage_shape(s, out.type, gmn_round_up(s->fan_in, ggml_blck_size(out.type)), out.ne);
    return out;
}

/* Converts rows x ne0 floats with ggml_quantize_chunk into dst, whose rows hold ne0_to >= ne0 values (zero-padded). */
static int gmn_quantize_rows(enum ggml_type type, const float * src, int64_t ne0, int64_t ne0_to, int64_t rows, void * dst) {
    if (ne0_to == ne0) {
        ggml_quantize_chunk(type, src, dst, 0, rows, ne0, NULL);
        return GMN_OK;
    }
    float * padded = calloc((size_t) (ne0_to * rows), sizeof(float));
    if (padded == NULL) {
        return gmn_fail(GMN_E_NOMEM, "quantize: out of memory");
    }
    for (int64_t r = 0; r < rows; r++) {
        memcpy(padded + r * ne0_to, src + r * ne0, (size_t) ne0 * sizeof(float));
    }
    ggml_quantize_chunk(type, padded, dst, 0, rows, ne0_to, NULL);
    free(padded);
    return GMN_OK;
}

/* Fills tensor i of q from the same tensor of m, converted to q's storage. */
static int gmn_quantize_tensor(const gmn_model * m, gmn_model * q, const struct gmn_param_spec * spec, int i) {
    struct ggml_tensor * dst = q->w[i];
    const int64_t n = spec->ne[0] * spec->ne[1] * spec->ne[2] * spec->ne[3];
    const int64_t row = gmn_storage_row(spec, dst), rows = n / row;
    float * values = malloc((size_t) n * sizeof(float));
    void * raw = malloc(ggml_nbytes(dst));
    int st = values != NULL && raw != NULL ? GMN_OK : gmn_fail(GMN_E_NOMEM, "quantize: out of memory");
    if (st == GMN_OK) st = gmn_tensor_get_f32(m->w[i], gmn_storage_row(spec, m->w[i]), values);
    if (st == GMN_OK) st = gmn_quantize_rows(dst->type, values, row, dst->ne[0], rows, raw);
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
        if (specs[i].store == GMN_STORE_ANY) {
            snprintf(rows + len, sizeof(rows) - len, "%s%s %lld", len ? ", " : "", specs[i].name, (long long) specs[i].fan_in);
        }
    }
    if (taken == 0) {
        return gmn_fail(GMN_E_INVALID, "quantize: no tensor of this network can be stored as %s: its blocks need rows of a "
                        "multiple of %lld values, and the weights have rows of %s; zero-pad the rows (pad / --pad) or "
                        "choose f16", type_name, (long long) ggml_blck_size(type), rows);
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
