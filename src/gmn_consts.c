/* gmn_consts.c - constant tensors of a graph (index tables, zeros): made on the host while the graph is built,
 * then uploaded once to the device the graph runs on, where they live as long as the graph. */
#include "gmn_internal.h"

#include <stdlib.h>
#include <string.h>

int gmn_consts_init(struct gmn_consts * c) {
    memset(c, 0, sizeof(*c));
    struct ggml_init_params ip = { GMN_MAX_CONSTS * ggml_tensor_overhead(), NULL, true };
    c->ctx = ggml_init(ip);
    return c->ctx != NULL ? GMN_OK : gmn_fail(GMN_E_NOMEM, "out of memory for a graph's constants");
}

struct ggml_tensor * gmn_consts_new(struct gmn_consts * c, enum ggml_type type, int64_t n, void ** data) {
    *data = NULL;
    if (c->error[0] != '\0') {
        return NULL;
    }
    if (c->ctx == NULL || c->n == GMN_MAX_CONSTS) {
        snprintf(c->error, sizeof(c->error), "more than %d constant tensors in one graph", GMN_MAX_CONSTS);
        return NULL;
    }
    void * host = calloc((size_t) n, ggml_type_size(type));
    if (host == NULL) {
        snprintf(c->error, sizeof(c->error), "out of memory for a %lld-element index table", (long long) n);
        return NULL;
    }
    struct ggml_tensor * t = ggml_new_tensor_1d(c->ctx, type, n);
    c->t[c->n] = t;
    c->host[c->n] = host;
    c->n++;
    *data = host;
    return t;
}

int gmn_consts_upload(struct gmn_consts * c, ggml_backend_t backend, const char * what) {
    if (c->error[0] != '\0') {
        return gmn_fail(GMN_E_NOMEM, "%s: %s; use a smaller batch", what, c->error);
    }
    if (c->n == 0) {
        return GMN_OK;
    }
    c->buf = ggml_backend_alloc_ctx_tensors(c->ctx, backend);
    if (c->buf == NULL) {
        return gmn_fail(GMN_E_NOMEM, "%s: could not allocate the graph's index tables on %s; use a smaller batch", what,
                        ggml_backend_name(backend));
    }
    for (int i = 0; i < c->n; i++) {
        ggml_backend_tensor_set(c->t[i], c->host[i], 0, ggml_nbytes(c->t[i]));
        free(c->host[i]);
        c->host[i] = NULL;
    }
    return GMN_OK;
}

void gmn_consts_free(struct gmn_consts * c) {
    for (int i = 0; i < c->n; i++) {
        free(c->host[i]);
    }
    ggml_backend_buffer_free(c->buf);
    ggml_free(c->ctx);
    memset(c, 0, sizeof(*c));
}
