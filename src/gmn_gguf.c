/* gmn_gguf.c - saving and loading models as GGUF (the mnist-fc / mnist-cnn contract). */
#include "gmn_internal.h"
#include "gguf.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GMN_MAX_META 256

static int gmn_meta_u32(const struct gguf_context * g, const char * path, const char * key, int lo, int hi, int * inout) {
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        return GMN_OK;
    }
    const enum gguf_type t = gguf_get_kv_type(g, id);
    int64_t v;
    if (t == GGUF_TYPE_UINT32) {
        v = gguf_get_val_u32(g, id);
    } else if (t == GGUF_TYPE_INT32) {
        v = gguf_get_val_i32(g, id);
    } else {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': key %s has type %s, expected uint32", path, key, gguf_type_name(t));
    }
    if (v < lo || v > hi) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': key %s = %lld is out of range [%d, %d]", path, key, (long long) v, lo, hi);
    }
    *inout = (int) v;
    return GMN_OK;
}

#define GMN_KEY_LAYERS GMN_META_PREFIX "layers."

/* Finds array key `field` of the layer list with n elements of type want; returns its id or -1 with an error set. */
static int64_t gmn_layer_array(const struct gguf_context * g, const char * path, const char * field, enum gguf_type want, int64_t n) {
    char key[96];
    snprintf(key, sizeof(key), GMN_KEY_LAYERS "%s", field);
    const int64_t id = gguf_find_key(g, key);
    if (id < 0) {
        gmn_fail(GMN_E_FORMAT, "model_load: '%s': missing key %s (the layer list is incomplete)", path, key);
        return -1;
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(g, id) != want) {
        gmn_fail(GMN_E_FORMAT, "model_load: '%s': key %s must be an array of %s", path, key, gguf_type_name(want));
        return -1;
    }
    if (n >= 0 && (int64_t) gguf_get_arr_n(g, id) != n) {
        gmn_fail(GMN_E_FORMAT, "model_load: '%s': key %s has %lld entries but the network has %lld layers",
                 path, key, (long long) gguf_get_arr_n(g, id), (long long) n);
        return -1;
    }
    return id;
}

/* Reads the layer list of one of our own files (ggml_mnist.layers.*) into layers. */
static int gmn_read_layers(const struct gguf_context * g, const char * path, struct gmn_layer * layers, int * n_layers) {
    const int64_t kid = gmn_layer_array(g, path, "kind", GGUF_TYPE_STRING, -1);
    if (kid < 0) {
        return GMN_E_FORMAT;
    }
    const int64_t n = (int64_t) gguf_get_arr_n(g, kid);
    if (n < 1 || n > GMN_MAX_LAYERS) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': the network has %lld layers; 1 to %d are supported", path, (long long) n, GMN_MAX_LAYERS);
    }
    const int64_t nid = gmn_layer_array(g, path, "name", GGUF_TYPE_STRING, n);
    const int64_t uid = nid < 0 ? -1 : gmn_layer_array(g, path, "units", GGUF_TYPE_INT32, n);
    const int64_t kerid = uid < 0 ? -1 : gmn_layer_array(g, path, "kernel", GGUF_TYPE_INT32, n);
    const int64_t sid = kerid < 0 ? -1 : gmn_layer_array(g, path, "stride", GGUF_TYPE_INT32, n);
    const int64_t pid = sid < 0 ? -1 : gmn_layer_array(g, path, "padding", GGUF_TYPE_INT32, n);
    const int64_t did = pid < 0 ? -1 : gmn_layer_array(g, path, "dropout", GGUF_TYPE_FLOAT32, n);
    if (did < 0) {
        return GMN_E_FORMAT;
    }
    const int32_t * units = gguf_get_arr_data(g, uid);
    const int32_t * kernel = gguf_get_arr_data(g, kerid);
    const int32_t * stride = gguf_get_arr_data(g, sid);
    const int32_t * pad = gguf_get_arr_data(g, pid);
    const float * drop = gguf_get_arr_data(g, did);
    /* batchnorm's settings: in files with a batchnorm layer only (older files and other networks have no such keys) */
    int bn = 0;
    for (int64_t i = 0; i < n && !bn; i++) {
        bn = strcmp(gguf_get_arr_str(g, kid, (size_t) i), gmn_layer_kind_name(GMN_LAYER_BATCHNORM)) == 0;
    }
    const int64_t mid = bn ? gmn_layer_array(g, path, "momentum", GGUF_TYPE_FLOAT32, n) : -1;
    const int64_t eid = mid < 0 ? -1 : gmn_layer_array(g, path, "eps", GGUF_TYPE_FLOAT32, n);
    if (bn && eid < 0) {
        return GMN_E_FORMAT;
    }
    const float * momentum = bn ? gguf_get_arr_data(g, mid) : NULL;
    const float * eps = bn ? gguf_get_arr_data(g, eid) : NULL;
    /* and the residual blocks' bodies, in files with a residual layer only */
    int res = 0;
    for (int64_t i = 0; i < n && !res; i++) {
        res = strcmp(gguf_get_arr_str(g, kid, (size_t) i), gmn_layer_kind_name(GMN_LAYER_RESIDUAL)) == 0;
    }
    const int64_t bid = res ? gmn_layer_array(g, path, "body", GGUF_TYPE_INT32, n) : -1;
    if (res && bid < 0) {
        return GMN_E_FORMAT;
    }
    const int32_t * body = res ? gguf_get_arr_data(g, bid) : NULL;
    for (int64_t i = 0; i < n; i++) {
        struct gmn_layer * l = &layers[i];
        memset(l, 0, sizeof(*l));
        const char * kind = gguf_get_arr_str(g, kid, (size_t) i);
        l->kind = gmn_layer_kind_from_name(kind);
        if (l->kind == 0) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': layer %lld has unknown kind '%.32s' (made by a newer ggml-mnist?)",
                            path, (long long) i, kind);
        }
        const char * name = gguf_get_arr_str(g, nid, (size_t) i);
        if (strlen(name) >= GMN_NAME_CAP) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': layer %lld has a name longer than %d characters", path, (long long) i, GMN_NAME_CAP - 1);
        }
        snprintf(l->name, sizeof(l->name), "%s", name);
        l->n_out = units[i];
        l->k = kernel[i];
        l->stride = stride[i];
        l->pad = pad[i];
        l->p = drop[i];
        l->momentum = bn ? momentum[i] : 0.0f;
        l->eps = bn ? eps[i] : 0.0f;
        l->body = res ? body[i] : 0;
    }
    *n_layers = (int) n;
    return GMN_OK;
}

