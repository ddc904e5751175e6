/* gmn_net.c - networks as data: layer kinds, validation, shapes, parameters, presets and the forward graph.
 * This is the only file that knows what a layer does. */
#include "gmn_internal.h"


#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char * const GMN_KIND_NAMES[] = {
    [GMN_LAYER_CONV2D] = "conv2d", [GMN_LAYER_MAXPOOL2D] = "maxpool2d", [GMN_LAYER_AVGPOOL2D] = "avgpool2d",
    [GMN_LAYER_DENSE] = "dense", [GMN_LAYER_RELU] = "relu", [GMN_LAYER_SILU] = "silu", [GMN_LAYER_GELU] = "gelu",
    [GMN_LAYER_TANH] = "tanh", [GMN_LAYER_DROPOUT] = "dropout", [GMN_LAYER_BATCHNORM] = "batchnorm",
    [GMN_LAYER_RESIDUAL] = "residual",
};
#define GMN_N_KINDS ((int) (sizeof(GMN_KIND_NAMES) / sizeof(GMN_KIND_NAMES[0])))

const char * gmn_layer_kind_name(int kind) {
    return kind > 0 && kind < GMN_N_KINDS ? GMN_KIND_NAMES[kind] : "";
}

int gmn_layer_kind_from_name(const char * name) {
    for (int k = 1; k < GMN_N_KINDS; k++) {
        if (strcmp(name, GMN_KIND_NAMES[k]) == 0) {
            return k;
        }
    }
    return 0;
}

/* Kinds whose layers have a name: those with tensors (a residual block's only when it needs a projection). */
int gmn_layer_has_params(int kind) {
    return kind == GMN_LAYER_CONV2D || kind == GMN_LAYER_DENSE || kind == GMN_LAYER_BATCHNORM || kind == GMN_LAYER_RESIDUAL;
}

/* The prefix of the default names of a kind's layers (conv1, fc1, bn1, res1). */
static const char * gmn_name_prefix(int kind) {
    switch (kind) {
        case GMN_LAYER_CONV2D:    return "conv";
        case GMN_LAYER_DENSE:     return "fc";
        case GMN_LAYER_BATCHNORM: return "bn";
        default:                  return "res";
    }
}

/* ---- presets ----------------------------------------------------------------------------------- */
#define CONV(name_, n_, k_, s_, p_) { .kind = GMN_LAYER_CONV2D, .name = name_, .n_out = n_, .k = k_, .stride = s_, .pad = p_ }
#define MAXPOOL(k_, s_, p_)         { .kind = GMN_LAYER_MAXPOOL2D, .k = k_, .stride = s_, .pad = p_ }
#define AVGPOOL(k_, s_, p_)         { .kind = GMN_LAYER_AVGPOOL2D, .k = k_, .stride = s_, .pad = p_ }
#define DENSE(name_, n_)            { .kind = GMN_LAYER_DENSE, .name = name_, .n_out = n_ }
#define ACT(kind_)                  { .kind = kind_ }
#define DROPOUT(p_)                 { .kind = GMN_LAYER_DROPOUT, .p = p_ }
#define CLASSES 0 /* the last dense layer: one unit per class */

struct gmn_preset {
    const char *     name;
    int              n_layers;
    struct gmn_layer layers[16];
};

static const struct gmn_preset GMN_PRESETS[] = {
    { "fc", 3, { DENSE("fc1", 500), ACT(GMN_LAYER_RELU), DENSE("fc2", CLASSES) } },
    { "cnn", 7, { CONV("conv1", 8, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0),
                  CONV("conv2", 16, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0), DENSE("dense", CLASSES) } },
    /* cnn's network under its own recipe (config.py ARCH_DEFAULTS["fast"]): it saves as mnist-cnn */
    { "fast", 7, { CONV("conv1", 8, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0),
                   CONV("conv2", 16, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0), DENSE("dense", CLASSES) } },
    { "mlp800", 3, { DENSE("fc1", 800), ACT(GMN_LAYER_RELU), DENSE("fc2", CLASSES) } },
    { "minerva-mlp", 3, { DENSE("fc1", 256), ACT(GMN_LAYER_RELU), DENSE("fc2", CLASSES) } },
    { "minerva-cnn", 7, { CONV("conv1", 16, 5, 1, 0), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0),
                          CONV("conv2", 32, 5, 1, 2), ACT(GMN_LAYER_RELU), MAXPOOL(3, 3, 0), DENSE("fc1", CLASSES) } },
    { "lenet5", 11, { CONV("conv1", 6, 5, 1, 2), ACT(GMN_LAYER_TANH), AVGPOOL(2, 2, 0),
                      CONV("conv2", 16, 5, 1, 0), ACT(GMN_LAYER_TANH), AVGPOOL(2, 2, 0),
                      DENSE("fc1", 120), ACT(GMN_LAYER_TANH), DENSE("fc2", 84), ACT(GMN_LAYER_TANH), DENSE("fc3", CLASSES) } },
    { "letters-cnn", 14, { CONV("conv1", 32, 3, 1, 0), MAXPOOL(2, 2, 0), ACT(GMN_LAYER_GELU),
                           CONV("conv2", 64, 3, 1, 0), MAXPOOL(2, 2, 1), ACT(GMN_LAYER_GELU),
                           CONV("conv3", 128, 3, 1, 0), MAXPOOL(2, 2, 0), ACT(GMN_LAYER_GELU),
                           DENSE("fc1", 64), ACT(GMN_LAYER_GELU), DENSE("fc2", 128), ACT(GMN_LAYER_GELU), DENSE("fc3", CLASSES) } },
    { "best", 13, { CONV("conv1", 32, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0),
                    CONV("conv2", 64, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0),
                    CONV("conv3", 128, 3, 1, 1), ACT(GMN_LAYER_RELU), MAXPOOL(2, 2, 0),
                    DENSE("fc1", 256), ACT(GMN_LAYER_RELU), DROPOUT(0.4f), DENSE("fc2", CLASSES) } },
};
#define GMN_N_PRESETS ((int) (sizeof(GMN_PRESETS) / sizeof(GMN_PRESETS[0])))

int gmn_preset_count(void) {
    return GMN_N_PRESETS;
}

const char * gmn_preset_name(int i) {
    return i >= 0 && i < GMN_N_PRESETS ? GMN_PRESETS[i].name : NULL;
}

int gmn_preset_layers(const char * name, int n_classes, struct gmn_layer * layers, int cap, int * n_layers) {
    gmn_clear_error();
    if (name == NULL || layers == NULL || n_layers == NULL) {
        return gmn_fail(GMN_E_INVALID, "preset: NULL argument");
    }
    if (n_classes < GMN_MIN_CLASSES || n_classes > GMN_MAX_CLASSES) {
        return gmn_fail(GMN_E_INVALID, "preset: n_classes is %d; it must be in [%d, %d]", n_classes, GMN_MIN_CLASSES, GMN_MAX_CLASSES);
    }
    for (int i = 0; i < GMN_N_PRESETS; i++) {
        const struct gmn_preset * p = &GMN_PRESETS[i];
        if (strcmp(p->name, name) != 0) {
            continue;
        }
        if (cap < p->n_layers) {
            return gmn_fail(GMN_E_INVALID, "preset: '%s' has %d layers but room was given for %d", name, p->n_layers, cap);
        }
        memcpy(layers, p->layers, (size_t) p->n_layers * sizeof(struct gmn_layer));
        for (int j = 0; j < p->n_layers; j++) {
            if (layers[j].kind == GMN_LAYER_DENSE && layers[j].n_out == CLASSES) {
                layers[j].n_out = n_classes;
            }
        }
        *n_layers = p->n_layers;
        return GMN_OK;
    }
    char names[256] = "";
    for (int i = 0; i < GMN_N_PRESETS; i++) {
        const size_t len = strlen(names);
        snprintf(names + len, sizeof(names) - len, "%s%s", i ? ", " : "", GMN_PRESETS[i].name);
    }
    return gmn_fail(GMN_E_INVALID, "preset: unknown network '%.64s'; the presets are %s", name, names);
}

/* ---- validation and shapes --------------------------------------------------------------------- */
static int gmn_valid_name(const char * s) {
    const size_t n = strnlen(s, GMN_NAME_CAP);
    if (n == 0 || n >= GMN_NAME_CAP) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        const char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) {
            return 0;
        }
    }
    return 1;
}

static int gmn_layer_fail(int i, const struct gmn_layer * l, const char * fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char * kind = gmn_layer_kind_name(l->kind);
    return gmn_fail(GMN_E_INVALID, "network: layer %d (%s%s%s): %s", i, kind[0] ? kind : "?",
                    gmn_layer_has_params(l->kind) && l->name[0] ? " " : "", gmn_layer_has_params(l->kind) ? l->name : "", msg);
}

