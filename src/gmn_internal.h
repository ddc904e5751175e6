/* gmn_internal.h - structures and helpers shared by the shim's source files (not part of the API). */
#ifndef GMN_INTERNAL_H
#define GMN_INTERNAL_H

#include "ggml_mnist.h"

#include <stdio.h>
#include <string.h>

#include "ggml.h"
#include "gguf.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-opt.h"

#include "cpu/gmn_cpu.h"

#define GMN_MAX_TENSORS   (4 * GMN_MAX_LAYERS) /* a batchnorm layer has four */
#define GMN_LAYER_TENSORS 4
#define GMN_MAX_ACCEL     4
#define GMN_EVAL_BATCH    1000
#define GMN_SMALL_BATCH   64   /* prediction batches below this run on one CPU thread */
#define GMN_META_PREFIX   "ggml_mnist."
#define GMN_ARCH_MNIST_FC  "mnist-fc"   /* ggml's example networks, byte-compatible with its mnist-eval */
#define GMN_ARCH_MNIST_CNN "mnist-cnn"
#define GMN_ARCH_OWN       "ggml-mnist" /* every other network: the layer list is stored in the file */

/* Output of a layer: width, height, channels (units when flat), flat after a dense layer, parameters. */
struct gmn_shape {
    int64_t w, h, c;
    int     flat;
    int64_t params;
};

/* What a parameter tensor may be stored as: f32 only (biases, which are added), or also f16 and ggml's block types
 * (conv kernels and dense weights, whose rows of fan_in values meet the layer's inputs in a matrix product). */
enum gmn_store { GMN_STORE_F32 = 0, GMN_STORE_ANY = 1 };

/* How a new model fills a tensor: PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from the seed, or a constant. */
enum gmn_init { GMN_INIT_UNIFORM = 0, GMN_INIT_ZEROS = 1, GMN_INIT_ONES = 2 };

/* One tensor of a network: its layer, which of the layer's tensors (0 weight or kernel, 1 bias, 2 running mean,
 * 3 running variance), GGUF name, ggml shape, fan-in, storage, whether the optimizer trains it (running statistics
 * are not trained: no gradient, no optimizer step, no weight decay, no moments) and its initial values. */
struct gmn_param_spec {
    int     layer;
    int     which;
    char    name[GGML_MAX_NAME];
    int64_t ne[4];
    int64_t fan_in;
    int     store;     /* enum gmn_store */
    int     trainable;
    int     init;      /* enum gmn_init */
};

/* How a parameter tensor is held: its ggml type and shape. f32 and f16 tensors have the network's shape; a block-type
 * tensor is a matrix [fan_in, rows], its rows optionally zero-padded to whole blocks (and a kernel [k, k, C, O]
 * flattened to [k*k*C, O], the order of its values unchanged). */
struct gmn_storage {
    enum ggml_type type;
    int64_t        ne[4];
};

struct gmn_dataset {
    int64_t   n;
    int64_t   n_pixels;
    int       n_classes;
    uint8_t * images;  /* n * n_pixels */
    int32_t * labels;  /* n */
};

struct gmn_train_state;
struct gmn_optstate;
struct gmn_opt_tracker;

/* The backend plan (gmn_plan.c): every choice that depends on the devices a model runs on, made once when the
 * model is created or its graph form chosen. The network builder reads it and never asks about backends. */
struct gmn_plan {
    int     graph;            /* GMN_GRAPH_CPU or GMN_GRAPH_PORTABLE */
    int     kernels;          /* the shim's CPU kernels take nodes (CPU graph, no accelerator, version gate passed) */
    int     accel_products;   /* an accelerator beside the CPU (BLAS) runs the matrix products */
    int     llamafile;        /* ggml's CPU products run llamafile's sgemm */
    char    why[200];         /* why kernels is 0 */
    int64_t taken[GMN_KERNEL_COUNT];       /* nodes each kernel took in the prediction graph */
    char    ops[2048];                     /* ops of the prediction graph, space-separated and sorted */
    int64_t train_taken[GMN_KERNEL_COUNT]; /* the same of the training graphs (forward, backward, step) */
    char    train_ops[2048];
};
int     gmn_plan_init(gmn_model * model, int asked);
/* Whether ggml (not the shim's kernel) runs a matrix product with P columns. */
int     gmn_plan_ggml_product(const struct gmn_plan * plan, int64_t P);
/* Row length K of a product's operands, padded with zeros to what ggml's product wants (llamafile: a multiple of 8). */
int64_t gmn_plan_rows(const struct gmn_plan * plan, int64_t K, int64_t P);
/* Outputs n of a product, padded to what ggml's product wants (llamafile: a multiple of 4; its dot product runs the
 * rest one output at a time). */
