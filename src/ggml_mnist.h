/*
 * ggml_mnist.h - the public C API of the ggml-mnist shim.
 *
 * Every exported name starts with gmn_. Fallible calls return an int status
 * (GMN_OK or a negative enum gmn_status) and deliver results through
 * out-parameters; gmn_last_error() then describes the failure and its fix.
 * The shim never prints, exits or aborts on bad input: it validates shapes,
 * sizes, hyperparameters, device names and GGUF contents before ggml sees them.
 *
 * Ownership: callers allocate every output buffer. Input arrays are copied
 * during the call; no pointer to caller memory is kept after a call returns.
 * Threads: distinct handles may be used from distinct threads at the same
 * time; one handle must not be used by two threads at once.
 *
 * The region between the CDEF markers is the cffi cdef, cut out by the build.
 */
#ifndef GGML_MNIST_H
#define GGML_MNIST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GMN_CDEF_BEGIN */

enum gmn_status {
    GMN_OK            =  0,
    GMN_E_INVALID     = -1, /* an argument or hyperparameter is out of range */
    GMN_E_IO          = -2, /* a file could not be opened, read or written */
    GMN_E_FORMAT      = -3, /* a model file is not a valid mnist GGUF */
    GMN_E_NOMEM       = -4, /* an allocation failed */
    GMN_E_DEVICE      = -5, /* unknown device or backend initialisation failed */
    GMN_E_STATE       = -6, /* the call is not valid in the handle's state */
    GMN_E_DIVERGED    = -7  /* the loss became NaN or infinite */
};

enum gmn_optimizer { GMN_OPT_ADAMW = 0, GMN_OPT_SGD = 1 };
/* ONECYCLE: the rate rises from lr/25 to lr over the warm-up (warmup_steps, or 30 % of the run when 0), along half a
 * cosine, then falls along half a cosine to lr*lr_min_ratio (Smith & Topin's one-cycle policy, without momentum cycling). */
enum gmn_schedule  { GMN_SCHEDULE_CONSTANT = 0, GMN_SCHEDULE_COSINE = 1, GMN_SCHEDULE_LINEAR = 2, GMN_SCHEDULE_ONECYCLE = 3 };
enum gmn_log_level { GMN_LOG_DEBUG = 1, GMN_LOG_INFO = 2, GMN_LOG_WARN = 3, GMN_LOG_ERROR = 4 };
enum gmn_phase     { GMN_PHASE_TRAIN = 0, GMN_PHASE_VALIDATION = 1 };

/* Graph forms (gmn_model_set_graph): AUTO picks CPU on the CPU device and PORTABLE elsewhere. CPU is channels-last
 * with the shim's own CPU ops and kernels; PORTABLE uses ggml ops only, each of which ggml's GPU backends run,
 * forward and backward. */
enum gmn_graph     { GMN_GRAPH_AUTO = 0, GMN_GRAPH_CPU = 1, GMN_GRAPH_PORTABLE = 2 };
/* The shim's CPU kernels, each taking one kind of ggml node of the CPU graph (see gmn_kernel_name). */
enum gmn_kernel    { GMN_KERNEL_OUTER = 0, GMN_KERNEL_MATMUL, GMN_KERNEL_GET_ROWS, GMN_KERNEL_GET_ROWS_BACK,
                     GMN_KERNEL_SUM_ROWS_INTO, GMN_KERNEL_ACC_FRONT, GMN_KERNEL_REPEAT_ROWS, GMN_KERNEL_COUNT };

/* A model's backend plan: every choice that depends on the devices it runs on. */
struct gmn_plan_info {
    int     graph;                    /* enum gmn_graph: CPU or PORTABLE (never AUTO) */
    int     kernels;                  /* 1 when the shim's CPU kernels take nodes of the CPU graph */
    int     accel_products;           /* 1 when an accelerator beside the CPU (BLAS) runs the matrix products */
    int     llamafile;                /* 1 when ggml's CPU products run llamafile's sgemm (padded shapes pay) */
    char    why_no_kernels[200];      /* why kernels is 0 ("" when 1) */
    int64_t taken[GMN_KERNEL_COUNT];  /* nodes each kernel took in the last graph built (training or prediction) */
    char    ops[2048];                /* the ggml ops of the last graph built, space-separated, sorted */
};