/* Reads the network: ggml's two architectures (with our older size keys) or our layer list. */
static int gmn_read_net(const struct gguf_context * g, const char * path, struct gmn_net * net, struct gmn_layer * layers) {
    const int64_t id = gguf_find_key(g, "general.architecture");
    if (id < 0) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': missing key general.architecture (is this an mnist GGUF?)", path);
    }
    if (gguf_get_kv_type(g, id) != GGUF_TYPE_STRING) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': general.architecture is not a string", path);
    }
    const char * arch = gguf_get_val_str(g, id);
    memset(net, 0, sizeof(*net));
    net->image_h = 28;
    net->image_w = 28;
    net->layers = layers;
    int n_classes = 10;
    int st = gmn_meta_u32(g, path, GMN_META_PREFIX "n_classes", GMN_MIN_CLASSES, GMN_MAX_CLASSES, &n_classes);
    if (st == GMN_OK) st = gmn_meta_u32(g, path, GMN_META_PREFIX "image_height", GMN_MIN_IMAGE_SIDE, GMN_MAX_IMAGE_SIDE, &net->image_h);
    if (st == GMN_OK) st = gmn_meta_u32(g, path, GMN_META_PREFIX "image_width", GMN_MIN_IMAGE_SIDE, GMN_MAX_IMAGE_SIDE, &net->image_w);
    if (st != GMN_OK) {
        return st;
    }
    const int is_fc = strcmp(arch, GMN_ARCH_MNIST_FC) == 0 || strcmp(arch, "ggml-mnist-fc") == 0;
    const int is_cnn = strcmp(arch, GMN_ARCH_MNIST_CNN) == 0 || strcmp(arch, "ggml-mnist-cnn") == 0;
    if (strcmp(arch, GMN_ARCH_OWN) == 0) {
        return gmn_read_layers(g, path, layers, &net->n_layers);
    }
    if (!is_fc && !is_cnn) {
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s': unsupported architecture '%.64s' (expected %s, %s or %s)",
                        path, arch, GMN_ARCH_MNIST_FC, GMN_ARCH_MNIST_CNN, GMN_ARCH_OWN);
    }
    /* ggml's networks; files of ggml-mnist 0.1 stored other widths in these keys */
    gmn_preset_layers(is_fc ? "fc" : "cnn", n_classes, layers, GMN_MAX_LAYERS, &net->n_layers);
    if (is_fc) {
        st = gmn_meta_u32(g, path, GMN_META_PREFIX "hidden", 1, GMN_MAX_UNITS, &layers[0].n_out);
    } else {
        st = gmn_meta_u32(g, path, GMN_META_PREFIX "conv1_channels", 1, GMN_MAX_CHANNELS, &layers[0].n_out);
        if (st == GMN_OK) st = gmn_meta_u32(g, path, GMN_META_PREFIX "conv2_channels", 1, GMN_MAX_CHANNELS, &layers[3].n_out);
    }
    return st;
}

