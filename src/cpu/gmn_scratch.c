/* gmn_scratch.c - each of ggml's threads keeps one scratch buffer between the CPU kernels' calls. */
#include "gmn_cpu_impl.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

static _Atomic int g_no_scratch; /* gmn_testing_cpu_no_scratch */

void gmn_testing_cpu_no_scratch(int on) {
    atomic_store_explicit(&g_no_scratch, on != 0, memory_order_relaxed);
}

static pthread_key_t g_panel_key;
static int g_panel_key_ok;
static pthread_once_t g_panel_once = PTHREAD_ONCE_INIT;
static void gmn_panel_key_init(void) {
    g_panel_key_ok = pthread_key_create(&g_panel_key, free) == 0;
}

float * gmn_thread_panels(void) {
    if (atomic_load_explicit(&g_no_scratch, memory_order_relaxed)) {
        return NULL;
    }
    pthread_once(&g_panel_once, gmn_panel_key_init);
    if (!g_panel_key_ok) {
        return NULL; /* no key left: every caller takes its fallback */
    }
    float * p = pthread_getspecific(g_panel_key);
    if (p == NULL) {
        p = aligned_alloc(64, (size_t) GMN_THREAD_FLOATS * sizeof(float));
        if (p != NULL && pthread_setspecific(g_panel_key, p) != 0) {
            free(p);
            p = NULL;
        }
    }
    return p;
}
