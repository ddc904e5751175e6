/* gmn_storage.c - how weights are stored (f32, f16 or one of ggml's block types): the types, the shapes a tensor may
 * take in each, and reading stored values back as floats through ggml's type traits (to_float). */
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
        const size_t n = strlen(s->name);
        const int bias = n >= 5 && strcmp(s->name + n - 5, ".bias") == 0;
        snprintf(why, cap, "has type %s; %s are stored as f32", ggml_type_name(type), bias ? "biases" : "batch normalisation and residual projection tensors");
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
struct gmn_storage gmn_storage_choose(const struct gmn_param_spec * s, enum ggml_type type, int pad) {
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

int gmn_weight_type_parse(const char * name, enum ggml_type * type, const char * what) {
    for (int i = 0; i < GMN_N_WEIGHT_TYPES; i++) {
        if (strcmp(name, ggml_type_name(GMN_WEIGHT_TYPES[i])) == 0) {
            *type = GMN_WEIGHT_TYPES[i];
            return GMN_OK;
        }
    }
    return gmn_fail(GMN_E_INVALID, "%s: unknown type '%.32s'; use " GMN_WEIGHT_TYPE_LIST, what, name);
}
