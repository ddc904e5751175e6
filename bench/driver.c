/* driver.c - a pure-C training loop over the shim, to measure what the Python binding costs.
 *
 * Usage: gmn_driver ARCH TRAIN_IMAGES TRAIN_LABELS EPOCHS BATCH THREADS
 * (raw, uncompressed IDX files). Prints one JSON object per epoch: {"epoch": i, "seconds": s, ...}.
 * It mirrors ggml_mnist.train(): same model init, dataset copy, schedule and epoch call.
 */
#include "ggml_mnist.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static unsigned char * read_file(const char * path, size_t * size) {
    FILE * f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char * buf = malloc((size_t) n);
    if (buf != NULL && fread(buf, 1, (size_t) n, f) != (size_t) n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t) n;
    return buf;
}

static uint32_t be32(const unsigned char * p) {
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static int die(const char * what) {
    fprintf(stderr, "gmn_driver: %s: %s\n", what, gmn_last_error());
    return 1;
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s PRESET TRAIN_IMAGES TRAIN_LABELS EPOCHS BATCH THREADS\n", argv[0]);
        return 2;
    }
    const char * arch = argv[1];
    const int epochs = atoi(argv[4]);
    const int64_t batch = atoll(argv[5]);
    const int threads = atoi(argv[6]);
    size_t ni = 0, nl = 0;
    unsigned char * img = read_file(argv[2], &ni);
    unsigned char * lab = read_file(argv[3], &nl);
    if (img == NULL || lab == NULL || ni < 16 || nl < 8 || be32(img) != 0x803 || be32(lab) != 0x801) {
        fprintf(stderr, "gmn_driver: cannot read raw IDX files\n");
        return 1;
    }
    const int64_t n = be32(img + 4);
    const int64_t npix = (int64_t) be32(img + 8) * be32(img + 12);
    int32_t * labels = malloc((size_t) n * sizeof(int32_t));
    int64_t * idx = malloc((size_t) n * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        labels[i] = lab[8 + i];
        idx[i] = i;
    }
    gmn_dataset * ds = NULL;
    if (gmn_dataset_init(img + 16, labels, n, npix, 10, &ds) != GMN_OK) {
        return die("dataset");
    }
    struct gmn_layer layers[GMN_MAX_LAYERS];
    struct gmn_net net = { 28, 28, 0, layers };
    if (gmn_preset_layers(arch, 10, layers, GMN_MAX_LAYERS, &net.n_layers) != GMN_OK) {
        return die("preset");
    }
    gmn_model * m = NULL;
    if (gmn_model_init(&net, "cpu", threads, 42, &m) != GMN_OK) {
        return die("model");
    }
    const int64_t steps = n / batch;
    struct gmn_train_config tc = { GMN_OPT_ADAMW, 1e-3f, 0.0f, GMN_SCHEDULE_COSINE, 0, epochs * steps,
                                   0.9f, 0.999f, 1e-8f, 0.0f, batch, batch, 42, 100.0f };
    if (gmn_model_train_init(m, &tc) != GMN_OK) {
        return die("train_init");
    }
    for (int e = 1; e <= epochs; e++) {
        struct gmn_epoch_result r;
        const double t0 = now_s();
        if (gmn_model_train_epoch(m, ds, idx, n, NULL, NULL, 0, NULL, NULL, &r) != GMN_OK) {
            return die("train_epoch");
        }
        printf("{\"epoch\": %d, \"seconds\": %.6f, \"train_loss\": %.6f, \"train_acc\": %.6f}\n",
               e, now_s() - t0, r.train_loss, r.train_acc);
        fflush(stdout);
    }
    gmn_model_free(m);
    gmn_dataset_free(ds);
    free(img); free(lab); free(labels); free(idx);
    return 0;
}