int64_t gmn_plan_outputs(const struct gmn_plan * plan, int64_t n, int64_t P);
/* Record the ops of graph g as the plan's prediction (or training) ops, and zero that graph's kernel counters. */
void    gmn_plan_record_ops(struct gmn_plan * plan, const struct ggml_cgraph * g, int training);

/* Constant tensors of a graph (index tables, zeros), computed on the host while the graph is built and uploaded
 * to the model's device once (gmn_consts.c). */
#define GMN_MAX_CONSTS (4 * GMN_MAX_LAYERS)
struct gmn_consts {
    struct ggml_context * ctx;
    ggml_backend_buffer_t buf;
    int                   n;
    struct ggml_tensor  * t[GMN_MAX_CONSTS];
    void                * host[GMN_MAX_CONSTS];
    char                  error[200]; /* set when a constant could not be made; the graph is then unusable */
};
int  gmn_consts_init(struct gmn_consts * c);
/* A new 1-D constant of n elements of type (F32 or I32) whose host data (zeroed) the caller fills through *data;
 * NULL with c->error set when it cannot be made. */
struct ggml_tensor * gmn_consts_new(struct gmn_consts * c, enum ggml_type type, int64_t n, void ** data);
/* Allocate the constants on backend, copy their data there and free the host copies; GMN_E_NOMEM on failure. */
int  gmn_consts_upload(struct gmn_consts * c, ggml_backend_t backend, const char * what);
void gmn_consts_free(struct gmn_consts * c);

struct gmn_model {
    struct gmn_net   net;                     /* net.layers points at layers */
    struct gmn_layer layers[GMN_MAX_LAYERS];
    int              n_classes;

    ggml_backend_dev_t   dev;
    ggml_backend_t       backend;     /* the chosen device */
    ggml_backend_t       backend_cpu; /* NULL when backend is the CPU */
    ggml_backend_t       backend_accel[GMN_MAX_ACCEL]; /* e.g. BLAS, used alongside the CPU */
    int                  n_accel;
    int                  n_threads;

    struct ggml_context * ctx_w;      /* parameter tensors, allocated in buf_w */
    ggml_backend_buffer_t buf_w;
    struct ggml_tensor  * w[GMN_MAX_TENSORS]; /* every tensor of the network (parameters and running statistics), in layer order */
    int                   n_w;
    unsigned char         trainable[GMN_MAX_TENSORS]; /* per w: 1 for a parameter the optimizer trains */
    struct ggml_tensor  * lw[GMN_MAX_LAYERS][GMN_LAYER_TENSORS]; /* per layer: weight (or kernel), bias, running mean
                                                                   * and variance (batchnorm); NULL without */

    /* forward graph for prediction, rebuilt when the batch size changes */
    ggml_backend_sched_t  sched_eval;
    struct ggml_context * ctx_eval;
    struct ggml_cgraph  * gf_eval;
    struct ggml_tensor  * eval_in;
    struct ggml_tensor  * eval_out;
    int64_t               eval_batch;
    float               * eval_buf;   /* eval_batch * n_pixels staging floats */

    struct gmn_consts     eval_consts;

    struct gmn_plan          plan;
    struct gmn_train_state * train;   /* training state, or NULL (gmn_train.c) */
    int                      diverged;
    struct gmn_optstate    * opt;     /* optimizer state saved with the model, or NULL (gmn_optstate.c) */
    int                      opt_stale; /* 1: the weights changed after opt was taken (a training batch, set_tensor), so
                                         * opt belongs to other weights: save leaves it out, and resume refuses it */
    /* How gmn_model_free frees train and opt: set by the files above this one that attach them, so that the model
     * file calls none of them. */
    void (*train_free)(struct gmn_train_state * st);
    void (*opt_free)(struct gmn_optstate * os);

    int    n_meta;
    char ** meta_keys;
    char ** meta_values;
};

/* Record a formatted error for gmn_last_error() and return status. */
int  gmn_fail(int status, const char * fmt, ...);
/* Clear the thread's last error. */
void gmn_clear_error(void);
/* Send a formatted line to the log sink. */
void gmn_log(int level, const char * fmt, ...);
/* Install the shim's log sink into ggml once per process. */
void gmn_ensure_init(void);

/* Pixels / 255 as floats. */
void gmn_u8_to_f32(float * dst, const uint8_t * src, int64_t n);

/* Deterministic PRNG (splitmix64 seeding, xoshiro256**). */
struct gmn_rng { uint64_t s[4]; };
void     gmn_rng_seed(struct gmn_rng * rng, uint64_t seed);
uint64_t gmn_rng_next(struct gmn_rng * rng);
double   gmn_rng_uniform(struct gmn_rng * rng); /* [0, 1) */