static char * gmn_strdup(const char * s) {
    const size_t n = strlen(s) + 1;
    char * d = malloc(n);
    if (d != NULL) {
        memcpy(d, s, n);
    }
    return d;
}

static int gmn_read_meta(gmn_model * m, const struct gguf_context * g) {
    const int64_t n_kv = gguf_get_n_kv(g);
    const size_t plen = strlen(GMN_META_PREFIX);
    m->meta_keys   = calloc(GMN_MAX_META, sizeof(char *));
    m->meta_values = calloc(GMN_MAX_META, sizeof(char *));
    if (m->meta_keys == NULL || m->meta_values == NULL) {
        return gmn_fail(GMN_E_NOMEM, "model_load: out of memory");
    }
    for (int64_t i = 0; i < n_kv && m->n_meta < GMN_MAX_META; i++) {
        const char * key = gguf_get_key(g, i);
        if (strncmp(key, GMN_META_PREFIX, plen) != 0 || gguf_get_kv_type(g, i) != GGUF_TYPE_STRING) {
            continue;
        }
        char * k = gmn_strdup(key + plen);
        char * v = gmn_strdup(gguf_get_val_str(g, i));
        if (k == NULL || v == NULL) {
            free(k);
            free(v);
            return gmn_fail(GMN_E_NOMEM, "model_load: out of memory");
        }
        m->meta_keys[m->n_meta]   = k;
        m->meta_values[m->n_meta] = v;
        m->n_meta++;
    }
    return GMN_OK;
}

/* Checks that the file holds every parameter tensor of net with an allowed type (only f32 under ggml's two
 * architecture names, which its mnist-eval reads), the right shape and its data inside the file, before any
 * memory is allocated for the weights; stores each tensor's file offset and storage. */
static int gmn_check_tensors(const struct gguf_context * g, struct ggml_context * meta, const char * path,
                             long long file_size, const struct gmn_net * net, size_t * offsets, struct gmn_storage * storage) {
    struct gmn_param_spec specs[GMN_MAX_TENSORS];
    const int n = gmn_net_params(net, specs);
    const size_t data_off = gguf_get_data_offset(g);
    const char * arch = gguf_get_val_str(g, gguf_find_key(g, "general.architecture"));
    const int f32_only = strcmp(arch, GMN_ARCH_OWN) != 0;
    for (int i = 0; i < n; i++) {
        const char * name = specs[i].name;
        const int64_t tid = gguf_find_tensor(g, name);
        struct ggml_tensor * have = tid >= 0 ? ggml_get_tensor(meta, name) : NULL;
        if (have == NULL) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': missing tensor %s for architecture %s", path, name, gmn_net_arch_name(net));
        }
        if (f32_only && have->type != GGML_TYPE_F32) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor %s has type %s; only f32 is supported under the "
                            "architecture %.32s (ggml's mnist-eval reads only f32); quantised files are %s files",
                            path, name, ggml_type_name(have->type), arch, GMN_ARCH_OWN);
        }
        char why[320];
        if (!gmn_storage_allowed(&specs[i], have->type, have->ne, why, sizeof(why))) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor %s %s", path, name, why);
        }
        storage[i] = (struct gmn_storage) { have->type, { have->ne[0], have->ne[1], have->ne[2], have->ne[3] } };
        const size_t nbytes = ggml_nbytes(have);
        const size_t off = data_off + gguf_get_tensor_offset(g, tid);
        if (off < data_off || (long long) off > file_size || (long long) nbytes > file_size - (long long) off) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor %s lies beyond the end of the file (truncated?)", path, name);
        }
        offsets[i] = off;
    }
    return GMN_OK;
}