/* Checks a window (kernel or pool) of side k, stride s and padding p over an h x w input. */
/* The output side of a window (conv2d kernel or pool) of layer l sliding over in pixels. */
static int64_t gmn_out_side(int64_t in, const struct gmn_layer * l) {
    return (in + 2 * l->pad - l->k) / l->stride + 1;
}

/* The stride of the 1x1 convolution that takes a w x h feature map to ow x oh (the first of every stride-th row and
 * column), or 0 when none does. */
static int gmn_residual_stride(int64_t w, int64_t h, int64_t ow, int64_t oh) {
    for (int s = 1; s <= GMN_MAX_WINDOW; s++) {
        if ((w - 1) / s + 1 == ow && (h - 1) / s + 1 == oh) {
            return s;
        }
    }
    return 0;
}

static int gmn_check_window(int i, const struct gmn_layer * l, const struct gmn_shape * in, const char * what, int max_pad) {
    if (l->k < 1 || l->k > GMN_MAX_WINDOW) {
        return gmn_layer_fail(i, l, "%s size %d must be in [1, %d]", what, l->k, GMN_MAX_WINDOW);
    }
    if (l->stride < 1 || l->stride > GMN_MAX_WINDOW) {
        return gmn_layer_fail(i, l, "stride %d must be in [1, %d]", l->stride, GMN_MAX_WINDOW);
    }
    if (l->pad < 0 || l->pad > max_pad) {
        return gmn_layer_fail(i, l, "padding %d must be in [0, %d] for a %s of %d", l->pad, max_pad, what, l->k);
    }
    if (in->flat) {
        return gmn_layer_fail(i, l, "its input is flat (it follows a dense layer); put convolutions and pooling before the dense layers");
    }
    if (l->k > in->h + 2 * l->pad || l->k > in->w + 2 * l->pad) {
        return gmn_layer_fail(i, l, "the %s %dx%d is larger than its %lldx%lld input (with padding %d); "
                              "use a smaller %s, more padding or fewer pooling layers before it",
                              what, l->k, l->k, (long long) in->h, (long long) in->w, l->pad, what);
    }
    return GMN_OK;
}

/* Names layer i PREFIX<n>, with n its ordinal among the layers of its kind, or the next n that no other
 * layer is called (given names of later layers included). */
static void gmn_default_name(const struct gmn_net * net, struct gmn_layer * out, int i, const char * prefix, int n) {
    for (;; n++) {
        snprintf(out[i].name, sizeof(out[i].name), "%s%d", prefix, n);
        int taken = 0;
        for (int j = 0; j < net->n_layers && !taken; j++) {
            const char * other = j < i ? out[j].name : net->layers[j].name;
            taken = j != i && gmn_layer_has_params(net->layers[j].kind) && strncmp(other, out[i].name, GMN_NAME_CAP) == 0;
        }
        if (!taken) {
            return;
        }
    }
}

int gmn_net_prepare(const struct gmn_net * net, struct gmn_layer * out, struct gmn_shape * shapes, int64_t * n_params) {
    if (net == NULL) {
        return gmn_fail(GMN_E_INVALID, "network: NULL network");
    }
    if (net->image_h < GMN_MIN_IMAGE_SIDE || net->image_w < GMN_MIN_IMAGE_SIDE ||
        net->image_h > GMN_MAX_IMAGE_SIDE || net->image_w > GMN_MAX_IMAGE_SIDE) {
        return gmn_fail(GMN_E_INVALID, "network: image size %dx%d is out of range [%d, %d]",
                        net->image_h, net->image_w, GMN_MIN_IMAGE_SIDE, GMN_MAX_IMAGE_SIDE);
    }
    if (net->n_layers < 1 || net->n_layers > GMN_MAX_LAYERS || net->layers == NULL) {
        return gmn_fail(GMN_E_INVALID, "network: it has %d layers; give 1 to %d layers ending in a dense layer with one unit per class",
                        net->n_layers, GMN_MAX_LAYERS);
    }
    memcpy(out, net->layers, (size_t) net->n_layers * sizeof(struct gmn_layer));
    struct gmn_shape cur = { net->image_w, net->image_h, 1, 0, 0 };
    int64_t total = 0;
    struct gmn_shape ins[GMN_MAX_LAYERS]; /* the shape entering each layer */
    int starts[GMN_MAX_LAYERS];           /* residual layers: the first layer of their body */
    for (int i = 0; i < net->n_layers; i++) {
        struct gmn_layer * l = &out[i];
        if (gmn_layer_kind_name(l->kind)[0] == '\0') {
            return gmn_fail(GMN_E_INVALID, "network: layer %d has unknown kind %d; use conv2d, maxpool2d, avgpool2d, dense, "
                            "relu, silu, gelu, tanh, dropout, batchnorm or residual", i, l->kind);
        }
        if (l->kind != GMN_LAYER_BATCHNORM) {
            l->momentum = 0.0f;
            l->eps = 0.0f;
        }
        if (l->kind != GMN_LAYER_RESIDUAL) {
            l->body = 0;
        }
        if (!gmn_layer_has_params(l->kind)) {
            memset(l->name, 0, sizeof(l->name));
        } else if (memchr(l->name, '\0', sizeof(l->name)) == NULL) {
            l->name[GMN_NAME_CAP - 1] = '\0';
            return gmn_layer_fail(i, l, "its name is longer than %d characters", GMN_NAME_CAP - 1);
        } else if (l->name[0] == '\0') {
            int before = 0; /* layers of this kind before it */
            for (int j = 0; j < i; j++) {
                before += out[j].kind == l->kind;
            }
            gmn_default_name(net, out, i, gmn_name_prefix(l->kind), before + 1);
        } else if (!gmn_valid_name(l->name)) {
            return gmn_layer_fail(i, l, "name '%s' must be 1-%d characters of A-Z, a-z, 0-9 and _", l->name, GMN_NAME_CAP - 1);
        }
        for (int j = 0; j < i && gmn_layer_has_params(l->kind); j++) {
            if (gmn_layer_has_params(out[j].kind) && strcmp(out[j].name, l->name) == 0) {
                return gmn_layer_fail(i, l, "name '%s' is already used by layer %d; names must be unique", l->name, j);
            }
        }
        struct gmn_shape next = cur;
        next.params = 0;
        ins[i] = cur;
        switch (l->kind) {
            case GMN_LAYER_CONV2D: {
                if (l->n_out < 1 || l->n_out > GMN_MAX_CHANNELS) {
                    return gmn_layer_fail(i, l, "%d output channels; use 1 to %d", l->n_out, GMN_MAX_CHANNELS);
                }
                int st = gmn_check_window(i, l, &cur, "kernel", l->k - 1);
                if (st != GMN_OK) {
                    return st;
                }
                next.w = gmn_out_side(cur.w, l);
                next.h = gmn_out_side(cur.h, l);
                next.c = l->n_out;
                next.params = ((int64_t) l->k * l->k * cur.c + 1) * l->n_out;
                break;
            }
            case GMN_LAYER_MAXPOOL2D:
            case GMN_LAYER_AVGPOOL2D: {
                int st = gmn_check_window(i, l, &cur, "window", l->k / 2);
                if (st != GMN_OK) {
                    return st;
                }
                next.w = gmn_out_side(cur.w, l);
                next.h = gmn_out_side(cur.h, l);
                break;
            }
            case GMN_LAYER_DENSE: {
                if (l->n_out < 1 || l->n_out > GMN_MAX_UNITS) {
                    return gmn_layer_fail(i, l, "%d units; use 1 to %d", l->n_out, GMN_MAX_UNITS);
                }
                const int64_t n_in = cur.w * cur.h * cur.c;
                next.w = 1; next.h = 1; next.c = l->n_out; next.flat = 1;
                next.params = (n_in + 1) * l->n_out;
                break;
            }
            case GMN_LAYER_DROPOUT:
                if (!(l->p >= 0.0f && l->p < 1.0f)) {
                    return gmn_layer_fail(i, l, "drop probability %g must be in [0, 1)", (double) l->p);
                }
                break;
            case GMN_LAYER_RESIDUAL: {
                if (l->body < 1 || l->body > i) {
                    return gmn_layer_fail(i, l, "its body of %d layers must be 1 to the %d layers before it", l->body, i);
                }
                const int start = i - l->body;
                for (int j = start; j < i; j++) {
                    if (out[j].kind == GMN_LAYER_RESIDUAL && starts[j] < start) {
                        return gmn_layer_fail(i, l, "its body (layers %d to %d) cuts through the block that layer %d ends "
                                              "(layers %d to %d); blocks must nest", start, i - 1, j, starts[j], j - 1);
                    }
                }
                starts[i] = start;
                const struct gmn_shape * in = &ins[start];
                if (in->flat != cur.flat) {
                    return gmn_layer_fail(i, l, "its body flattens its input (it holds a dense layer); a residual block's "
                                          "output must be a feature map when its input is one");
                }
                if (in->w == cur.w && in->h == cur.h && in->c == cur.c) {
                    break; /* the input itself is added */
                }
                if (!cur.flat && gmn_residual_stride(in->w, in->h, cur.w, cur.h) == 0) {
                    return gmn_layer_fail(i, l, "its body turns a %lldx%lld input into %lldx%lld, which no strided 1x1 "
                                          "convolution of the input matches; pad the body's convolutions (padding = "
                                          "kernel_size // 2) and downsample with strides", (long long) in->h,
                                          (long long) in->w, (long long) cur.h, (long long) cur.w);
                }
                next.params = (in->c + 1) * cur.c; /* the projection: 1x1 convolution or dense layer, and its bias */
                break;
            }
            case GMN_LAYER_BATCHNORM:
                if (i == 0) {
                    return gmn_layer_fail(i, l, "it is the first layer; batch normalisation goes after a conv2d, pooling "
                                          "or dense layer (the images themselves are not normalised)");
                }
                if (i == net->n_layers - 1) {
                    return gmn_layer_fail(i, l, "it is the last layer; the network ends in the dense layer with one unit "
                                          "per class (the logits are not normalised), so put batchnorm before it");
                }
                if (!(l->momentum >= 0.0f && l->momentum <= 1.0f)) {
                    return gmn_layer_fail(i, l, "momentum %g must be in [0, 1] (PyTorch's default is 0.1)", (double) l->momentum);
                }
                if (!(l->eps > 0.0f && l->eps <= 1.0f)) {
                    return gmn_layer_fail(i, l, "eps %g must be in (0, 1] (PyTorch's default is 1e-5)", (double) l->eps);
                }
                next.params = 2 * cur.c; /* weight and bias; the running statistics are not trained */
                break;
            default:
                break;
        }
        total += next.params;
        if (total > GMN_MAX_PARAMS) {
            return gmn_layer_fail(i, l, "the network reaches %lld parameters here, over the limit of %d; use fewer units or channels "
                                  "or more pooling before the dense layers", (long long) total, GMN_MAX_PARAMS);
        }
        if (shapes != NULL) {
            shapes[i] = next;
        }
        cur = next;
    }
    const struct gmn_layer * last = &out[net->n_layers - 1];
    if (last->kind != GMN_LAYER_DENSE || last->n_out < GMN_MIN_CLASSES || last->n_out > GMN_MAX_CLASSES) {
        return gmn_fail(GMN_E_INVALID, "network: the last layer must be a dense layer with one unit per class (%d to %d classes); "
                        "add dense(n_classes) at the end", GMN_MIN_CLASSES, GMN_MAX_CLASSES);
    }
    if (n_params != NULL) {
        *n_params = total;
    }
    return GMN_OK;
}