/* Augmentation (gmn_augment.c): a workspace sized for one image, and one image augmented with rng. */
/* src: the image with a zero border; grid: elastic control points; rows, disp: the elastic field along the
 * control rows, then at every pixel (x displacements, then y) */
struct gmn_aug_ws { float * src; float * grid; float * rows; float * disp; };
int  gmn_augment_active(const struct gmn_augment * aug);
int  gmn_aug_ws_init(struct gmn_aug_ws * ws, const struct gmn_augment * aug, int h, int w);
void gmn_aug_ws_free(struct gmn_aug_ws * ws);
/* Image number index of a stream seeded with seed gets its own generator: order and threads do not matter. */
uint64_t gmn_augment_image_seed(uint64_t seed, uint64_t index);
void gmn_augment_one(const struct gmn_augment * aug, uint64_t image_seed, struct gmn_aug_ws * ws, const uint8_t * img,
                     int h, int w, float * out);

/* Bytes this process can still allocate on the host: MemAvailable, capped by RLIMIT_AS headroom. */
uint64_t gmn_host_memory_available(void);
/* Refuse (GMN_E_NOMEM) a graph ending in out whose node data times factor would not fit in the
 * device's available memory: ggml aborts or crashes when a compute buffer cannot be allocated. */
int  gmn_check_graph_memory(ggml_backend_dev_t dev, struct ggml_tensor * out, double factor, const char * what, int64_t batch);

/* Set a backend's thread count through its registry (backends without one keep theirs). */
void gmn_backend_set_threads(ggml_backend_t backend, int n_threads);

/* Resolve a device name ("auto", "cpu", ggml device name, case-insensitive). */
int  gmn_find_device(const char * name, ggml_backend_dev_t * out);

/* Networks (gmn_net.c). */
int  gmn_layer_kind_from_name(const char * name); /* 0 when unknown */
int  gmn_layer_has_params(int kind);
/* Validate net, copy its layers into out with empty names filled in, and infer each layer's output shape
 * (shapes and n_params may be NULL). */
int  gmn_net_prepare(const struct gmn_net * net, struct gmn_layer * out, struct gmn_shape * shapes, int64_t * n_params);
int  gmn_net_classes(const struct gmn_net * net);
/* 1 when the prepared net equals preset `name` for n_classes classes. */
int  gmn_net_is_preset(const struct gmn_net * net, const char * name, int n_classes);
/* general.architecture for a prepared net: ggml's names for exactly its two networks at 28x28, else ours. */
const char * gmn_net_arch_name(const struct gmn_net * net);
/* Parameter tensors of a prepared net in layer order; returns their count (<= GMN_MAX_TENSORS). */
int  gmn_net_params(const struct gmn_net * net, struct gmn_param_spec * specs);
/* ggml shape (ne) of the activation entering layer `layer` for a batch; returns its dimensions (2 or 4). */
int  gmn_net_activation_ne(const struct gmn_net * net, int layer, int64_t batch, int64_t * ne);
/* The training graph's per-layer tensors for physical batches of B images, new in ctx (masks: GMN_MAX_LAYERS, NULL
 * for the other layers): a dropout layer's mask (the shape of its input, channels-first) and a batchnorm layer's
 * statistics [C, 2] (-mean, then biased variance + eps). GMN_E_INVALID when a batchnorm layer would see fewer than two
 * values per channel. */
int  gmn_net_train_inputs(const struct gmn_net * net, struct ggml_context * ctx, int64_t B, struct ggml_tensor ** masks);
/* After a training batch of B images: moves each batchnorm layer's running statistics towards the batch statistics
 * its masks[i] holds (PyTorch's update, with the unbiased variance). */
int  gmn_net_update_running_stats(gmn_model * model, struct ggml_tensor * const * masks, int64_t B);
/* Logits [n_classes, N] of images x [pixels, N]. masks: the training graph's per-layer tensors from
 * gmn_net_train_inputs (NULL: the prediction graph): masks[i] multiplies the input of dropout layer i, and batchnorm
 * layer i writes its batch statistics into masks[i] (when not NULL) as the graph runs. */
struct ggml_tensor * gmn_forward(const gmn_model * model, struct ggml_context * ctx, struct ggml_tensor * x,
                                 struct ggml_tensor * const * masks, struct gmn_consts * consts);
/* The output of the first n_layers layers (ne [W, H, C, N] while spatial, [units, N] after a dense layer). The
 * portable graph puts its index tables into consts (uploaded by the caller; check consts->error). */
struct ggml_tensor * gmn_forward_layers(const gmn_model * model, struct ggml_context * ctx, struct ggml_tensor * x,
                                        struct ggml_tensor * const * masks, int n_layers, struct gmn_consts * consts);