/* Reads the weights checked by gmn_check_tensors from their file offsets into the model. */
static int gmn_read_tensors(gmn_model * m, const char * path, FILE * f, const size_t * offsets) {
    for (int i = 0; i < m->n_w; i++) {
        struct ggml_tensor * want = m->w[i];
        const char * name = ggml_get_name(want);
        const size_t nbytes = ggml_nbytes(want);
        void * buf = malloc(nbytes);
        if (buf == NULL) {
            return gmn_fail(GMN_E_NOMEM, "model_load: out of memory");
        }
        if (fseeko(f, (off_t) offsets[i], SEEK_SET) != 0 || fread(buf, 1, nbytes, f) != nbytes) {
            free(buf);
            return gmn_fail(GMN_E_IO, "model_load: '%s': could not read tensor %s", path, name);
        }
        const int finite = gmn_storage_finite(want->type, buf, want->ne[0], ggml_nrows(want));
        if (finite <= 0) {
            free(buf);
            return finite < 0 ? gmn_fail(GMN_E_NOMEM, "model_load: out of memory")
                              : gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor %s holds NaN or infinite values", path, name);
        }
        if (gmn_is_running_var(name) && want->type == GGML_TYPE_F32) {
            const float * v = buf;
            for (int64_t j = 0; j < ggml_nelements(want); j++) {
                if (v[j] < 0.0f) {
                    const double bad = v[j];
                    free(buf);
                    return gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor %s holds a negative variance (%g at %lld); "
                                    "the file is damaged", path, name, bad, (long long) j);
                }
            }
        }
        ggml_backend_tensor_set(want, buf, 0, nbytes);
        free(buf);
    }
    return GMN_OK;
}

static int gmn_read_le(FILE * f, void * dst, size_t n) {
    return fread(dst, 1, n, f) == n; /* GGUF is little-endian, like every host ggml supports */
}

static int gmn_skip(FILE * f, uint64_t n) {
    return n <= (uint64_t) INT64_MAX && fseeko(f, (off_t) n, SEEK_CUR) == 0;
}

/* Size of one GGUF value of a fixed-size type; 0 for strings, arrays and unknown types. */
static uint64_t gmn_gguf_value_size(int32_t type) {
    switch (type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL:       return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:                          return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32:  return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64:  return 8;
        default:                                                              return 0;
    }
}

/* Skips n values of a non-array type; 0 when the type is unknown or the file ends. */
static int gmn_gguf_skip_values(FILE * f, int32_t type, uint64_t n) {
    if (type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len;
            if (!gmn_read_le(f, &len, 8) || !gmn_skip(f, len)) {
                return 0;
            }
        }
        return 1;
    }
    const uint64_t size = gmn_gguf_value_size(type);
    return size > 0 && n <= (uint64_t) INT64_MAX / size && gmn_skip(f, n * size);
}

/* ggml's GGUF reader aborts the process on three malformed inputs instead of failing: an empty
 * key, a general.alignment that is not a uint32, and a tensor dimension of 0 (a division by
 * zero). Walk the header as it does and refuse those; whatever else is malformed is left to
 * gguf_init_from_file, which rejects it cleanly, so this stops early without error there. */
static int gmn_gguf_precheck(FILE * f, const char * path) {
    char magic[4];
    uint32_t version;
    int64_t n_tensors, n_kv;
    if (!gmn_read_le(f, magic, 4) || memcmp(magic, GGUF_MAGIC, 4) != 0 || !gmn_read_le(f, &version, 4) ||
        !gmn_read_le(f, &n_tensors, 8) || !gmn_read_le(f, &n_kv, 8)) {
        return GMN_OK;
    }
    const size_t align_len = strlen(GGUF_KEY_GENERAL_ALIGNMENT);
    for (int64_t i = 0; i < n_kv; i++) {
        uint64_t len;
        char key[32];
        int32_t type;
        if (!gmn_read_le(f, &len, 8)) {
            return GMN_OK;
        }
        if (len == 0) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': metadata key %lld has an empty name (corrupt file)", path, (long long) i);
        }
        const int is_alignment = len == align_len;
        if (is_alignment ? !gmn_read_le(f, key, len) : !gmn_skip(f, len)) {
            return GMN_OK;
        }
        if (!gmn_read_le(f, &type, 4)) {
            return GMN_OK;
        }
        if (is_alignment && memcmp(key, GGUF_KEY_GENERAL_ALIGNMENT, align_len) == 0 && type != GGUF_TYPE_UINT32) {
            return gmn_fail(GMN_E_FORMAT, "model_load: '%s': key " GGUF_KEY_GENERAL_ALIGNMENT " must be a uint32", path);
        }
        uint64_t n = 1;
        if (type == GGUF_TYPE_ARRAY && (!gmn_read_le(f, &type, 4) || !gmn_read_le(f, &n, 8))) {
            return GMN_OK;
        }
        if (!gmn_gguf_skip_values(f, type, n)) {
            return GMN_OK;
        }
    }
    for (int64_t i = 0; i < n_tensors; i++) {
        uint64_t len;
        char name[GGML_MAX_NAME] = "";
        uint32_t n_dims;
        if (!gmn_read_le(f, &len, 8) || len >= GGML_MAX_NAME || !gmn_read_le(f, name, len) ||
            !gmn_read_le(f, &n_dims, 4) || n_dims > GGML_MAX_DIMS) {
            return GMN_OK;
        }
        for (uint32_t d = 0; d < n_dims; d++) {
            int64_t ne;
            if (!gmn_read_le(f, &ne, 8) || ne < 0) {
                return GMN_OK;
            }
            if (ne == 0) {
                return gmn_fail(GMN_E_FORMAT, "model_load: '%s': tensor '%s' has a dimension of size 0", path, name);
            }
        }
        if (!gmn_skip(f, 4 + 8)) { /* type, offset */
            return GMN_OK;
        }
    }
    return GMN_OK;
}