typedef struct gmn_model   gmn_model;
typedef struct gmn_dataset gmn_dataset;

/* Kinds of ggml backend device (gmn_device_info.type). */
enum gmn_device_type { GMN_DEVICE_CPU = 0, GMN_DEVICE_GPU = 1, GMN_DEVICE_IGPU = 2, GMN_DEVICE_ACCEL = 3 };

/* One ggml backend device. Memory in bytes. */
struct gmn_device_info {
    char     name[128];
    char     description[256];
    int      type;                    /* enum gmn_device_type: cpu, gpu, integrated gpu or another accelerator */
    uint64_t memory_free;
    uint64_t memory_total;
};

/* Layer kinds of a network (a sequential list of layers). */
enum gmn_layer_kind {
    GMN_LAYER_CONV2D    = 1, /* n_out channels, k x k kernel, stride, zero padding pad; weights name.kernel, name.bias */
    GMN_LAYER_MAXPOOL2D = 2, /* k x k window, stride, padding pad (padded cells never win) */
    GMN_LAYER_AVGPOOL2D = 3, /* k x k window, stride, zero padding pad (counted in the mean) */
    GMN_LAYER_DENSE     = 4, /* n_out units; flattens a spatial input (height, width, channel; channels fastest) */
    GMN_LAYER_RELU      = 5,
    GMN_LAYER_SILU      = 6,
    GMN_LAYER_GELU      = 7, /* tanh approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))) */
    GMN_LAYER_TANH      = 8,
    GMN_LAYER_DROPOUT   = 9, /* drops with probability p while training (seeded masks); identity when predicting */
    GMN_LAYER_BATCHNORM = 10, /* batch normalisation per channel (spatial input: over the batch and every position) or
                               * per unit (flat input: over the batch), with eps and momentum. Training normalises with
                               * the physical batch's mean and biased variance and updates name.running_mean and
                               * name.running_var (the unbiased variance) after every physical batch, like PyTorch;
                               * prediction uses the running statistics. Learnable name.weight (scale, starts at 1)
                               * and name.bias (shift, starts at 0); the running statistics are not trained. */
    GMN_LAYER_RESIDUAL  = 11  /* ends a residual block: adds the input of the `body` layers before it (the block's
                               * input) to their output. Where the body changes the shape, the input passes through a
                               * projection first: a 1x1 convolution name.kernel, name.bias with the stride that gives
                               * the body's output size (spatial), or a dense layer name.weight, name.bias (flat). */
};

/* Limits of networks and data, checked before ggml sees anything. */
enum gmn_limit {
    GMN_MAX_LAYERS     = 64,
    GMN_NAME_CAP       = 32,        /* bytes of a layer name, NUL included */
    GMN_MIN_CLASSES    = 2,
    GMN_MAX_CLASSES    = 1000,
    GMN_MIN_IMAGE_SIDE = 4,
    GMN_MAX_IMAGE_SIDE = 4096,
    GMN_MAX_UNITS      = 65536,     /* dense units */
    GMN_MAX_CHANNELS   = 4096,      /* conv2d output channels */
    GMN_MAX_WINDOW     = 32,        /* conv2d kernel and pooling window side, and strides */
    GMN_MAX_PARAMS     = 100000000, /* parameters of a whole network (400 MB of f32 weights) */
    GMN_MAX_THREADS    = 1024,      /* CPU threads of a model (0 picks every core) */
    GMN_MAX_BATCH      = 1000000    /* images per optimizer step */
};

/* One layer. Fields a kind does not use are ignored (set them to 0); batchnorm has no defaults in C: set its eps. */
struct gmn_layer {
    int   kind;               /* enum gmn_layer_kind */
    char  name[GMN_NAME_CAP]; /* conv2d/dense/batchnorm/residual: tensor prefix of [A-Za-z0-9_], unique; "" picks
                               * convN / fcN / bnN / resN */
    int   n_out;              /* conv2d: output channels; dense: units */
    int   k, stride, pad;     /* conv2d, pools: square window side, stride (>= 1), padding per side */
    float p;                  /* dropout: drop probability in [0, 1) */
    float momentum;           /* batchnorm: weight of each batch in the running statistics, [0, 1] (PyTorch's 0.1) */
    float eps;                /* batchnorm: added to the variance, (0, 1] (PyTorch's 1e-5) */
    int   body;               /* residual: how many layers before it form the block's body, >= 1 */
};