int gmn_net_check(const struct gmn_net * net, struct gmn_layer * layers_out, int64_t * layer_info, int64_t * n_params) {
    gmn_clear_error();
    struct gmn_layer layers[GMN_MAX_LAYERS];
    struct gmn_shape shapes[GMN_MAX_LAYERS];
    int st = gmn_net_prepare(net, layers, shapes, n_params);
    if (st != GMN_OK) {
        return st;
    }
    if (layers_out != NULL) {
        memcpy(layers_out, layers, (size_t) net->n_layers * sizeof(struct gmn_layer));
    }
    if (layer_info == NULL) {
        return GMN_OK;
    }
    for (int i = 0; i < net->n_layers; i++) {
        layer_info[4 * i + 0] = shapes[i].h;
        layer_info[4 * i + 1] = shapes[i].w;
        layer_info[4 * i + 2] = shapes[i].c;
        layer_info[4 * i + 3] = shapes[i].params;
    }
    return GMN_OK;
}

int gmn_net_classes(const struct gmn_net * net) {
    return net->layers[net->n_layers - 1].n_out;
}

static int gmn_layers_equal(const struct gmn_layer * a, const struct gmn_layer * b) {
    return a->kind == b->kind && strcmp(a->name, b->name) == 0 && a->n_out == b->n_out && a->k == b->k &&
           a->stride == b->stride && a->pad == b->pad && a->p == b->p && a->momentum == b->momentum && a->eps == b->eps &&
           a->body == b->body;
}

int gmn_net_is_preset(const struct gmn_net * net, const char * name, int n_classes) {
    struct gmn_layer ref[GMN_MAX_LAYERS];
    int n = 0;
    if (gmn_preset_layers(name, n_classes, ref, GMN_MAX_LAYERS, &n) != GMN_OK || n != net->n_layers) {
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (!gmn_layers_equal(&ref[i], &net->layers[i])) {
            return 0;
        }
    }
    return 1;
}

const char * gmn_net_arch_name(const struct gmn_net * net) {
    if (net->image_h == 28 && net->image_w == 28) {
        if (gmn_net_is_preset(net, "fc", 10)) {
            return GMN_ARCH_MNIST_FC;
        }
        if (gmn_net_is_preset(net, "cnn", 10)) {
            return GMN_ARCH_MNIST_CNN;
        }
    }
    return GMN_ARCH_OWN;
}

/* ---- parameters -------------------------------------------------------------------------------- */
int gmn_net_params(const struct gmn_net * net, struct gmn_param_spec * specs) {
    struct gmn_shape cur = { net->image_w, net->image_h, 1, 0, 0 };
    struct gmn_shape shapes[GMN_MAX_LAYERS];
    struct gmn_layer copy[GMN_MAX_LAYERS];
    gmn_net_prepare(net, copy, shapes, NULL);
    int n = 0;
    for (int i = 0; i < net->n_layers; i++) {
        const struct gmn_layer * l = &net->layers[i];
        if (l->kind == GMN_LAYER_CONV2D) {
            const int64_t fan_in = (int64_t) l->k * l->k * cur.c;
            specs[n++] = (struct gmn_param_spec) { i, 0, "", { l->k, l->k, cur.c, l->n_out }, fan_in, GMN_STORE_ANY, 1, GMN_INIT_UNIFORM };
            snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.kernel", l->name);
            specs[n++] = (struct gmn_param_spec) { i, 1, "", { 1, 1, l->n_out, 1 }, fan_in, GMN_STORE_F32, 1, GMN_INIT_UNIFORM };
            snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.bias", l->name);
        } else if (l->kind == GMN_LAYER_DENSE) {
            const int64_t fan_in = cur.w * cur.h * cur.c;
            specs[n++] = (struct gmn_param_spec) { i, 0, "", { fan_in, l->n_out, 1, 1 }, fan_in, GMN_STORE_ANY, 1, GMN_INIT_UNIFORM };
            snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.weight", l->name);
            specs[n++] = (struct gmn_param_spec) { i, 1, "", { l->n_out, 1, 1, 1 }, fan_in, GMN_STORE_F32, 1, GMN_INIT_UNIFORM };
            snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.bias", l->name);
        } else if (l->kind == GMN_LAYER_BATCHNORM) {
            /* one value per channel (unit), all f32 */
            static const char * const suffix[GMN_LAYER_TENSORS] = { "weight", "bias", "running_mean", "running_var" };
            static const int init[GMN_LAYER_TENSORS] = { GMN_INIT_ONES, GMN_INIT_ZEROS, GMN_INIT_ZEROS, GMN_INIT_ONES };
            for (int k = 0; k < GMN_LAYER_TENSORS; k++) {
                specs[n++] = (struct gmn_param_spec) { i, k, "", { cur.c, 1, 1, 1 }, cur.c, GMN_STORE_F32, k < 2, init[k] };
                snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.%s", l->name, suffix[k]);
            }
        } else if (l->kind == GMN_LAYER_RESIDUAL && shapes[i].params > 0) {
            /* the projection of the block's input, kept f32 (a few values a channel): a 1x1 convolution or a dense layer */
            const int start = i - l->body;
            const struct gmn_shape in = start > 0 ? shapes[start - 1] : (struct gmn_shape) { net->image_w, net->image_h, 1, 0, 0 };
            const int64_t O = shapes[i].c;
            if (in.flat) {
                specs[n++] = (struct gmn_param_spec) { i, 0, "", { in.c, O, 1, 1 }, in.c, GMN_STORE_F32, 1, GMN_INIT_UNIFORM };
                snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.weight", l->name);
                specs[n++] = (struct gmn_param_spec) { i, 1, "", { O, 1, 1, 1 }, in.c, GMN_STORE_F32, 1, GMN_INIT_UNIFORM };
            } else {
                specs[n++] = (struct gmn_param_spec) { i, 0, "", { 1, 1, in.c, O }, in.c, GMN_STORE_F32, 1, GMN_INIT_UNIFORM };
                snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.kernel", l->name);
                specs[n++] = (struct gmn_param_spec) { i, 1, "", { 1, 1, O, 1 }, in.c, GMN_STORE_F32, 1, GMN_INIT_UNIFORM };
            }
            snprintf(specs[n - 1].name, sizeof(specs[n - 1].name), "%s.bias", l->name);
        }
        cur = shapes[i];
    }
    return n;
}