int gmn_model_load(const char * path, const char * device, int n_threads, gmn_model ** out) {
    gmn_ensure_init();
    gmn_clear_error();
    if (path == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "model_load: NULL argument");
    }
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        return gmn_fail(GMN_E_IO, "model_load: '%s': %s", path, strerror(errno));
    }
    if (!S_ISREG(sb.st_mode)) {
        return gmn_fail(GMN_E_IO, "model_load: '%s' is not a regular file", path);
    }
    FILE * f = fopen(path, "rb");
    if (f == NULL) {
        return gmn_fail(GMN_E_IO, "model_load: '%s': %s", path, strerror(errno));
    }
    int st = gmn_gguf_precheck(f, path);
    if (st != GMN_OK) {
        fclose(f);
        return st;
    }
    struct ggml_context * meta = NULL;
    struct gguf_init_params gp = { true, &meta };
    struct gguf_context * g = gguf_init_from_file(path, gp);
    if (g == NULL) {
        fclose(f);
        return gmn_fail(GMN_E_FORMAT, "model_load: '%s' is not a valid GGUF file (corrupt or truncated); re-save or re-download it", path);
    }
    struct gmn_net net;
    struct gmn_layer layers[GMN_MAX_LAYERS];
    size_t offsets[GMN_MAX_TENSORS];
    struct gmn_storage storage[GMN_MAX_TENSORS];
    gmn_model * m = NULL;
    st = gmn_read_net(g, path, &net, layers);
    if (st == GMN_OK) {
        struct gmn_layer raw[GMN_MAX_LAYERS];
        memcpy(raw, layers, sizeof(raw));
        net.layers = raw;
        st = gmn_net_prepare(&net, layers, NULL, NULL);
        net.layers = layers;
        if (st != GMN_OK) {
            char why[768];
            snprintf(why, sizeof(why), "%s", gmn_last_error());
            st = gmn_fail(GMN_E_FORMAT, "model_load: '%s': %s", path, why);
        }
    }
    if (st == GMN_OK) {
        st = gmn_check_tensors(g, meta, path, (long long) sb.st_size, &net, offsets, storage);
    }
    if (st == GMN_OK) {
        st = gmn_model_create(&net, device, n_threads, storage, &m);
    }
    if (st == GMN_OK) {
        st = gmn_read_tensors(m, path, f, offsets);
    }
    if (st == GMN_OK) {
        st = gmn_read_meta(m, g);
    }
    if (st == GMN_OK) {
        st = gmn_optstate_read(m, g, meta, path, f, (long long) sb.st_size);
    }
    fclose(f);
    gguf_free(g);
    ggml_free(meta);
    if (st != GMN_OK) {
        gmn_model_free(m);
        return st;
    }
    *out = m;
    return GMN_OK;
}

static int gmn_valid_meta_key(const char * k) {
    if (k == NULL || k[0] == '\0' || strlen(k) > 200) {
        return 0;
    }
    for (const char * p = k; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '.')) {
            return 0;
        }
    }
    return 1;
}

/* Stores the layer list as typed arrays ggml_mnist.layers.{kind,name,units,kernel,stride,padding,dropout}, with
 * .{momentum,eps} when a layer is batchnorm and .body when one is residual (so that the files of other networks stay
 * as they were). */