/* A network for image_h x image_w single-channel images. The last layer is a dense layer whose
 * n_out is the number of classes. layers is read during the call only. */
struct gmn_net {
    int image_h;
    int image_w;
    int n_layers;
    const struct gmn_layer * layers;
};

/* Optimiser and schedule. lr is the peak rate; the schedule decays it to lr*lr_min_ratio
 * over total_steps optimizer steps after warmup_steps of linear warm-up. */
/* Random training-time transforms, drawn per image from the run's seed. All zero: none. The affine part maps
 * about the image centre: rotation in [-rotate, rotate] degrees, shear in [-shear, shear] degrees, scale factor
 * in [1 - scale, 1 + scale], shift in [-shift, shift] pixels per axis. Elastic distortion moves every pixel
 * by a smooth random field: displacements in [-elastic, elastic] pixels on a grid of control points
 * elastic_grid pixels apart, interpolated bilinearly. crop moves the image by a whole number of pixels in
 * [-crop, crop] per axis (a random crop of the image padded by crop pixels of background), which alone resamples
 * nothing. Then noise_pixels random pixels are flipped (v -> 1 - v), and with probability erase one random
 * rectangle of 2 % to erase_area of the image, its sides in a ratio of 0.3 to 3.3, is filled with uniform
 * random values (Zhong et al.'s random erasing).
 * Sampling is bilinear; pixels from outside the image are 0 (background). */
struct gmn_augment {
    float shift;         /* [0, side/2] pixels */
    float rotate;        /* [0, 180] degrees */
    float scale;         /* [0, 0.9] */
    float shear;         /* [0, 60] degrees */
    float elastic;       /* [0, 8] pixels */
    float elastic_grid;  /* [2, 64] pixels; used when elastic > 0 */
    int   noise_pixels;  /* [0, pixels of an image] */
    float flip;          /* [0, 1]: probability of mirroring an image left-right (objects and clothes, never digits) */
    int   crop;          /* [0, side/2] whole pixels */
    float erase;         /* [0, 1]: probability of erasing a rectangle */
    float erase_area;    /* [0.02, 1]: its largest share of the image; used when erase > 0 */
};

struct gmn_train_config {
    int      optimizer;      /* enum gmn_optimizer */
    float    lr;             /* > 0 */
    float    lr_min_ratio;   /* [0, 1] */
    int      schedule;       /* enum gmn_schedule */
    int64_t  warmup_steps;   /* >= 0 */
    int64_t  total_steps;    /* > 0: optimizer steps of the whole run */
    float    beta1;          /* adamw, [0, 1) */
    float    beta2;          /* adamw, [0, 1) */
    float    eps;            /* adamw, >= 0 */
    float    weight_decay;   /* [0, 1]: decoupled, multiplied by the current lr */
    int64_t  batch_size;     /* images per optimizer step */
    int64_t  physical_batch_size; /* images per graph evaluation; divides batch_size */
    uint64_t seed;           /* shuffle order */
    float    max_loss;       /* > 0: a batch loss above this counts as divergence; 0: only NaN/inf do */
    struct gmn_augment augment; /* training batches only, never validation; its own random stream */
    float    label_smoothing; /* [0, 1): training targets are (1 - s) one-hot + s / n_classes; validation and
                               * evaluation losses stay plain cross-entropy */
};

/* Metrics of one epoch; *_unc are standard errors of the means. n_val is 0 without validation. */
struct gmn_epoch_result {
    int64_t n_train;
    double  train_loss, train_loss_unc, train_acc, train_acc_unc;
    int64_t n_val;
    double  val_loss, val_loss_unc, val_acc, val_acc_unc;
    int     stopped;         /* 1 when the progress callback asked to stop early; such an epoch is not validated
                              * (n_val 0), even when the stop came at its last batch: to validate an epoch, do not
                              * ask to stop at its last batch (the Python run object does not) */
};