int gmn_net_activation_ne(const struct gmn_net * net, int layer, int64_t batch, int64_t * ne) {
    struct gmn_shape shapes[GMN_MAX_LAYERS];
    struct gmn_layer copy[GMN_MAX_LAYERS];
    gmn_net_prepare(net, copy, shapes, NULL);
    const struct gmn_shape s = layer > 0 ? shapes[layer - 1] : (struct gmn_shape) { net->image_w, net->image_h, 1, 0, 0 };
    if (s.flat) {
        ne[0] = s.c; ne[1] = batch; ne[2] = 1; ne[3] = 1;
    } else {
        ne[0] = s.w; ne[1] = s.h; ne[2] = s.c; ne[3] = batch;
    }
    return s.flat ? 2 : 4;
}

/* ---- forward graph ----------------------------------------------------------------------------- */
/* Cross-correlation of layer l without its bias, as im2col (always F32) and one 2-D matrix product:
 * x [W, H, C, N] -> [OW, OH, O, N]. */
static struct ggml_tensor * gmn_conv2d(struct ggml_context * ctx, struct ggml_tensor * x, struct ggml_tensor * kernel,
                                       const struct gmn_layer * l) {
    const int64_t C = x->ne[2], O = l->n_out;
    /* im2col reads only the kernel's shape; a block-type kernel is stored flat [k*k*C (padded), O] */
    struct ggml_tensor * shape = ggml_is_quantized(kernel->type) ? ggml_new_tensor_4d(ctx, GGML_TYPE_F32, l->k, l->k, C, 1) : kernel;
    struct ggml_tensor * cols = ggml_im2col(ctx, shape, x, l->stride, l->stride, l->pad, l->pad, 1, 1, true, GGML_TYPE_F32);
    const int64_t K = cols->ne[0], OW = cols->ne[1], OH = cols->ne[2], N = cols->ne[3];
    struct ggml_tensor * cols2d = ggml_reshape_2d(ctx, cols, K, OW * OH * N);
    if (kernel->type != GGML_TYPE_F32) {
        /* ggml multiplies by an f16 or quantised matrix only as the first operand: [O, OW*OH*N] then */
        struct ggml_tensor * w = ggml_is_quantized(kernel->type) ? kernel : ggml_reshape_2d(ctx, kernel, K, O);
        if (w->ne[0] > K) {
            cols2d = ggml_pad(ctx, cols2d, (int) (w->ne[0] - K), 0, 0, 0);
        }
        struct ggml_tensor * y = ggml_mul_mat(ctx, w, cols2d);
        return ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, y, O, OW, OH, N), 2, 0, 1, 3));
    }
    struct ggml_tensor * y = ggml_mul_mat(ctx, cols2d, ggml_reshape_2d(ctx, kernel, K, O));
    return ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, y, OW, OH, N, O), 0, 1, 3, 2));
}

/* Index of the max-pool layer that a convolution's bias and the activations between them may move past, or -1.
 * Max pooling commutes with adding a per-channel constant and with non-decreasing element-wise functions
 * (relu, tanh), so conv -> [+bias -> act ->] maxpool computes the same as conv -> maxpool -> +bias -> act,
 * with the bias, the activations and their backward passes on a pooled, smaller tensor. */
static int gmn_pool_first(const struct gmn_net * net, int conv) {
    for (int j = conv + 1; j < net->n_layers; j++) {
        const int kind = net->layers[j].kind;
        for (int r = j; r < net->n_layers; r++) {
            if (net->layers[r].kind == GMN_LAYER_RESIDUAL && r - net->layers[r].body == j) {
                return -1; /* a residual block starts at layer j and adds the input of j itself */
            }
        }
        if (kind == GMN_LAYER_MAXPOOL2D) {
            return j;
        }
        if (kind != GMN_LAYER_RELU && kind != GMN_LAYER_TANH) {
            return -1;
        }
    }
    return -1;
}

/* The input of a dense layer whose weight is f16 or quantised (used only for prediction) as [rows, N]: a spatial
 * input [W, H, C, N] is flattened with channels fastest by permuting the activations (a quantised weight cannot
 * be permuted), and zero-padded to the weight's row length when its rows are padded to a whole block. */
static struct ggml_tensor * gmn_dense_input(struct ggml_context * ctx, struct ggml_tensor * x, int spatial, int64_t rows) {
    if (spatial) {
        const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3];
        if (C > 1) {
            x = ggml_cont(ctx, ggml_permute(ctx, x, 1, 2, 0, 3)); /* [C, W, H, N] */
        }
        x = ggml_reshape_2d(ctx, x, W * H * C, N);
    }
    return x->ne[0] < rows ? ggml_pad(ctx, x, (int) (rows - x->ne[0]), 0, 0, 0) : x;
}

/* A dense layer. A spatial input [W, H, C, N] is flattened height-width-channel with channels fastest (the
 * GGUF contract). Rather than permuting the activations we permute the weight's columns to the natural
 * [W, H, C] order of x: it is cheaper, and the gradient that reaches ggml's pool_2d_back stays contiguous;
 * that op reads its incoming gradient as contiguous planes, so a permuted (non-contiguous) gradient there
 * silently yields wrong gradients. */
static struct ggml_tensor * gmn_dense(struct ggml_context * ctx, struct ggml_tensor * x, struct ggml_tensor * weight,
                                      struct ggml_tensor * bias, int spatial) {
    if (weight->type != GGML_TYPE_F32) {
        return ggml_add(ctx, ggml_mul_mat(ctx, weight, gmn_dense_input(ctx, x, spatial, weight->ne[0])), bias);
    }
    struct ggml_tensor * w = weight;
    if (spatial) {
        const int64_t W = x->ne[0], H = x->ne[1], C = x->ne[2], N = x->ne[3], O = weight->ne[1];
        if (C > 1) {
            w = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_4d(ctx, weight, C, W, H, O), 2, 0, 1, 3));
            w = ggml_reshape_2d(ctx, w, W * H * C, O);
        }
        x = ggml_reshape_2d(ctx, x, W * H * C, N);
    }
    return ggml_add(ctx, ggml_mul_mat(ctx, w, x), bias);
}

/* GELU, tanh approximation, from ops that have a backward pass: 0.5x(1 + tanh(u)) = x sigmoid(2u) with
 * 2u = x * v, v = c (1 + 0.044715 x^2) and c = 2 sqrt(2/pi); so GELU(x) = silu(x v) / v, where v >= c > 0. */
static struct ggml_tensor * gmn_gelu(struct ggml_context * ctx, struct ggml_tensor * x) {
    const float c = 1.5957691216057308f; /* 2 sqrt(2 / pi) */
    struct ggml_tensor * v = ggml_scale_bias(ctx, ggml_sqr(ctx, x), c * 0.044715f, c);
    return ggml_div(ctx, ggml_silu(ctx, ggml_mul(ctx, x, v)), v);
}

/* tanh(x) = 1 - 2 sigmoid(-2x) = 1 - 2 exp(-softplus(2x)): exp only ever sees arguments <= 0, so neither
 * the value nor the gradient can overflow. */
static struct ggml_tensor * gmn_tanh(struct ggml_context * ctx, struct ggml_tensor * x) {
    struct ggml_tensor * e = ggml_exp(ctx, ggml_scale(ctx, ggml_softplus(ctx, ggml_scale(ctx, x, 2.0f)), -1.0f));
    return ggml_scale_bias(ctx, e, -2.0f, 1.0f);
}

/* An element-wise activation layer (relu, silu, gelu, tanh); x itself for any other kind. */
static struct ggml_tensor * gmn_activation(struct ggml_context * ctx, struct ggml_tensor * x, int kind) {
    switch (kind) {
        case GMN_LAYER_RELU: return ggml_relu(ctx, x);
        case GMN_LAYER_SILU: return ggml_silu(ctx, x);
        case GMN_LAYER_GELU: return gmn_gelu(ctx, x);
        case GMN_LAYER_TANH: return gmn_tanh(ctx, x);
        default:             return x;
    }
}