/* Model internals shared by the model, gguf and training files. */
/* storage: per parameter tensor (gmn_net_params order) its type and shape; NULL for all f32. */
int  gmn_model_create(const struct gmn_net * net, const char * device, int n_threads, const struct gmn_storage * storage,
                      gmn_model ** out);
/* general.architecture of the model: ggml's names only for its two networks with every tensor f32. */
const char * gmn_model_arch_name(const gmn_model * model);
/* The first parameter tensor that is not f32, or NULL. */
const struct ggml_tensor * gmn_model_first_quantized(const gmn_model * model);
/* Set the CPU (and accelerator) thread count used by the model's next graph computations, at most the fork limit. */
int  gmn_model_use_threads(gmn_model * model, int n_threads); /* returns the threads set (a forked child: 1) */
/* A new scheduler over the model's backends (device, accelerators, CPU), or NULL. */
ggml_backend_sched_t gmn_model_new_sched(const gmn_model * model);
struct ggml_tensor * gmn_model_tensor(const gmn_model * model, const char * name);
int  gmn_predict_rows(gmn_model * model, const gmn_dataset * ds, const int64_t * idx, int64_t n, float * probs);
void gmn_train_state_free(struct gmn_train_state * st);
int64_t gmn_image_pixels(const gmn_model * model);

/* Exact resume (gmn_train.c / gmn_optstate.c): where a run stands, beyond its weights and moments. */
struct gmn_train_pos {
    int64_t        step;      /* optimizer steps taken */
    int64_t        batches;   /* physical batches trained */
    struct gmn_rng rng;       /* shuffle stream */
    struct gmn_rng mask_rng;  /* dropout stream */
    uint64_t       aug_count; /* training images augmented: the next one's generator */
};
int64_t gmn_train_steps(const struct gmn_train_state * st);
int     gmn_train_optimizer(const struct gmn_train_state * st);
void    gmn_train_get_pos(const struct gmn_train_state * st, struct gmn_train_pos * pos);
void    gmn_train_set_pos(struct gmn_train_state * st, const struct gmn_train_pos * pos);
/* Hand tr (allocated with malloc; the state frees it with free) to the state and install cb as its scheduler's
 * eval callback. */
void    gmn_train_set_tracker(struct gmn_train_state * st, struct gmn_opt_tracker * tr, ggml_backend_sched_eval_callback cb);
struct gmn_opt_tracker * gmn_train_tracker(const struct gmn_train_state * st);
void    gmn_optstate_free(struct gmn_optstate * os);
/* Add the state (if any) to a GGUF being written: key ggml_mnist.opt.position and tensors opt.m.* / opt.v.*. */
void    gmn_optstate_write(const struct gmn_optstate * os, struct gguf_context * g);
/* Read a saved optimizer state, if the file has one, into m->opt after the weights. */
int     gmn_optstate_read(gmn_model * m, const struct gguf_context * g, struct ggml_context * meta, const char * path,
                          FILE * f, long long file_size);
/* Weight storage (gmn_storage.c). */
/* 1 when a tensor of spec may be stored as type with shape ne; else 0 with the reason in why. */
int  gmn_storage_allowed(const struct gmn_param_spec * spec, enum ggml_type type, const int64_t * ne, char * why, size_t cap);
/* Values of the network in each stored row of t, a tensor of spec: fan_in for block types (the rest is padding). */
int64_t gmn_storage_row(const struct gmn_param_spec * spec, const struct ggml_tensor * t);
/* 1 when rows x ne0 values of type in raw all dequantise (ggml's to_float) to finite floats; -1 without memory. */
int  gmn_storage_finite(enum ggml_type type, const void * raw, int64_t ne0, int64_t rows);
/* Copies tensor t out as floats, dequantised by ggml's to_float, keeping the first ne0 values of each stored row. */
int  gmn_tensor_get_f32(const struct ggml_tensor * t, int64_t ne0, float * out);
/* The storage of a tensor of spec in a model quantised to type (pad: rows may be zero-padded to whole blocks). */
struct gmn_storage gmn_storage_choose(const struct gmn_param_spec * spec, enum ggml_type type, int pad);
/* The weight type named name ("f32", "q8_0", ...) into *type; else GMN_E_INVALID naming what and the known types. */
int  gmn_weight_type_parse(const char * name, enum ggml_type * type, const char * what);

/* A batchnorm layer's running variance (NAME.running_var): stored f32, never negative. */
static inline int gmn_is_running_var(const char * name) {
    const size_t n = strlen(name), k = sizeof(".running_var") - 1;
    return n > k && strcmp(name + n - k, ".running_var") == 0;
}

#endif