/* Called after every batch; return non-zero to stop after this batch. */
typedef int  (*gmn_progress_fn)(void * userdata, int phase, int64_t ibatch, int64_t nbatch, double loss, double acc);
/* Receives ggml's and the shim's log lines (text ends in a newline). */
typedef void (*gmn_log_fn)(void * userdata, int level, const char * text);

/* Thread-local description of the last failure in this thread ("" if none). */
const char * gmn_last_error(void);
/* Version strings: the shim's and the ggml library's it runs on. */
const char * gmn_version(void);
const char * gmn_ggml_version(void);
/* Route log lines at or above min_level to fn (NULL: drop them). Process-wide, not thread-safe against itself. */
void gmn_log_set(gmn_log_fn fn, void * userdata, int min_level);

/* Most CPU threads a computation may use in this process: 0 for no limit, 1 in a process forked after its
 * parent ran ggml on several threads (OpenMP's thread pool does not survive fork; one thread needs none). */
int gmn_thread_limit(void);

/* Number of ggml devices and the description of device index into *out. */
int gmn_device_count(void);
int gmn_device_get(int index, struct gmn_device_info * out);

/* Copy n images (n * n_pixels uint8, row-major) and n labels in [0, n_classes) into a new dataset. */
int  gmn_dataset_init(const uint8_t * images, const int32_t * labels, int64_t n, int64_t n_pixels, int n_classes, gmn_dataset ** out);
void gmn_dataset_free(gmn_dataset * ds);

/* Name of a layer kind as stored in GGUF and JSON ("conv2d", "relu", ...); "" for an unknown kind. */
const char * gmn_layer_kind_name(int kind);
/* Validate net; on success write its layers with empty names filled in (n_layers), per layer its output
 * height, width, channels and parameter count (4 * n_layers int64; flat outputs have height = width = 1)
 * and the total parameter count. Parameters are the trained values: a batchnorm layer counts its weight and bias,
 * not its running statistics (which gmn_model_n_tensors lists as tensors all the same). Any output may be NULL. The error names the first bad layer and the fix. */
int  gmn_net_check(const struct gmn_net * net, struct gmn_layer * layers, int64_t * layer_info, int64_t * n_params);
/* Built-in networks: count, name of preset i (NULL when out of range), and the layer list of a preset
 * for n_classes classes copied into layers (capacity cap); *n_layers receives its length. */
int  gmn_preset_count(void);
const char * gmn_preset_name(int i);
int  gmn_preset_layers(const char * name, int n_classes, struct gmn_layer * layers, int cap, int * n_layers);

/* New model of net (copied; empty names filled in) with weights drawn from seed, on device ("auto", "cpu"
 * or a ggml device name), n_threads CPU threads (0: all cores). */
int  gmn_model_init(const struct gmn_net * net, const char * device, int n_threads, uint64_t seed, gmn_model ** out);
/* Load a GGUF file written by us or by ggml's mnist example. */
int  gmn_model_load(const char * path, const char * device, int n_threads, gmn_model ** out);
void gmn_model_free(gmn_model * model);
/* Choose the graph form (enum gmn_graph) before training or predicting; drops the prediction graph. CPU on
 * another device, or any form with a training run in progress, is GMN_E_INVALID / GMN_E_STATE. */
int  gmn_model_set_graph(gmn_model * model, int graph);
/* The model's backend plan. ops: of the training graph (forward, backward and optimizer step) while or after
 * training, else of the prediction graph (built for one image if none was built yet). */
int  gmn_model_plan(gmn_model * model, struct gmn_plan_info * out);
/* The name of a kernel (enum gmn_kernel): "out_prod", "mul_mat", ...; NULL when out of range. */
const char * gmn_kernel_name(int kernel);
/* Testing only: the ggml version the kernels' version gate compares with the pin (NULL: the running ggml's).
 * Applies to plans computed afterwards. */
void gmn_testing_set_ggml_version(const char * version);
/* Testing only: with on, a model created afterwards on the CPU with no accelerator beside it gets a second CPU
 * backend where an accelerator (ggml's BLAS backend) would go, so that its plan and scheduler take the path of a
 * CPU with an accelerator: the CPU graph with ggml's own products, and a scheduler over three backends. */