static struct ggml_tensor * gmn_pool(struct ggml_context * ctx, struct ggml_tensor * x, const struct gmn_layer * l) {
    return ggml_pool_2d(ctx, x, l->kind == GMN_LAYER_MAXPOOL2D ? GGML_OP_POOL_MAX : GGML_OP_POOL_AVG,
                        l->k, l->k, l->stride, l->stride, (float) l->pad, (float) l->pad);
}

/* The rows of a [C, M] activation that batch normalisation works on: k positions a row ([C*k, M/k], k a divisor of
 * M), as many as make rows of at most 1024 values, when C is below 128. ggml's element-wise ops pay per row, and a row
 * of 8 or 16 channels costs several times its work; the [C] vectors are tiled k times to meet the longer rows. */
static int64_t gmn_bn_fold(int64_t C, int64_t M) {
    int64_t k = 1;
    for (int64_t d = 2; C < 128 && d <= M && C * d <= 1024; d++) {
        if (M % d == 0) {
            k = d;
        }
    }
    return k;
}

/* Batch normalisation in training: x (channels or units along ne[0]: channels-last or flat) normalised per channel
 * with the batch's mean and biased variance over everything else, then scaled by weight lw[0] and shifted by bias
 * lw[1]. Composed of ops with a backward pass in ggml, each of which ggml-cuda runs forward and backward: the sums
 * over the batch are repeat_back onto a vector (backward: repeat); a vector meets the activations only as the second
 * operand of add or mul, whose backward passes sum the broadcast gradient (ggml's sub and div do not); the scale
 * weight / sqrt(var + eps) divides two vectors of one shape. As few nodes as that allows: ggml-opt's graphs hold 2048.
 * When stats is not NULL, the negated mean and var + eps pass through a copy into it (its first and second row), so
 * that the host can read them after the batch. */
static struct ggml_tensor * gmn_bn_train(struct ggml_context * ctx, struct ggml_tensor * x, struct ggml_tensor * const * lw,
                                         const struct gmn_layer * l, struct ggml_tensor * stats) {
    const int64_t C = x->ne[0], M = ggml_nelements(x) / C, k = gmn_bn_fold(C, M);
    struct ggml_tensor * x2 = ggml_reshape_2d(ctx, ggml_is_contiguous(x) ? x : ggml_cont(ctx, x), C * k, M / k);
    struct ggml_tensor * row = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, C * k); /* a shape only, never computed */
    /* the sum over the batch of a [C*k, M/k] tensor, as a [C] vector */
    #define GMN_BN_SUM(t) (k > 1 ? ggml_repeat_back(ctx, ggml_reshape_2d(ctx, ggml_repeat_back(ctx, (t), row), C, k), lw[0]) \
                                 : ggml_repeat_back(ctx, (t), lw[0]))
    /* a [C] vector tiled along a row */
    #define GMN_BN_ROW(v) (k > 1 ? ggml_repeat(ctx, (v), row) : (v))
    struct ggml_tensor * neg_mean = ggml_scale(ctx, GMN_BN_SUM(x2), -1.0f / (float) M);
    if (stats != NULL) {
        neg_mean = ggml_cpy(ctx, neg_mean, ggml_view_1d(ctx, stats, C, 0));
    }
    struct ggml_tensor * xc = ggml_add(ctx, x2, GMN_BN_ROW(neg_mean));
    struct ggml_tensor * var_eps = ggml_scale_bias(ctx, GMN_BN_SUM(ggml_sqr(ctx, xc)), 1.0f / (float) M, l->eps);
    if (stats != NULL) {
        var_eps = ggml_cpy(ctx, var_eps, ggml_view_1d(ctx, stats, C, (size_t) C * sizeof(float)));
    }
    struct ggml_tensor * a = ggml_div(ctx, lw[0], ggml_sqrt(ctx, var_eps));
    struct ggml_tensor * y = ggml_add(ctx, ggml_mul(ctx, xc, GMN_BN_ROW(a)), GMN_BN_ROW(lw[1]));
    #undef GMN_BN_SUM
    #undef GMN_BN_ROW
    return ggml_reshape(ctx, y, x);
}

/* Batch normalisation when predicting: x * a + b per channel with a = weight / sqrt(running_var + eps) and
 * b = bias - running_mean * a. The channels of x run along ne[cdim]: 0 (channels-last or flat) or 2 ([W, H, C, N]). */
static struct ggml_tensor * gmn_bn_predict(struct ggml_context * ctx, struct ggml_tensor * x, struct ggml_tensor * const * lw,
                                           const struct gmn_layer * l, int cdim) {
    struct ggml_tensor * a = ggml_div(ctx, lw[0], ggml_sqrt(ctx, ggml_scale_bias(ctx, lw[3], 1.0f, l->eps)));
    struct ggml_tensor * b = ggml_sub(ctx, lw[1], ggml_mul(ctx, lw[2], a));
    if (cdim == 2) {
        a = ggml_reshape_4d(ctx, a, 1, 1, a->ne[0], 1);
        b = ggml_reshape_4d(ctx, b, 1, 1, b->ne[0], 1);
    }
    return ggml_add(ctx, ggml_mul(ctx, ggml_is_contiguous(x) ? x : ggml_cont(ctx, x), a), b);
}

/* The end of a residual block: h (the body's output) plus its input x, projected when lw holds a projection (a 1x1
 * convolution lw[0] [1, 1, C, O] with the stride that gives h's size, or a dense layer lw[0] [C, O]) and its bias lw[1].
 * cf: channels-first [W, H, C, N] (prediction only); else channels-last [C, W, H, N] or flat [C, N]. */
static struct ggml_tensor * gmn_residual(struct ggml_context * ctx, struct ggml_tensor * h, struct ggml_tensor * x,
                                         struct ggml_tensor * const * lw, int spatial, int cf) {
    if (lw[0] == NULL) {
        return ggml_add(ctx, h, x);
    }
    struct ggml_tensor * y;
    if (!spatial) {
        y = ggml_add(ctx, ggml_mul_mat(ctx, lw[0], x), lw[1]);
    } else if (cf) {
        const struct gmn_layer one = { .kind = GMN_LAYER_CONV2D, .n_out = (int) lw[0]->ne[3], .k = 1, .pad = 0,
                                       .stride = gmn_residual_stride(x->ne[0], x->ne[1], h->ne[0], h->ne[1]) };
        y = ggml_add(ctx, gmn_conv2d(ctx, x, lw[0], &one), lw[1]);
    } else {
        const int s = gmn_residual_stride(x->ne[1], x->ne[2], h->ne[1], h->ne[2]);
        const int64_t C = x->ne[0], O = h->ne[0], P = ggml_nelements(h) / O;
        if (!ggml_is_contiguous(x)) {
            x = ggml_cont(ctx, x);
        }
        if (s > 1) { /* every s-th column and row */
            x = ggml_cont(ctx, ggml_view_4d(ctx, x, C, h->ne[1], h->ne[2], h->ne[3], x->nb[1] * s, x->nb[2] * s, x->nb[3], 0));
        }
        y = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, lw[0], C, O), ggml_reshape_2d(ctx, x, C, P));
        y = ggml_reshape(ctx, ggml_add(ctx, y, ggml_reshape_1d(ctx, lw[1], O)), h);
    }
    return ggml_add(ctx, h, y);
}

/* The channels (units) of batchnorm layer i's input and how many values of a batch of B images each one has. */
static void gmn_bn_counts(const struct gmn_net * net, int i, int64_t B, int64_t * C, int64_t * per) {
    int64_t ne[4];
    const int nd = gmn_net_activation_ne(net, i, B, ne);
    *C = nd == 4 ? ne[2] : ne[0];
    *per = nd == 4 ? ne[0] * ne[1] * B : B;
}

int gmn_net_train_inputs(const struct gmn_net * net, struct ggml_context * ctx, int64_t B, struct ggml_tensor ** masks) {
    for (int i = 0; i < net->n_layers; i++) {
        const struct gmn_layer * l = &net->layers[i];
        masks[i] = NULL;
        if (l->kind == GMN_LAYER_DROPOUT) {
            int64_t ne[4];
            const int nd = gmn_net_activation_ne(net, i, B, ne);
            masks[i] = ggml_new_tensor(ctx, GGML_TYPE_F32, nd, ne);
        } else if (l->kind == GMN_LAYER_BATCHNORM) {
            int64_t C, per;
            gmn_bn_counts(net, i, B, &C, &per);
            if (per < 2) {
                return gmn_fail(GMN_E_INVALID, "train: layer %d (batchnorm %s) normalises each unit over the %lld image%s of "
                                "a physical batch; batch statistics need at least 2 values: raise the physical batch size",
                                i, l->name, (long long) per, per == 1 ? "" : "s");
            }
            masks[i] = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, C, 2);
        }
    }
    return GMN_OK;
}