static void gmn_write_layers(struct gguf_context * g, const struct gmn_net * net) {
    const int n = net->n_layers;
    const char * kinds[GMN_MAX_LAYERS];
    const char * names[GMN_MAX_LAYERS];
    int32_t units[GMN_MAX_LAYERS], kernel[GMN_MAX_LAYERS], stride[GMN_MAX_LAYERS], pad[GMN_MAX_LAYERS];
    float drop[GMN_MAX_LAYERS], momentum[GMN_MAX_LAYERS], eps[GMN_MAX_LAYERS];
    int32_t body[GMN_MAX_LAYERS];
    int bn = 0, res = 0;
    for (int i = 0; i < n; i++) {
        const struct gmn_layer * l = &net->layers[i];
        kinds[i] = gmn_layer_kind_name(l->kind);
        names[i] = l->name;
        units[i] = l->n_out;
        kernel[i] = l->k;
        stride[i] = l->stride;
        pad[i] = l->pad;
        drop[i] = l->p;
        momentum[i] = l->kind == GMN_LAYER_BATCHNORM ? l->momentum : 0.0f;
        eps[i] = l->kind == GMN_LAYER_BATCHNORM ? l->eps : 0.0f;
        bn |= l->kind == GMN_LAYER_BATCHNORM;
        body[i] = l->kind == GMN_LAYER_RESIDUAL ? l->body : 0;
        res |= l->kind == GMN_LAYER_RESIDUAL;
    }
    gguf_set_arr_str(g, GMN_KEY_LAYERS "kind", kinds, (size_t) n);
    gguf_set_arr_str(g, GMN_KEY_LAYERS "name", names, (size_t) n);
    gguf_set_arr_data(g, GMN_KEY_LAYERS "units", GGUF_TYPE_INT32, units, (size_t) n);
    gguf_set_arr_data(g, GMN_KEY_LAYERS "kernel", GGUF_TYPE_INT32, kernel, (size_t) n);
    gguf_set_arr_data(g, GMN_KEY_LAYERS "stride", GGUF_TYPE_INT32, stride, (size_t) n);
    gguf_set_arr_data(g, GMN_KEY_LAYERS "padding", GGUF_TYPE_INT32, pad, (size_t) n);
    gguf_set_arr_data(g, GMN_KEY_LAYERS "dropout", GGUF_TYPE_FLOAT32, drop, (size_t) n);
    if (bn) {
        gguf_set_arr_data(g, GMN_KEY_LAYERS "momentum", GGUF_TYPE_FLOAT32, momentum, (size_t) n);
        gguf_set_arr_data(g, GMN_KEY_LAYERS "eps", GGUF_TYPE_FLOAT32, eps, (size_t) n);
    }
    if (res) {
        gguf_set_arr_data(g, GMN_KEY_LAYERS "body", GGUF_TYPE_INT32, body, (size_t) n);
    }
}

/* Builds the gguf context: metadata plus host copies of the weights held in ctx_host. */
static int gmn_build_gguf(const gmn_model * m, int n_meta, const char ** keys, const char ** values,
                          struct gguf_context ** g_out, struct ggml_context ** host_out) {
    size_t total = 0;
    for (int i = 0; i < m->n_w; i++) {
        total += ggml_nbytes(m->w[i]) + 64;
    }
    struct ggml_init_params ip = { total + GMN_MAX_TENSORS * ggml_tensor_overhead(), NULL, false };
    struct ggml_context * host = ggml_init(ip);
    struct gguf_context * g = gguf_init_empty();
    if (host == NULL || g == NULL) {
        ggml_free(host);
        if (g) gguf_free(g);
        return gmn_fail(GMN_E_NOMEM, "model_save: out of memory");
    }
    const struct gmn_net * net = &m->net;
    gguf_set_val_str(g, "general.architecture", gmn_model_arch_name(m));
    gguf_set_val_u32(g, GMN_META_PREFIX "n_classes", (uint32_t) m->n_classes);
    gguf_set_val_u32(g, GMN_META_PREFIX "image_height", (uint32_t) net->image_h);
    gguf_set_val_u32(g, GMN_META_PREFIX "image_width", (uint32_t) net->image_w);
    gmn_write_layers(g, net);
    for (int i = 0; i < n_meta; i++) {
        char key[256];
        snprintf(key, sizeof(key), GMN_META_PREFIX "%s", keys[i]);
        gguf_set_val_str(g, key, values[i]);
    }
    for (int i = 0; i < m->n_w; i++) {
        struct ggml_tensor * t = ggml_dup_tensor(host, m->w[i]);
        ggml_set_name(t, ggml_get_name(m->w[i]));
        ggml_backend_tensor_get(m->w[i], t->data, 0, ggml_nbytes(t));
        if (t->type == GGML_TYPE_F32) { /* other types come from checked conversions and cannot be trained */
            const float * v = (const float *) t->data;
            for (int64_t j = 0; j < ggml_nelements(t); j++) {
                if (!isfinite(v[j])) {
                    gguf_free(g);
                    ggml_free(host);
                    return gmn_fail(GMN_E_DIVERGED, "model_save: tensor %s holds NaN or infinite values; the model cannot be "
                                    "saved (retrain it, with a lower learning rate if it diverged)", ggml_get_name(m->w[i]));
                }
            }
        }
        gguf_add_tensor(g, t);
    }
    gmn_optstate_write(m->opt_stale ? NULL : m->opt, g);
    *g_out = g;
    *host_out = host;
    return GMN_OK;
}