void gmn_testing_cpu_as_accel(int on);

/* Testing only: the CPU kernel wing (src/cpu/) one op at a time, for tests that compare each kernel with a plain
 * loop. An operand or result: ne (ne[0] fastest), element (i0, i1, i2, i3) at data[i0*nb[0] + i1*nb[1] + i2*nb[2] +
 * i3*nb[3]] (strides in elements), n elements at data, int32 when i32 else float. */
struct gmn_testing_array {
    int     i32;
    int64_t ne[4];
    int64_t nb[4];
    void  * data;
    int64_t n;
};
/* What gmn_testing_cpu_op computes from operands in[] and parameters p[] (x: a contiguous f32 [C, W, H, N]). */
enum gmn_testing_op {
    GMN_TESTING_OUT_PROD = 0,   /* ggml_out_prod(in0 [M, J], in1 [N, J]): [M, N] */
    GMN_TESTING_MUL_MAT,        /* ggml_mul_mat(in0 [K, M], in1 [K, N]): [M, N] */
    GMN_TESTING_GET_ROWS,       /* ggml_get_rows(in0 [nc, R], in1 i32 [n]): [nc, n] */
    GMN_TESTING_GET_ROWS_BACK,  /* ggml_get_rows_back(in0 [nc, n], in1 i32 [n]) into p0 rows: [nc, p0] */
    GMN_TESTING_REPEAT_BACK,    /* ggml_repeat_back(in0 [nc, ...] contiguous) onto a vector: [nc] */
    GMN_TESTING_ACC,            /* ggml_acc(in0 contiguous, in1, rows p0 floats apart, offset 0), in place when p1 */
    GMN_TESTING_IM2COL,         /* gmn_cl_im2col(x, k p0, stride p1, pad p2, rows p3): [rows, OW*OH*N] */
    GMN_TESTING_IM2COL_ROWS,    /* gmn_cl_im2col_rows(x, k p0, stride p1, pad p2, extra p3): i32 */
    GMN_TESTING_GATHER_COLS,    /* gmn_cl_gather_cols(x, k p0, stride p1, pad p2, extra p3) */
    GMN_TESTING_MAXPOOL,        /* gmn_cl_maxpool(x, k p0, stride p1, pad p2, no gradient): [C, OW, OH, N] */
    GMN_TESTING_POOL_ARGMAX,    /* gmn_cl_pool_argmax(x, k p0, stride p1, pad p2): i32 [C*OW*OH*N] */
    GMN_TESTING_AVGPOOL,        /* gmn_cl_avgpool(x, k p0, stride p1, pad p2, gathered when p3, p4 outputs) */
    GMN_TESTING_AVG_MATRIX,     /* gmn_cl_avg_matrix(C p0, k p1, outputs p2): [C*k*k, outputs] */
    GMN_TESTING_RELAYOUT,       /* gmn_cl_relayout(in0 contiguous 4-D, to_cf p0) */
    GMN_TESTING_ACT_VALUES,     /* gmn_cl_act_values(in0 contiguous, kind p0: GMN_LAYER_TANH or _GELU): [n, 2] */
    GMN_TESTING_REPEAT          /* ggml_repeat(in0 contiguous [nc] or [nc, r], onto p0 rows, a multiple of r): [nc, p0] */
};
/* Builds op over copies of the n_in operands on ggml's CPU backend; with adopt, lets the shim's kernels take its
 * nodes as the CPU graph does (taken, if not NULL: GMN_KERNEL_COUNT counters, set); computes it on n_threads
 * threads; writes the result's shape and contiguous strides into out->ne/nb/i32 and its elements into out->data
 * (capacity out->n). GMN_E_INVALID for operands, parameters or a capacity that do not fit op. */
int  gmn_testing_cpu_op(int op, const int64_t * p, int n_p, const struct gmn_testing_array * in, int n_in, int n_threads,
                        int adopt, struct gmn_testing_array * out, int64_t * taken);
/* With on, every CPU kernel runs as if its thread's scratch buffer could not be allocated: the matrix products
 * pack one panel at a time on the stack, im2col goes one kernel offset at a time. Set it only while no graph runs. */