int gmn_net_update_running_stats(gmn_model * m, struct ggml_tensor * const * masks, int64_t B) {
    for (int i = 0; i < m->net.n_layers; i++) {
        const struct gmn_layer * l = &m->net.layers[i];
        if (l->kind != GMN_LAYER_BATCHNORM || masks[i] == NULL) {
            continue;
        }
        int64_t C, per;
        gmn_bn_counts(&m->net, i, B, &C, &per);
        float * v = malloc((size_t) (4 * C) * sizeof(float)); /* the batch's statistics, running mean, running var */
        if (v == NULL) {
            return gmn_fail(GMN_E_NOMEM, "train: out of memory for the running statistics");
        }
        ggml_backend_tensor_get(masks[i], v, 0, (size_t) (2 * C) * sizeof(float));
        ggml_backend_tensor_get(m->lw[i][2], v + 2 * C, 0, (size_t) C * sizeof(float));
        ggml_backend_tensor_get(m->lw[i][3], v + 3 * C, 0, (size_t) C * sizeof(float));
        const double mom = l->momentum, unbias = (double) per / (double) (per - 1);
        for (int64_t c = 0; c < C; c++) { /* the graph copied out -mean and var + eps */
            const double var = fmax((double) v[C + c] - (double) l->eps, 0.0);
            v[2 * C + c] = (float) ((1.0 - mom) * v[2 * C + c] - mom * v[c]);
            v[3 * C + c] = (float) ((1.0 - mom) * v[3 * C + c] + mom * var * unbias);
        }
        ggml_backend_tensor_set(m->lw[i][2], v + 2 * C, 0, (size_t) C * sizeof(float));
        ggml_backend_tensor_set(m->lw[i][3], v + 3 * C, 0, (size_t) C * sizeof(float));
        free(v);
    }
    return GMN_OK;
}

struct ggml_tensor * gmn_forward(const gmn_model * m, struct ggml_context * ctx, struct ggml_tensor * x,
                                 struct ggml_tensor * const * masks, struct gmn_consts * consts) {
    return gmn_forward_layers(m, ctx, x, masks, m->net.n_layers, consts);
}

/* ---- channels-last forward graph (CPU) ------------------------------------------------------------ */
/* [W, H, C, N] <-> [C, W, H, N] */
static struct ggml_tensor * gmn_to_cl(struct ggml_context * ctx, struct ggml_tensor * x) {
    return x->ne[2] == 1 ? ggml_reshape_4d(ctx, x, 1, x->ne[0], x->ne[1], x->ne[3]) : gmn_cl_relayout(ctx, x, 0);
}

static struct ggml_tensor * gmn_to_cf(struct ggml_context * ctx, struct ggml_tensor * x) {
    return x->ne[0] == 1 ? ggml_reshape_4d(ctx, x, x->ne[1], x->ne[2], 1, x->ne[3]) : gmn_cl_relayout(ctx, x, 1);
}

/* The same network as gmn_forward_layers computes, with the spatial activations channels-last [C, W, H, N]:
 * - a convolution is one matrix product of the kernel (permuted to [C*k*k, O]) with the gathered columns,
 *   giving [O, OW*OH*N] directly; the columns of an input that needs no gradient (the images) come from a
 *   multi-threaded im2col op, the others from get_rows, whose backward pass is a cheap scatter-add (ggml's
 *   im2col_back, its alternative, is slow);
 * - max pooling is get_rows of the elements an argmax op picks, so its backward pass is a scatter too;
 * - average pooling is the gathered window times a constant averaging matrix;
 * - a dense layer reads the channels-fastest flattening of the GGUF contract with no permutation at all. */
static struct ggml_tensor * gmn_forward_cl(const gmn_model * m, struct ggml_context * ctx, struct ggml_tensor * x,
                                           struct ggml_tensor * const * masks, int n_layers) {
    const struct gmn_net * net = &m->net;
    struct ggml_tensor * h = ggml_reshape_4d(ctx, x, 1, net->image_w, net->image_h, x->ne[1]);
    const int training = masks != NULL; /* the training graph passes its (possibly empty) mask array */
    int spatial = 1, needs_grad = 0;
    int pooled = -1;
    struct ggml_tensor * ins[GMN_MAX_LAYERS]; /* the input of each layer, for the residual blocks that start there */
    for (int i = 0; i < n_layers; i++) {
        const struct gmn_layer * l = &net->layers[i];
        ins[i] = h;
        switch (l->kind) {
            case GMN_LAYER_CONV2D: {
                const int64_t C = h->ne[0], O = l->n_out;
                const int64_t OW = gmn_out_side(h->ne[1], l), OH = gmn_out_side(h->ne[2], l);
                const int64_t K = C * l->k * l->k;
                /* The shim's matrix product takes any shape; where ggml runs the product instead, its fast f32 one
                 * (llamafile's) takes only row lengths that are a multiple of 8: the im2col op can pad its columns
                 * with zeros for free, and the kernel gets zero rows to match. Zero terms at the end of each sum
                 * change no bit of the product. */
                const int64_t P = OW * OH * h->ne[3];
                int64_t Kp = gmn_plan_rows(&m->plan, K, P);
                int extra = 0; /* gathered columns grow by whole rows of C: the fewest that make K a multiple of 8 */
                if (needs_grad && Kp > K) {
                    int e = 1;
                    while ((K + C * e) % 8 != 0 && e < 8) {
                        e++;
                    }
                    const int pays = (K + C * e) % 8 == 0 && C * e <= K / 4; /* at most a quarter more work */
                    extra = pays ? e : 0;
                    Kp = K + C * extra;
                }
                /* (needs_grad is only ever set in the training graph) */
                struct ggml_tensor * cols = needs_grad ? gmn_cl_gather_cols(ctx, h, l->k, l->stride, l->pad, extra)
                                                       : gmn_cl_im2col(ctx, h, l->k, l->stride, l->pad, Kp);
                struct ggml_tensor * w = m->lw[i][0]; /* [k, k, C, O] */
                if (C > 1) {
                    w = gmn_cl_relayout(ctx, w, 0); /* [C, k, k, O], with a contiguous gradient (a permute has none) */
                }
                w = ggml_reshape_2d(ctx, w, K, O);
                /* and only a multiple of 4 outputs (ggml's dot product runs the rest, one output at a time: 9 % of a
                 * lenet5 epoch for its 6 channels): zero output channels, dropped after the product */
                const int64_t Op = gmn_plan_outputs(&m->plan, O, P);
                if (Kp > K || Op > O) {
                    w = gmn_cl_pad(ctx, w, Kp, Op);
                }
                struct ggml_tensor * y = ggml_mul_mat(ctx, w, cols);
                if (Op > O) {
                    y = gmn_cl_first_outputs(ctx, y, O);
                }
                h = ggml_reshape_4d(ctx, y, O, OW, OH, h->ne[3]);
                const int pool = gmn_pool_first(net, i);
                if (pool >= 0 && pool < n_layers) {
                    const struct gmn_layer * pl = &net->layers[pool];
                    h = gmn_cl_maxpool(ctx, h, pl->k, pl->stride, pl->pad, training);
                    pooled = pool;
                }
                h = ggml_add(ctx, h, ggml_reshape_1d(ctx, m->lw[i][1], O));
                needs_grad = training;
                break;
            }
            case GMN_LAYER_MAXPOOL2D:
                if (i != pooled) {
                    h = gmn_cl_maxpool(ctx, h, l->k, l->stride, l->pad, needs_grad);
                }
                break;
            case GMN_LAYER_AVGPOOL2D: {
                const int64_t OW = gmn_out_side(h->ne[1], l), OH = gmn_out_side(h->ne[2], l);
                h = gmn_cl_avgpool(ctx, h, l->k, l->stride, l->pad, needs_grad, gmn_plan_outputs(&m->plan, h->ne[0], OW * OH * h->ne[3]));
                break;
            }
            case GMN_LAYER_DENSE:
                if (spatial) {
                    /* channels-last is the contract's flattening: the weight applies as it is */
                    h = ggml_reshape_2d(ctx, h, h->ne[0] * h->ne[1] * h->ne[2], h->ne[3]);
                    h = m->lw[i][0]->type == GGML_TYPE_F32 ? ggml_add(ctx, ggml_mul_mat(ctx, m->lw[i][0], h), m->lw[i][1])
                                                           : gmn_dense(ctx, h, m->lw[i][0], m->lw[i][1], 0);
                } else {
                    h = gmn_dense(ctx, h, m->lw[i][0], m->lw[i][1], spatial);
                }
                spatial = 0;
                needs_grad = training;
                break;
            case GMN_LAYER_DROPOUT:
                if (masks != NULL && masks[i] != NULL) {
                    /* masks are laid out channels-first, like the activations gmn_model_dropout_mask reports */
                    h = ggml_mul(ctx, h, spatial ? gmn_to_cl(ctx, masks[i]) : masks[i]);
                }
                break;
            case GMN_LAYER_BATCHNORM:
                h = training ? gmn_bn_train(ctx, h, m->lw[i], l, masks[i]) : gmn_bn_predict(ctx, h, m->lw[i], l, 0);
                needs_grad = training;
                break;
            case GMN_LAYER_RESIDUAL:
                h = gmn_residual(ctx, h, ins[i - l->body], m->lw[i], spatial, 0);
                needs_grad = training;
                break;
            default:
                if (training && (l->kind == GMN_LAYER_TANH || l->kind == GMN_LAYER_GELU) && ggml_is_contiguous(h)) {
                    h = gmn_cl_act_linearized(ctx, h, l->kind);
                } else {
                    h = gmn_activation(ctx, h, l->kind);
                }
                break;
        }
    }
    return spatial ? gmn_to_cf(ctx, h) : h;
}