/* Give the new file the mode an ordinary open() would: the old file's, else 0666 minus the umask. */
static void gmn_set_mode(const char * tmp, const char * path) {
    struct stat sb;
    if (stat(path, &sb) == 0) {
        chmod(tmp, sb.st_mode & 07777);
        return;
    }
    mode_t mask = 022;
    FILE * f = fopen("/proc/self/status", "r");
    if (f != NULL) {
        char line[256];
        while (fgets(line, sizeof(line), f)) {
            unsigned int v;
            if (sscanf(line, "Umask: %o", &v) == 1) {
                mask = (mode_t) v;
                break;
            }
        }
        fclose(f);
    }
    chmod(tmp, 0666 & ~mask);
}

#define GMN_TMP_SUFFIX        ".tmp-XXXXXX"
#define GMN_TMP_BASE_MAX      200 /* bytes of NAME in .NAME.tmp-XXXXXX, which must stay within NAME_MAX (255) */
#define GMN_STALE_TMP_SECONDS 60

/* Removes the temporary files (.NAME.tmp-XXXXXX) of saves to NAME that were killed before their
 * rename: those unchanged for a minute that no writer holds locked. Failures are ignored. */
static void gmn_remove_stale_temps(const char * dir, const char * base) {
    const size_t plen = strnlen(base, GMN_TMP_BASE_MAX) + 6; /* ".NAME.tmp-" */
    char * prefix = malloc(plen + 1);
    DIR * d = prefix != NULL ? opendir(dir) : NULL;
    if (d == NULL) {
        free(prefix);
        return;
    }
    snprintf(prefix, plen + 1, ".%.*s.tmp-", GMN_TMP_BASE_MAX, base);
    const time_t now = time(NULL);
    struct dirent * e;
    while ((e = readdir(d)) != NULL) {
        if (strlen(e->d_name) != plen + 6 || strncmp(e->d_name, prefix, plen) != 0) {
            continue;
        }
        const int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) {
            continue;
        }
        struct stat sb;
        if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && now - sb.st_mtime > GMN_STALE_TMP_SECONDS &&
            flock(fd, LOCK_EX | LOCK_NB) == 0) {
            unlinkat(dirfd(d), e->d_name, 0);
        }
        close(fd);
    }
    closedir(d);
    free(prefix);
}

/* Writes g to a locked temporary file next to path, syncs it and renames it onto path; then removes
 * temporary files that killed saves left behind. */
static int gmn_write_atomic(const struct gguf_context * g, const char * path) {
    char * dup_dir = gmn_strdup(path);
    char * dup_base = gmn_strdup(path);
    if (dup_dir == NULL || dup_base == NULL) {
        free(dup_dir); free(dup_base);
        return gmn_fail(GMN_E_NOMEM, "model_save: out of memory");
    }
    const char * dir = dirname(dup_dir);
    const char * base = basename(dup_base);
    /* "DIR/.BASE.tmp-XXXXXX": dirname() may return "." for a bare file name, longer than path's own prefix */
    const size_t tmp_cap = strlen(dir) + strlen(base) + sizeof(GMN_TMP_SUFFIX) + 2;
    char * tmp = malloc(tmp_cap);
    if (tmp == NULL) {
        free(dup_dir); free(dup_base);
        return gmn_fail(GMN_E_NOMEM, "model_save: out of memory");
    }
    snprintf(tmp, tmp_cap, "%s/.%.*s" GMN_TMP_SUFFIX, dir, GMN_TMP_BASE_MAX, base);
    int st = GMN_OK;
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        st = gmn_fail(GMN_E_IO, "model_save: directory '%s' does not exist; create it first", dir);
    } else if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        st = gmn_fail(GMN_E_IO, "model_save: '%s' is a directory; give a file name such as model.gguf", path);
    }
    int fd = -1;
    if (st == GMN_OK) {
        fd = mkstemp(tmp);
        if (fd < 0) {
            st = gmn_fail(GMN_E_IO, "model_save: cannot create a file in '%s': %s", dir, strerror(errno));
        }
    }
    if (st == GMN_OK) {
        flock(fd, LOCK_EX | LOCK_NB); /* held until the rename: marks the file as in use for gmn_remove_stale_temps */
        FILE * f = fdopen(fd, "wb");
        if (f == NULL) {
            st = gmn_fail(GMN_E_IO, "model_save: %s", strerror(errno));
            close(fd);
        } else {
            int ok = gguf_write_to_file_ptr(g, f, false);
            ok = ok && fflush(f) == 0;
            ok = ok && fsync(fd) == 0;
            if (!ok) {
                st = gmn_fail(GMN_E_IO, "model_save: writing '%s' failed: %s (disk full?)", path, strerror(errno));
            } else {
                gmn_set_mode(tmp, path);
                if (rename(tmp, path) != 0) {
                    st = gmn_fail(GMN_E_IO, "model_save: cannot replace '%s': %s", path, strerror(errno));
                }
            }
            fclose(f); /* after a successful fsync the data is on disk; closing cannot lose it */
        }
        if (st != GMN_OK) {
            unlink(tmp);
        } else {
            int dfd = open(dir, O_RDONLY | O_DIRECTORY);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            gmn_remove_stale_temps(dir, base);
        }
    }
    free(dup_dir); free(dup_base); free(tmp);
    return st;
}