void gmn_testing_cpu_no_scratch(int on);
/* Benchmarks only: gmn_testing_cpu_op computes its graph n more times (0: none, the default) after the one whose
 * result it returns; gmn_testing_cpu_seconds gives the fastest of them in seconds (0 when none ran). */
void   gmn_testing_cpu_repeat(int n);
double gmn_testing_cpu_seconds(void);
/* 1 when the matrix products' clone for this CPU fuses each multiply-add (one rounding per term), else 0. */
int  gmn_testing_cpu_fma(void);
/* The fewest columns of a mul_mat that the shim's kernel takes (fewer stay with ggml). */
int64_t gmn_testing_cpu_mm_min_n(void);
/* The model's network: image size and layer count into *out, up to cap layers copied into layers
 * (out->layers is set to layers). */
int  gmn_model_get_net(const gmn_model * model, struct gmn_net * out, struct gmn_layer * layers, int cap);
/* Number of classes (the last layer's units); 0 for NULL. */
int  gmn_model_n_classes(const gmn_model * model);
/* Name of the device the model runs on, copied into name (capacity n). */
int  gmn_model_device(const gmn_model * model, char * name, size_t n);
/* The GGUF general.architecture the model is saved under (static string; NULL model gives ""). */
const char * gmn_model_architecture(const gmn_model * model);

/* Parameter tensors: count, name and shape in the network (ggml order, ne[0] fastest) of tensor i. */
int  gmn_model_n_tensors(const gmn_model * model);
int  gmn_model_tensor_info(const gmn_model * model, int i, char * name, size_t name_cap, int64_t * ne4);
/* Copy a parameter tensor out of (as f32, dequantised) / into (f32 models only) the model; n is its element count. */
int  gmn_model_get_tensor(const gmn_model * model, const char * name, float * data, int64_t n);
int  gmn_model_set_tensor(gmn_model * model, const char * name, const float * data, int64_t n);

/* Weight types by name ("f32", "f16", "q8_0", "q5_0", "q4_0"; ggml's names): count and name i (NULL out of range). */
int  gmn_weight_type_count(void);
const char * gmn_weight_type_name(int i);
/* How parameter tensor i is stored: its type name (static), row length (ne[0]; more than the tensor_info shape's
 * when a dense weight's rows are zero-padded to whole blocks) and bytes. */
int  gmn_model_tensor_storage(const gmn_model * model, int i, const char ** type, int64_t * row_len, int64_t * nbytes);
/* A new model (same network, device and threads; no metadata) whose weights ggml_quantize_chunk converts to type:
 * ggml's block types ("q8_0", "q5_0", "q4_0": blocks of 32 values) go to the dense weights whose rows (the layer's
 * inputs) are whole blocks, or with pad != 0 to every dense weight, its rows zero-padded to whole blocks (prediction
 * pads the inputs to match); the other weights become f16 and the biases stay f32. "f16" converts every weight,
 * "f32" dequantises. Quantised models predict, save and load like any other, but refuse training and set_tensor.
 * GMN_E_INVALID for an unknown type or one that no tensor can take. */
int  gmn_model_quantize(const gmn_model * model, const char * type, int pad, gmn_model ** out);

/* String metadata: the ggml_mnist.* keys read from a loaded file (key without the prefix). */
int  gmn_model_meta_count(const gmn_model * model);
int  gmn_model_meta_get(const gmn_model * model, int i, const char ** key, const char ** value);
/* Write the model atomically as GGUF, with extra ggml_mnist.<key> string entries. A killed save can leave
 * .NAME.tmp-XXXXXX next to path; later saves to path remove those unchanged for a minute and unlocked. */
int  gmn_model_save(const gmn_model * model, const char * path, int n_meta, const char ** keys, const char ** values);

/* Class probabilities for n images: x is n*image_h*image_w uint8 (x_is_float 0) or float in [0,1] (1);
 * probs receives n*n_classes floats. */
int  gmn_model_predict(gmn_model * model, const void * x, int x_is_float, int64_t n, float * probs);
/* Feature maps of one float image (image_h*image_w, in [0,1]) after layer `layer` (0-based, inclusive) for
 * inspection: n floats (that layer's height*width*channels from gmn_net_check), channel-major [C][H][W]. */
