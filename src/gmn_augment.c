/* gmn_augment.c - seeded training-time image transforms: affine, elastic and pixel-flip noise. */
#include "gmn_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int gmn_in_range(float v, float lo, float hi) {
    return isfinite(v) && v >= lo && v <= hi;
}

int gmn_augment_check(const struct gmn_augment * aug, int h, int w) {
    gmn_clear_error();
    if (aug == NULL) {
        return gmn_fail(GMN_E_INVALID, "augment: NULL argument");
    }
    if (h < GMN_MIN_IMAGE_SIDE || w < GMN_MIN_IMAGE_SIDE || h > GMN_MAX_IMAGE_SIDE || w > GMN_MAX_IMAGE_SIDE) {
        return gmn_fail(GMN_E_INVALID, "augment: images of %dx%d are outside %d..%d pixels per side", h, w,
                        GMN_MIN_IMAGE_SIDE, GMN_MAX_IMAGE_SIDE);
    }
    const float half = 0.5f * (float) (h > w ? h : w);
    if (!gmn_in_range(aug->shift, 0.0f, half)) {
        return gmn_fail(GMN_E_INVALID, "augment: shift %g must be in [0, %g] pixels (half the image side)", (double) aug->shift, (double) half);
    }
    if (!gmn_in_range(aug->rotate, 0.0f, 180.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: rotate %g must be in [0, 180] degrees", (double) aug->rotate);
    }
    if (!gmn_in_range(aug->scale, 0.0f, 0.9f)) {
        return gmn_fail(GMN_E_INVALID, "augment: scale %g must be in [0, 0.9] (0.1 means factors 0.9..1.1)", (double) aug->scale);
    }
    if (!gmn_in_range(aug->shear, 0.0f, 60.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: shear %g must be in [0, 60] degrees", (double) aug->shear);
    }
    if (!gmn_in_range(aug->elastic, 0.0f, 8.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: elastic %g must be in [0, 8] pixels of displacement", (double) aug->elastic);
    }
    if (aug->elastic > 0.0f && !gmn_in_range(aug->elastic_grid, 2.0f, 64.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: elastic_grid %g must be in [2, 64] pixels between control points",
                        (double) aug->elastic_grid);
    }
    if (!gmn_in_range(aug->flip, 0.0f, 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: flip %g must be a probability in [0, 1]", (double) aug->flip);
    }
    if (aug->noise_pixels < 0 || (int64_t) aug->noise_pixels > (int64_t) h * w) {
        return gmn_fail(GMN_E_INVALID, "augment: noise_pixels %d must be in [0, %lld] (the pixels of an image)",
                        aug->noise_pixels, (long long) h * w);
    }
    return GMN_OK;
}

int gmn_augment_active(const struct gmn_augment * aug) {
    return aug->shift > 0.0f || aug->rotate > 0.0f || aug->scale > 0.0f || aug->shear > 0.0f || aug->elastic > 0.0f ||
           aug->noise_pixels > 0 || aug->flip > 0.0f;
}

static int64_t gmn_grid_points(float spacing, int side) {
    return (int64_t) floorf((float) (side - 1) / spacing) + 2;
}

int gmn_aug_ws_init(struct gmn_aug_ws * ws, const struct gmn_augment * aug, int h, int w) {
    memset(ws, 0, sizeof(*ws));
    ws->src = malloc((size_t) h * (size_t) w * sizeof(float));
    if (aug->elastic > 0.0f) {
        const int64_t n = gmn_grid_points(aug->elastic_grid, w) * gmn_grid_points(aug->elastic_grid, h);
        ws->grid = malloc((size_t) (2 * n) * sizeof(float));
        if (ws->grid == NULL) {
            gmn_aug_ws_free(ws);
            return gmn_fail(GMN_E_NOMEM, "augment: out of memory");
        }
    }
    if (ws->src == NULL) {
        gmn_aug_ws_free(ws);
        return gmn_fail(GMN_E_NOMEM, "augment: out of memory");
    }
    return GMN_OK;
}

void gmn_aug_ws_free(struct gmn_aug_ws * ws) {
    if (ws != NULL) {
        free(ws->src);
        free(ws->grid);
        memset(ws, 0, sizeof(*ws));
    }
}

/* Bilinear sample of in at (sx, sy); 0 outside the image. With integer coordinates the result is exactly a pixel. */
static inline float gmn_sample(const float * in, int h, int w, float sx, float sy) {
    if (!(sx > -1.0f && sx < (float) w && sy > -1.0f && sy < (float) h)) {
        return 0.0f;
    }
    /* sx, sy > -1 here, so truncating sx + 1 floors it (cheaper than floorf without SSE4.1) */
    const int x0 = (int) (sx + 1.0f) - 1, y0 = (int) (sy + 1.0f) - 1;
    const float fx = sx - (float) x0, fy = sy - (float) y0;
    if (x0 >= 0 && y0 >= 0 && x0 + 1 < w && y0 + 1 < h) { /* inside: no bounds checks */
        const float * p = in + (int64_t) y0 * w + x0;
        return (1.0f - fy) * ((1.0f - fx) * p[0] + fx * p[1]) + fy * ((1.0f - fx) * p[w] + fx * p[w + 1]);
    }
    const int okx0 = x0 >= 0, okx1 = x0 + 1 < w, oky0 = y0 >= 0, oky1 = y0 + 1 < h;
    const float v00 = okx0 && oky0 ? in[(int64_t) y0 * w + x0] : 0.0f;
    const float v01 = okx1 && oky0 ? in[(int64_t) y0 * w + x0 + 1] : 0.0f;
    const float v10 = okx0 && oky1 ? in[(int64_t) (y0 + 1) * w + x0] : 0.0f;
    const float v11 = okx1 && oky1 ? in[(int64_t) (y0 + 1) * w + x0 + 1] : 0.0f;
    return (1.0f - fy) * ((1.0f - fx) * v00 + fx * v01) + fy * ((1.0f - fx) * v10 + fx * v11);
}

/* out(x, y) = in(affine(x, y) + elastic displacement(x, y)); grid NULL: no displacement. */
static void gmn_resample(const float * in, int h, int w, const float a[6], const float * grid, float spacing, float * out) {
    const float cx = 0.5f * (float) (w - 1), cy = 0.5f * (float) (h - 1);
    const int64_t gw = grid ? gmn_grid_points(spacing, w) : 0;
    for (int y = 0; y < h; y++) {
        const float dy = (float) y - cy;
        float gy = 0.0f;
        int64_t j = 0;
        if (grid) {
            const float t = (float) y / spacing;
            j = (int64_t) t;
            gy = t - (float) j;
        }
        for (int x = 0; x < w; x++) {
            const float dx = (float) x - cx;
            float sx = a[0] * dx + a[1] * dy + cx + a[2];
            float sy = a[3] * dx + a[4] * dy + cy + a[5];
            if (grid) {
                const float t = (float) x / spacing;
                const int64_t i = (int64_t) t;
                const float gx = t - (float) i;
                const float * g00 = grid + 2 * (j * gw + i);
                const float * g10 = g00 + 2 * gw;
                const float w00 = (1.0f - gx) * (1.0f - gy), w01 = gx * (1.0f - gy), w10 = (1.0f - gx) * gy, w11 = gx * gy;
                sx += w00 * g00[0] + w01 * g00[2] + w10 * g10[0] + w11 * g10[2];
                sy += w00 * g00[1] + w01 * g00[3] + w10 * g10[1] + w11 * g10[3];
            }
            out[(int64_t) y * w + x] = gmn_sample(in, h, w, sx, sy);
        }
    }
}

int gmn_image_warp(const float * in, int h, int w, const float a[6], float * out) {
    gmn_clear_error();
    if (in == NULL || a == NULL || out == NULL) {
        return gmn_fail(GMN_E_INVALID, "image_warp: NULL argument");
    }
    if (h < 1 || w < 1 || h > GMN_MAX_IMAGE_SIDE || w > GMN_MAX_IMAGE_SIDE) {
        return gmn_fail(GMN_E_INVALID, "image_warp: image of %dx%d is outside 1..%d pixels per side", h, w, GMN_MAX_IMAGE_SIDE);
    }
    for (int k = 0; k < 6; k++) {
        if (!isfinite(a[k])) {
            return gmn_fail(GMN_E_INVALID, "image_warp: matrix entry %d is not finite", k);
        }
    }
    gmn_resample(in, h, w, a, NULL, 1.0f, out);
    return GMN_OK;
}

static float gmn_sym(struct gmn_rng * rng, float range) {
    return (float) (2.0 * gmn_rng_uniform(rng) - 1.0) * range;
}

/* The inverse of content transform p -> R(rot) Sh(shear) s F p + t about the centre, as gmn_resample's a[6];
 * F mirrors x with probability aug->flip (drawn last, and only when flip > 0, so other settings keep their streams). */
static void gmn_draw_affine(const struct gmn_augment * aug, struct gmn_rng * rng, float a[6]) {
    const double deg = M_PI / 180.0;
    const double rot = gmn_sym(rng, aug->rotate) * deg;
    const double shear = tan(gmn_sym(rng, aug->shear) * deg);
    const double s = 1.0 + gmn_sym(rng, aug->scale);
    const double tx = gmn_sym(rng, aug->shift), ty = gmn_sym(rng, aug->shift);
    const double c = cos(rot), sn = sin(rot);
    /* M = R * [[1, shear], [0, 1]] * s */
    const double m00 = s * c, m01 = s * (c * shear - sn), m10 = s * sn, m11 = s * (sn * shear + c);
    const double det = m00 * m11 - m01 * m10; /* = s^2 > 0 */
    const double i00 = m11 / det, i01 = -m01 / det, i10 = -m10 / det, i11 = m00 / det;
    const double f = aug->flip > 0.0f && gmn_rng_uniform(rng) < (double) aug->flip ? -1.0 : 1.0; /* F^-1 = F */
    a[0] = (float) (f * i00);
    a[1] = (float) (f * i01);
    a[2] = (float) (-f * (i00 * tx + i01 * ty));
    a[3] = (float) i10;
    a[4] = (float) i11;
    a[5] = (float) -(i10 * tx + i11 * ty);
}

uint64_t gmn_augment_image_seed(uint64_t seed, uint64_t index) {
    return seed ^ (index * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL);
}

void gmn_augment_one(const struct gmn_augment * aug, uint64_t image_seed, struct gmn_aug_ws * ws, const uint8_t * img,
                     int h, int w, float * out) {
    const int64_t npix = (int64_t) h * w;
    struct gmn_rng state;
    struct gmn_rng * rng = &state;
    gmn_rng_seed(rng, image_seed);
    gmn_u8_to_f32(ws->src, img, npix);
    float a[6];
    gmn_draw_affine(aug, rng, a);
    const float * grid = NULL;
    if (aug->elastic > 0.0f) {
        const int64_t n = gmn_grid_points(aug->elastic_grid, w) * gmn_grid_points(aug->elastic_grid, h);
        for (int64_t i = 0; i < 2 * n; i++) {
            ws->grid[i] = gmn_sym(rng, aug->elastic);
        }
        grid = ws->grid;
    }
    gmn_resample(ws->src, h, w, a, grid, aug->elastic_grid, out);
    for (int k = 0; k < aug->noise_pixels; k++) {
        const int64_t i = (int64_t) (gmn_rng_next(rng) % (uint64_t) npix);
        out[i] = 1.0f - out[i];
    }
}

int gmn_augment_images(const struct gmn_augment * aug, uint64_t seed, const uint8_t * images, int64_t n, int h, int w, float * out) {
    gmn_ensure_init();
    int rc = gmn_augment_check(aug, h, w);
    if (rc != GMN_OK) {
        return rc;
    }
    if (images == NULL || out == NULL || n < 0) {
        return gmn_fail(GMN_E_INVALID, "augment_images: NULL buffer or n < 0");
    }
    struct gmn_aug_ws ws;
    rc = gmn_aug_ws_init(&ws, aug, h, w);
    if (rc != GMN_OK) {
        return rc;
    }
    const int64_t npix = (int64_t) h * w;
    for (int64_t i = 0; i < n; i++) {
        gmn_augment_one(aug, gmn_augment_image_seed(seed, (uint64_t) i), &ws, images + i * npix, h, w, out + i * npix);
    }
    gmn_aug_ws_free(&ws);
    return GMN_OK;
}