/* ---- portable forward graph (ggml's ops only) ---------------------------------------------------------- */
/* The same network with ggml ops that ggml's GPU backends run forward and backward: no custom op, no im2col or
 * pool_2d (whose backward passes run on the CPU only). Activations are channels-last [C, W, H, N], like the CPU
 * graph, and every window is gathered with get_rows through an index table computed here once per graph:
 * - a convolution gathers rows of C channels into im2col columns [C*k*k, OW*OH*N] (padding reads a zero row
 *   appended with set_1d) and multiplies them by the kernel permuted to [C*k*k, O];
 * - max pooling gathers each window's elements [k*k, C*OW*OH*N] (padding repeats a pixel of the window, which
 *   cannot change its maximum), takes argmax, looks the winner's index up in the same table (get_rows of I32),
 *   and gathers the winners, so its backward pass is one scatter (get_rows_back);
 * - average pooling gathers each window's elements with zeros for padding and sums them (sum_rows, scale). */
struct gmn_window_idx {
    int64_t W, H, N, OW, OH;
    int     k, s, p;
};

static int64_t gmn_pt_out(int64_t side, int k, int s, int p) {
    return (side + 2 * p - k) / s + 1;
}

/* Pixel (x, y, n) of window tap (kx, ky) at output (ox, oy), or -1 in the padding. */
static int64_t gmn_pt_pixel(const struct gmn_window_idx * w, int64_t ox, int64_t oy, int64_t n, int kx, int ky) {
    const int64_t ix = ox * w->s - w->p + kx, iy = oy * w->s - w->p + ky;
    return ix < 0 || iy < 0 || ix >= w->W || iy >= w->H ? -1 : ix + w->W * (iy + w->H * n);
}

/* An I32 table of n entries, or NULL (consts->error set) when n does not fit the int32 indices get_rows takes. */
static int32_t * gmn_pt_table(struct gmn_consts * c, int64_t n, int64_t largest, struct ggml_tensor ** t) {
    void * data = NULL;
    *t = NULL;
    if (largest >= INT32_MAX || n >= INT32_MAX) {
        if (c->error[0] == '\0') {
            snprintf(c->error, sizeof(c->error), "the portable graph indexes at most 2^31 elements per layer, and this "
                     "batch needs %lld", (long long) (n > largest ? n : largest));
        }
        return NULL;
    }
    *t = gmn_consts_new(c, GGML_TYPE_I32, n, &data);
    return data;
}

static struct ggml_tensor * gmn_pt_contiguous(struct ggml_context * ctx, struct ggml_tensor * x) {
    return ggml_is_contiguous(x) ? x : ggml_cont(ctx, x);
}

/* x with one more row of zeros, [C, rows + 1] (x is [C, rows]); the zeros are a constant, so the gradient
 * reaches x through set_1d unchanged. */
static struct ggml_tensor * gmn_pt_zero_row(struct ggml_context * ctx, struct gmn_consts * c, struct ggml_tensor * x2) {
    void * data = NULL;
    struct ggml_tensor * z = gmn_consts_new(c, GGML_TYPE_F32, x2->ne[0] * (x2->ne[1] + 1), &data);
    if (z == NULL) {
        return x2;
    }
    struct ggml_tensor * y = ggml_set_1d(ctx, z, ggml_reshape_1d(ctx, x2, ggml_nelements(x2)), 0);
    return ggml_reshape_2d(ctx, y, x2->ne[0], x2->ne[1] + 1);
}

static struct ggml_tensor * gmn_pt_conv(struct ggml_context * ctx, struct gmn_consts * c, struct ggml_tensor * h,
                                        struct ggml_tensor * kernel, const struct gmn_layer * l) {
    const int64_t C = h->ne[0];
    const struct gmn_window_idx w = { h->ne[1], h->ne[2], h->ne[3], gmn_pt_out(h->ne[1], l->k, l->stride, l->pad),
                                      gmn_pt_out(h->ne[2], l->k, l->stride, l->pad), l->k, l->stride, l->pad };
    const int64_t KK = (int64_t) l->k * l->k, P = w.OW * w.OH * w.N, rows = w.W * w.H * w.N;
    struct ggml_tensor * src = ggml_reshape_2d(ctx, gmn_pt_contiguous(ctx, h), C, rows);
    if (l->pad > 0) {
        src = gmn_pt_zero_row(ctx, c, src);
    }
    struct ggml_tensor * idx;
    int32_t * t = gmn_pt_table(c, KK * P, rows * C, &idx);
    if (t == NULL) {
        return ggml_new_tensor_4d(ctx, GGML_TYPE_F32, l->n_out, w.OW, w.OH, w.N); /* unusable: consts->error says why */
    }
    for (int64_t n = 0, p = 0; n < w.N; n++) {
        for (int64_t oy = 0; oy < w.OH; oy++) {
            for (int64_t ox = 0; ox < w.OW; ox++, p++) {
                for (int ky = 0; ky < l->k; ky++) {
                    for (int kx = 0; kx < l->k; kx++) {
                        const int64_t px = gmn_pt_pixel(&w, ox, oy, n, kx, ky);
                        t[p * KK + ky * l->k + kx] = (int32_t) (px < 0 ? rows : px);
                    }
                }
            }
        }
    }
    struct ggml_tensor * cols = ggml_reshape_2d(ctx, ggml_get_rows(ctx, src, idx), C * KK, P);
    struct ggml_tensor * k2 = kernel; /* [k, k, C, O] as [C, k, k, O]: gathered, so that its gradient is contiguous (a
                                       * permute's is a strided view, which the optimizer step reads as if it were not) */
    if (C > 1) {
        struct ggml_tensor * perm;
        int32_t * pt = gmn_pt_table(c, C * KK * l->n_out, C * KK * l->n_out, &perm);
        if (pt != NULL) {
            for (int64_t o = 0, j = 0; o < l->n_out; o++) {
                for (int64_t tap = 0; tap < KK; tap++) {
                    for (int64_t ch = 0; ch < C; ch++, j++) {
                        pt[j] = (int32_t) (tap + KK * (ch + C * o));
                    }
                }
            }
            k2 = ggml_get_rows(ctx, ggml_reshape_2d(ctx, kernel, 1, C * KK * l->n_out), perm);
        }
    }
    struct ggml_tensor * y = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, k2, C * KK, l->n_out), cols);
    return ggml_reshape_4d(ctx, y, l->n_out, w.OW, w.OH, w.N);
}

