/* gmn_quant.c - quantising a model: a new model whose weights ggml_quantize_chunk converts to a storage type
 * (gmn_storage.c), and how each tensor of a model is stored. */
#include "gmn_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    enum ggml_type type;
    const int parsed = gmn_weight_type_parse(type_name, &type, "quantize");
    if (parsed != GMN_OK) {
        return parsed;
    }
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