/* Keys the shim writes itself: a user value under them would make the file unloadable. */
static int gmn_reserved_meta_key(const char * key) {
    static const char * const reserved[] = { "n_classes", "image_height", "image_width", "hidden", "conv1_channels",
                                             "conv2_channels" };
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        if (strcmp(key, reserved[i]) == 0) {
            return 1;
        }
    }
    return strncmp(key, "layers.", 7) == 0 || strcmp(key, "layers") == 0 || strncmp(key, "opt.", 4) == 0;
}

/* The file a save writes: path itself, or the file a symlink at path points to. Refuses to replace anything
 * but a regular file (a device, a FIFO, a socket), and names too long for the directory. */
static int gmn_save_target(const char * path, char * target) {
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) {
        if (realpath(path, target) == NULL) {
            return gmn_fail(GMN_E_IO, "model_save: '%s' is a symbolic link to a missing file (%s); remove it or save elsewhere",
                            path, strerror(errno));
        }
    } else if (strlen(path) >= PATH_MAX) {
        return gmn_fail(GMN_E_IO, "model_save: the path '%.64s...' is too long", path);
    } else {
        snprintf(target, PATH_MAX, "%s", path);
    }
    if (stat(target, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
        return gmn_fail(GMN_E_IO, "model_save: '%s' is not a regular file (a device, FIFO or socket); saving would replace "
                        "it, so give the name of a model file", path);
    }
    const char * slash = strrchr(target, '/');
    if (strlen(slash ? slash + 1 : target) > 255) {
        return gmn_fail(GMN_E_IO, "model_save: the file name in '%.64s...' is longer than 255 bytes", path);
    }
    return GMN_OK;
}

int gmn_model_save(const gmn_model * m, const char * path, int n_meta, const char ** keys, const char ** values) {
    gmn_clear_error();
    if (m == NULL || path == NULL || path[0] == '\0') {
        return gmn_fail(GMN_E_INVALID, "model_save: NULL or empty argument");
    }
    if (m->diverged) {
        return gmn_fail(GMN_E_DIVERGED, "model_save: refusing to save '%s': training diverged and the weights hold NaN/inf; "
                        "retrain with a lower learning rate", path);
    }
    if (n_meta < 0 || n_meta > GMN_MAX_META || (n_meta > 0 && (keys == NULL || values == NULL))) {
        return gmn_fail(GMN_E_INVALID, "model_save: bad metadata count %d (max %d)", n_meta, GMN_MAX_META);
    }
    for (int i = 0; i < n_meta; i++) {
        if (!gmn_valid_meta_key(keys[i]) || values[i] == NULL) {
            return gmn_fail(GMN_E_INVALID, "model_save: metadata key '%s' must be 1-200 chars of [a-z0-9_.] with a value",
                            keys[i] ? keys[i] : "(null)");
        }
        if (gmn_reserved_meta_key(keys[i])) {
            return gmn_fail(GMN_E_INVALID, "model_save: metadata key '%s' is reserved for the file's own description of the "
                            "network; choose another name", keys[i]);
        }
    }
    char target[PATH_MAX];
    int st = gmn_save_target(path, target);
    if (st != GMN_OK) {
        return st;
    }
    /* the host copy of the weights plus ggml's in-memory image of the whole file, which it allocates without
     * checking (a failure would abort the process) */
    double need = 16e6;
    for (int i = 0; i < m->n_w; i++) {
        need += 2.0 * (double) ggml_nbytes(m->w[i]);
    }
    const uint64_t avail = gmn_host_memory_available();
    if (avail > 0 && need > (double) avail) {
        return gmn_fail(GMN_E_NOMEM, "model_save: writing '%s' needs about %.0f MB of memory but %.0f MB are available; "
                        "free memory or raise the process's limit", path, need / 1e6, (double) avail / 1e6);
    }
    struct gguf_context * g = NULL;
    struct ggml_context * host = NULL;
    st = gmn_build_gguf(m, n_meta, keys, values, &g, &host);
    if (st != GMN_OK) {
        return st;
    }
    st = gmn_write_atomic(g, target);
    gguf_free(g);
    ggml_free(host);
    return st;
}
