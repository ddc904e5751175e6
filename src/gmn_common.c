/* gmn_common.c - errors, logging, versions, devices and the PRNG. */
#include "gmn_internal.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define GMN_VERSION_STRING "0.1.0"

static _Thread_local char g_last_error[1024];

static gmn_log_fn g_log_fn    = NULL;
static void *     g_log_ud    = NULL;
static int        g_log_level = GMN_LOG_WARN;
static int        g_log_prev  = GMN_LOG_INFO; /* level of the line a CONT piece continues */

int gmn_fail(int status, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error, sizeof(g_last_error), fmt, ap);
    va_end(ap);
    return status;
}

void gmn_clear_error(void) {
    g_last_error[0] = '\0';
}

const char * gmn_last_error(void) {
    return g_last_error;
}

const char * gmn_version(void) {
    return GMN_VERSION_STRING;
}

const char * gmn_ggml_version(void) {
    return ggml_version();
}

static void gmn_emit(int level, const char * text) {
    gmn_log_fn fn = g_log_fn;
    if (fn != NULL && level >= g_log_level) {
        fn(g_log_ud, level, text);
    }
}

static void gmn_ggml_log_sink(enum ggml_log_level level, const char * text, void * ud) {
    (void) ud;
    int lvl = (int) level;
    if (lvl == GGML_LOG_LEVEL_CONT) {
        lvl = g_log_prev;
    } else {
        g_log_prev = lvl;
    }
    if (lvl == GGML_LOG_LEVEL_NONE) {
        return;
    }
    gmn_emit(lvl, text);
}

void gmn_log(int level, const char * fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    gmn_emit(level, buf);
}

static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;

static void gmn_init_impl(void) {
    ggml_log_set(gmn_ggml_log_sink, NULL);
}

void gmn_ensure_init(void) {
    pthread_once(&g_init_once, gmn_init_impl);
}

void gmn_log_set(gmn_log_fn fn, void * userdata, int min_level) {
    gmn_ensure_init();
    g_log_ud    = userdata;
    g_log_level = min_level;
    g_log_fn    = fn;
}

int gmn_device_count(void) {
    gmn_ensure_init();
    return (int) ggml_backend_dev_count();
}

static int gmn_device_type_code(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU:  return GMN_DEVICE_CPU;
        case GGML_BACKEND_DEVICE_TYPE_GPU:  return GMN_DEVICE_GPU;
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return GMN_DEVICE_IGPU;
        default:                            return GMN_DEVICE_ACCEL;
    }
}

int gmn_device_get(int index, struct gmn_device_info * out) {
    gmn_ensure_init();
    gmn_clear_error();
    if (out == NULL) {
        return gmn_fail(GMN_E_INVALID, "device_get: out is NULL");
    }
    const int n = (int) ggml_backend_dev_count();
    if (index < 0 || index >= n) {
        return gmn_fail(GMN_E_INVALID, "device_get: index %d out of range [0, %d)", index, n);
    }
    ggml_backend_dev_t dev = ggml_backend_dev_get((size_t) index);
    struct ggml_backend_dev_props props;
    memset(&props, 0, sizeof(props));
    ggml_backend_dev_get_props(dev, &props);
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", props.name ? props.name : "");
    snprintf(out->description, sizeof(out->description), "%s", props.description ? props.description : "");
    out->type         = gmn_device_type_code(props.type);
    out->memory_free  = (uint64_t) props.memory_free;
    out->memory_total = (uint64_t) props.memory_total;
    return GMN_OK;
}

static int gmn_strcaseeq(const char * a, const char * b) {
    for (; *a && *b; a++, b++) {
        if (tolower((unsigned char) *a) != tolower((unsigned char) *b)) {
            return 0;
        }
    }
    return *a == *b;
}