int  gmn_model_activation(gmn_model * model, const float * x, int layer, float * out, int64_t n);

/* The dropout mask (0 or 1/(1-p) per element, n floats) that dropout layer `layer` used in the last
 * training batch, for inspection and tests; GMN_E_STATE before the first batch. */
int  gmn_model_dropout_mask(const gmn_model * model, int layer, float * mask, int64_t n);

/* Release the optimizer state and training buffers (the weights stay); NULL and repeated calls are fine. */
void gmn_model_train_free(gmn_model * model);

/* Prepare training (optimizer state, graphs); resets any previous optimizer state. GMN_E_STATE for a quantised model. */
int  gmn_model_train_init(gmn_model * model, const struct gmn_train_config * config);
/* One epoch over the train_idx rows of ds (shuffled), then validation on the val_idx rows of val_ds (NULL: of ds;
 * n_val may be 0). Returns GMN_E_DIVERGED when the loss is not finite; the model then refuses to save. */
int  gmn_model_train_epoch(gmn_model * model, const gmn_dataset * ds,
                           const int64_t * train_idx, int64_t n_train,
                           const gmn_dataset * val_ds, const int64_t * val_idx, int64_t n_val,
                           gmn_progress_fn progress, void * userdata,
                           struct gmn_epoch_result * out);

/* Augmentation (gmn_augment.c). Check a parameter set for h x w images; returns a status naming a bad value. */
int  gmn_augment_check(const struct gmn_augment * aug, int h, int w);
/* Augment n uint8 images [n, h, w] into floats in [0, 1] (out: n*h*w) as training does; image i draws from its
 * own generator seeded from (seed, i), so the same seed gives the same images. Thread-safe. */
int  gmn_augment_images(const struct gmn_augment * aug, uint64_t seed, const uint8_t * images, int64_t n, int h, int w, float * out);
/* Resample one float image: out(x, y) = in(a0*(x-cx) + a1*(y-cy) + cx + a2, a3*(x-cx) + a4*(y-cy) + cy + a5)
 * with c the image centre, bilinear, 0 outside. in and out must not overlap. */
int  gmn_image_warp(const float * in, int h, int w, const float a[6], float * out);
/* The last training batch as the graph saw it: images (physical batch * pixels floats) and one-hot labels
 * (physical batch * classes floats); for tests of the batch gatherer. */
int  gmn_model_last_batch(const gmn_model * model, float * images, int64_t n_images, float * labels, int64_t n_labels);

/* Exact resume. After train_init and before the first epoch: track the AdamW moments (and, with resume 1,
 * restore the step count, random streams and moments of the optimizer state the model was loaded with;
 * GMN_E_STATE when it has none). optimizer_snapshot copies the current state into the model, so that the next
 * save writes it (key ggml_mnist.opt.position, tensors opt.m.<param> / opt.v.<param>). optimizer_steps: the
 * steps of the state the model holds, -1 for none; optimizer_drop forgets it. The state belongs to the weights it
 * was taken with: after a later training batch or set_tensor, until the next snapshot, save leaves it out,
 * optimizer_steps is -1 and resume refuses it. */
int     gmn_model_train_keep_optimizer(gmn_model * model, int resume);
int     gmn_model_optimizer_snapshot(gmn_model * model);
int64_t gmn_model_optimizer_steps(const gmn_model * model);
void    gmn_model_optimizer_drop(gmn_model * model);
/* Learning rate of the last optimizer step (0 before the first or without training state). */
double  gmn_model_train_lr(const gmn_model * model);

/* Where the time of the current training went, in seconds since gmn_model_train_init: gathering batches (8-bit
 * pixels to floats, augmentation, labels), running the training graph (forward, backward and optimizer step) for
 * the first graph run (which also builds and allocates the graphs) and for all later ones, the progress callback
 * (the caller's code, e.g. Python), and the end-of-epoch check of the final weights. */
struct gmn_train_timing {
    double  data, first_graph, graph, callback, check;
    int64_t graph_runs;
};
int     gmn_model_train_timing(const gmn_model * model, struct gmn_train_timing * out);

/* GMN_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* GGML_MNIST_H */