static struct ggml_tensor * gmn_pt_pool(struct ggml_context * ctx, struct gmn_consts * c, struct ggml_tensor * h,
                                        const struct gmn_layer * l) {
    const int64_t C = h->ne[0];
    const struct gmn_window_idx w = { h->ne[1], h->ne[2], h->ne[3], gmn_pt_out(h->ne[1], l->k, l->stride, l->pad),
                                      gmn_pt_out(h->ne[2], l->k, l->stride, l->pad), l->k, l->stride, l->pad };
    const int64_t KK = (int64_t) l->k * l->k, CP = C * w.OW * w.OH * w.N, M = ggml_nelements(h);
    const int max = l->kind == GMN_LAYER_MAXPOOL2D;
    struct ggml_tensor * src = ggml_reshape_2d(ctx, gmn_pt_contiguous(ctx, h), 1, M);
    if (!max && l->pad > 0) {
        src = gmn_pt_zero_row(ctx, c, src);
    }
    struct ggml_tensor * idx;
    int32_t * t = gmn_pt_table(c, KK * CP, M, &idx);
    if (t == NULL) {
        return ggml_new_tensor_4d(ctx, GGML_TYPE_F32, C, w.OW, w.OH, w.N);
    }
    for (int64_t n = 0, q = 0; n < w.N; n++) {
        for (int64_t oy = 0; oy < w.OH; oy++) {
            for (int64_t ox = 0; ox < w.OW; ox++) {
                int64_t first = -1; /* a pixel of the window: every window holds one (padding < window) */
                for (int tap = 0; tap < KK && first < 0; tap++) {
                    first = gmn_pt_pixel(&w, ox, oy, n, tap % l->k, tap / l->k);
                }
                for (int64_t ch = 0; ch < C; ch++, q++) {
                    for (int tap = 0; tap < KK; tap++) {
                        const int64_t px = gmn_pt_pixel(&w, ox, oy, n, tap % l->k, tap / l->k);
                        const int64_t e = px >= 0 ? ch + C * px : (max ? ch + C * first : M);
                        t[q * KK + tap] = (int32_t) e;
                    }
                }
            }
        }
    }
    struct ggml_tensor * win = ggml_reshape_2d(ctx, ggml_get_rows(ctx, src, idx), KK, CP);
    struct ggml_tensor * y;
    if (max) {
        struct ggml_tensor * tap = ggml_reshape_2d(ctx, ggml_argmax(ctx, win), 1, CP);
        struct ggml_tensor * at = ggml_get_rows(ctx, ggml_reshape_3d(ctx, idx, 1, KK, CP), tap); /* [1, 1, CP] I32 */
        y = ggml_get_rows(ctx, src, ggml_reshape_1d(ctx, at, CP));
    } else {
        y = ggml_scale(ctx, ggml_sum_rows(ctx, win), 1.0f / (float) KK);
    }
    return ggml_reshape_4d(ctx, y, C, w.OW, w.OH, w.N);
}


/* [C, W, H, N] <-> [W, H, C, N] with ggml's permute (its gradient is a permute too) */
static struct ggml_tensor * gmn_pt_to_cf(struct ggml_context * ctx, struct ggml_tensor * x) {
    return ggml_cont(ctx, ggml_permute(ctx, x, 2, 0, 1, 3));
}

static struct ggml_tensor * gmn_pt_to_cl(struct ggml_context * ctx, struct ggml_tensor * x) {
    return ggml_cont(ctx, ggml_permute(ctx, x, 1, 2, 0, 3));
}

static struct ggml_tensor * gmn_forward_portable(const gmn_model * m, struct ggml_context * ctx, struct ggml_tensor * x,
                                                 struct ggml_tensor * const * masks, int n_layers, struct gmn_consts * c) {
    const struct gmn_net * net = &m->net;
    struct ggml_tensor * h = ggml_reshape_4d(ctx, x, 1, net->image_w, net->image_h, x->ne[1]);
    int spatial = 1;
    int pooled = -1;
    struct ggml_tensor * ins[GMN_MAX_LAYERS]; /* the input of each layer, for the residual blocks that start there */
    for (int i = 0; i < n_layers; i++) {
        const struct gmn_layer * l = &net->layers[i];
        ins[i] = h;
        switch (l->kind) {
            case GMN_LAYER_CONV2D: {
                h = gmn_pt_conv(ctx, c, h, m->lw[i][0], l);
                const int pool = gmn_pool_first(net, i);
                if (pool >= 0 && pool < n_layers) {
                    h = gmn_pt_pool(ctx, c, h, &net->layers[pool]);
                    pooled = pool;
                }
                /* the bias added to a 2-D view: its gradient is then a repeat_back of a 2-D tensor, which ggml-cuda runs
                 * for any batch (it takes a 4-D one only while ne2 * ne3 <= 32768) */
                const int64_t ne[4] = { h->ne[0], h->ne[1], h->ne[2], h->ne[3] };
                h = ggml_add(ctx, ggml_reshape_2d(ctx, h, ne[0], ne[1] * ne[2] * ne[3]),
                             ggml_reshape_1d(ctx, m->lw[i][1], l->n_out));
                h = ggml_reshape_4d(ctx, h, ne[0], ne[1], ne[2], ne[3]);
                break;
            }
            case GMN_LAYER_MAXPOOL2D:
            case GMN_LAYER_AVGPOOL2D:
                if (i != pooled) {
                    h = gmn_pt_pool(ctx, c, h, l);
                }
                break;
            case GMN_LAYER_DENSE:
                if (spatial) { /* channels-last is the contract's flattening: the weight applies as it is */
                    h = ggml_reshape_2d(ctx, gmn_pt_contiguous(ctx, h), h->ne[0] * h->ne[1] * h->ne[2], h->ne[3]);
                }
                h = gmn_dense(ctx, h, m->lw[i][0], m->lw[i][1], 0);
                spatial = 0;
                break;
            case GMN_LAYER_DROPOUT:
                if (masks != NULL && masks[i] != NULL) { /* masks are channels-first, as gmn_model_dropout_mask reports */
                    h = ggml_mul(ctx, h, spatial ? gmn_pt_to_cl(ctx, masks[i]) : masks[i]);
                }
                break;
            case GMN_LAYER_BATCHNORM:
                h = masks != NULL ? gmn_bn_train(ctx, h, m->lw[i], l, masks[i]) : gmn_bn_predict(ctx, h, m->lw[i], l, 0);
                break;
            case GMN_LAYER_RESIDUAL:
                h = gmn_residual(ctx, h, ins[i - l->body], m->lw[i], spatial, 0);
                break;
            default:
                h = gmn_activation(ctx, h, l->kind);
                break;
        }
    }
    return spatial ? gmn_pt_to_cf(ctx, h) : h;
}

struct ggml_tensor * gmn_forward_layers(const gmn_model * m, struct ggml_context * ctx, struct ggml_tensor * x,
                                        struct ggml_tensor * const * masks, int n_layers, struct gmn_consts * consts) {
    if (m->plan.graph == GMN_GRAPH_CPU) {
        return gmn_forward_cl(m, ctx, x, masks, n_layers);
    }
    for (int i = 0; i < m->net.n_layers && consts != NULL; i++) {
        if (m->net.layers[i].kind == GMN_LAYER_CONV2D && m->lw[i][0]->type != GGML_TYPE_F32) {
            consts = NULL; /* quantised kernels (prediction only): ggml's im2col and pool_2d run forward anywhere */
        }
    }
    if (consts != NULL) {
        return gmn_forward_portable(m, ctx, x, masks, n_layers, consts);
    }
    const struct gmn_net * net = &m->net;
    struct ggml_tensor * h = ggml_reshape_4d(ctx, x, net->image_w, net->image_h, 1, x->ne[1]);
    int spatial = 1;
    int pooled = -1; /* a max-pool layer already applied ahead of its turn */
    struct ggml_tensor * ins[GMN_MAX_LAYERS]; /* the input of each layer, for the residual blocks that start there */
    for (int i = 0; i < n_layers; i++) {
        const struct gmn_layer * l = &net->layers[i];
        ins[i] = h;
        switch (l->kind) {
            case GMN_LAYER_CONV2D: {
                h = gmn_conv2d(ctx, h, m->lw[i][0], l);
                const int pool = gmn_pool_first(net, i);
                if (pool >= 0 && pool < n_layers) {
                    h = gmn_pool(ctx, h, &net->layers[pool]);
                    pooled = pool;
                }
                h = ggml_add(ctx, h, m->lw[i][1]);
                break;
            }
            case GMN_LAYER_MAXPOOL2D:
            case GMN_LAYER_AVGPOOL2D:
                if (i != pooled) {
                    h = gmn_pool(ctx, h, l);
                }
                break;
            case GMN_LAYER_DENSE:
                h = gmn_dense(ctx, h, m->lw[i][0], m->lw[i][1], spatial);
                spatial = 0;
                break;
            case GMN_LAYER_DROPOUT:
                if (masks != NULL && masks[i] != NULL) {
                    h = ggml_mul(ctx, h, masks[i]);
                }
                break;
            case GMN_LAYER_BATCHNORM: /* this form only predicts (quantised kernels cannot be trained) */
                h = gmn_bn_predict(ctx, h, m->lw[i], l, spatial ? 2 : 0);
                break;
            case GMN_LAYER_RESIDUAL:
                h = gmn_residual(ctx, h, ins[i - l->body], m->lw[i], spatial, 1);
                break;
            default:
                h = gmn_activation(ctx, h, l->kind);
                break;
        }
    }
    return h;
}