int gmn_find_device(const char * name, ggml_backend_dev_t * out) {
    gmn_ensure_init();
    const size_t n = ggml_backend_dev_count();
    if (name == NULL || name[0] == '\0' || gmn_strcaseeq(name, "auto")) {
        ggml_backend_dev_t best = NULL;
        for (size_t i = 0; i < n && best == NULL; i++) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            enum ggml_backend_dev_type t = ggml_backend_dev_type(d);
            if (t == GGML_BACKEND_DEVICE_TYPE_GPU) {
                best = d;
            }
        }
        if (best == NULL) {
            best = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        }
        if (best == NULL) {
            return gmn_fail(GMN_E_DEVICE, "device: no ggml device is available (is ggml-python installed correctly?)");
        }
        *out = best;
        return GMN_OK;
    }
    if (gmn_strcaseeq(name, "cpu")) {
        ggml_backend_dev_t d = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        if (d == NULL) {
            return gmn_fail(GMN_E_DEVICE, "device: this ggml build has no CPU device");
        }
        *out = d;
        return GMN_OK;
    }
    char names[512] = "";
    for (size_t i = 0; i < n; i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        const char * dn = ggml_backend_dev_name(d);
        if (gmn_strcaseeq(name, dn)) {
            *out = d;
            return GMN_OK;
        }
        size_t len = strlen(names);
        snprintf(names + len, sizeof(names) - len, "%s%s", i ? ", " : "", dn);
    }
    return gmn_fail(GMN_E_DEVICE, "device: unknown device '%s'; available: auto, cpu, %s", name, names);
}

static uint64_t gmn_splitmix64(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void gmn_rng_seed(struct gmn_rng * rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        rng->s[i] = gmn_splitmix64(&x);
    }
}

static uint64_t gmn_rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t gmn_rng_next(struct gmn_rng * rng) {
    uint64_t * s = rng->s;
    const uint64_t result = gmn_rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = gmn_rotl(s[3], 45);
    return result;
}

double gmn_rng_uniform(struct gmn_rng * rng) {
    return (double) (gmn_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* MemAvailable from /proc/meminfo, else free pages; further capped by RLIMIT_AS headroom. */
uint64_t gmn_host_memory_available(void) {
    uint64_t avail = 0;
    FILE * f = fopen("/proc/meminfo", "r");
    if (f != NULL) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof(line), f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (uint64_t) kb * 1024;
                break;
            }
        }
        fclose(f);
    }
    if (avail == 0) {
        avail = (uint64_t) sysconf(_SC_AVPHYS_PAGES) * (uint64_t) sysconf(_SC_PAGESIZE);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        unsigned long long pages = 0;
        FILE * st = fopen("/proc/self/statm", "r");
        if (st != NULL) {
            if (fscanf(st, "%llu", &pages) != 1) {
                pages = 0;
            }
            fclose(st);
        }
        const uint64_t used = (uint64_t) pages * (uint64_t) sysconf(_SC_PAGESIZE);
        const uint64_t room = (uint64_t) rl.rlim_cur > used ? (uint64_t) rl.rlim_cur - used : 0;
        avail = room < avail ? room : avail;
    }
    return avail;
}

int gmn_check_graph_memory(ggml_backend_dev_t dev, struct ggml_tensor * out, double factor, const char * what, int64_t batch) {
    struct ggml_init_params ip = { ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(ip);
    if (ctx == NULL) {
        return gmn_fail(GMN_E_NOMEM, "%s: out of memory", what);
    }
    struct ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    double need = 0.0;
    for (int i = 0; i < ggml_graph_n_nodes(gf); i++) {
        need += (double) ggml_nbytes(ggml_graph_node(gf, i));
    }
    ggml_free(ctx);
    need *= factor;
    uint64_t avail;
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU) {
        avail = gmn_host_memory_available();
    } else {
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(dev, &free_b, &total_b);
        avail = (uint64_t) free_b;
    }
    if (avail > 0 && need > 0.9 * (double) avail) {
        return gmn_fail(GMN_E_NOMEM, "%s: a batch of %lld images needs about %.1f GB but %s has %.1f GB available; "
                        "lower the (physical) batch size", what, (long long) batch, need / 1e9,
                        ggml_backend_dev_name(dev), (double) avail / 1e9);
    }
    return GMN_OK;
}

void gmn_backend_set_threads(ggml_backend_t backend, int n_threads) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : NULL;
    if (reg == NULL) {
        return;
    }
    ggml_backend_set_n_threads_t fn = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (fn != NULL) {
        fn(backend, n_threads);
    }
}

void gmn_u8_to_f32(float * dst, const uint8_t * src, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        dst[j] = src[j] * (1.0f / 255.0f);
    }
}
