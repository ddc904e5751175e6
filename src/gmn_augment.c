/* gmn_augment.c - seeded training-time image transforms: affine, elastic, whole-pixel crops, pixel-flip noise and
 * random erasing. */
#include "gmn_internal.h"

#include <math.h>
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

/* Random erasing (Zhong et al. 2017): the rectangle covers GMN_ERASE_MIN_AREA .. erase_area of the image, its
 * height over width log-uniform in [GMN_ERASE_RATIO, 1 / GMN_ERASE_RATIO]; a draw that does not fit the image is
 * drawn again, up to GMN_ERASE_TRIES times, after which the image stays whole. */
#define GMN_ERASE_MIN_AREA 0.02f
#define GMN_ERASE_RATIO    0.3
#define GMN_ERASE_TRIES    10

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
    if (aug->crop < 0 || (float) aug->crop > half) {
        return gmn_fail(GMN_E_INVALID, "augment: crop %d must be in [0, %d] whole pixels (half the image side)", aug->crop,
                        (int) half);
    }
    if (!gmn_in_range(aug->erase, 0.0f, 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: erase %g must be a probability in [0, 1]", (double) aug->erase);
    }
    if (aug->erase > 0.0f && !gmn_in_range(aug->erase_area, GMN_ERASE_MIN_AREA, 1.0f)) {
        return gmn_fail(GMN_E_INVALID, "augment: erase_area %g must be in [%g, 1] (the largest share of the image erased)",
                        (double) aug->erase_area, (double) GMN_ERASE_MIN_AREA);
    }
    if (aug->noise_pixels < 0 || (int64_t) aug->noise_pixels > (int64_t) h * w) {
        return gmn_fail(GMN_E_INVALID, "augment: noise_pixels %d must be in [0, %lld] (the pixels of an image)",
                        aug->noise_pixels, (long long) h * w);
    }
    return GMN_OK;
}

int gmn_augment_active(const struct gmn_augment * aug) {
    return aug->shift > 0.0f || aug->rotate > 0.0f || aug->scale > 0.0f || aug->shear > 0.0f || aug->elastic > 0.0f ||
           aug->noise_pixels > 0 || aug->flip > 0.0f || aug->crop > 0 || aug->erase > 0.0f;
}

static int64_t gmn_grid_points(float spacing, int side) {
    return (int64_t) floorf((float) (side - 1) / spacing) + 2;
}

/* The source image is kept with a zero border, 1 pixel on the top and left and 2 on the bottom and right, so
 * that a bilinear sample anywhere reads 4 valid cells with no bounds checks (below). */
#define GMN_PAD_LO 1
#define GMN_PAD_HI 2

static size_t gmn_padded_floats(int h, int w) {
    return (size_t) (h + GMN_PAD_LO + GMN_PAD_HI) * (size_t) (w + GMN_PAD_LO + GMN_PAD_HI);
}

int gmn_aug_ws_init(struct gmn_aug_ws * ws, const struct gmn_augment * aug, int h, int w) {
    memset(ws, 0, sizeof(*ws));
    ws->src = calloc(gmn_padded_floats(h, w), sizeof(float)); /* the border stays 0 */
    int ok = ws->src != NULL;
    if (aug->elastic > 0.0f) {
        const int64_t gw = gmn_grid_points(aug->elastic_grid, w), gh = gmn_grid_points(aug->elastic_grid, h);
        ws->grid = malloc((size_t) (2 * gw * gh) * sizeof(float));
        ws->rows = malloc((size_t) (2 * gh * w) * sizeof(float));
        /* + 8: the vector sampler reads a whole vector at the end of the last row */
        ws->disp = calloc((size_t) (2 * h * w + 8), sizeof(float));
        ok = ok && ws->grid != NULL && ws->rows != NULL && ws->disp != NULL;
    }
    if (!ok) {
        gmn_aug_ws_free(ws);
        return gmn_fail(GMN_E_NOMEM, "augment: out of memory");
    }
    return GMN_OK;
}

void gmn_aug_ws_free(struct gmn_aug_ws * ws) {
    if (ws != NULL) {
        free(ws->src);
        free(ws->grid);
        free(ws->rows);
        free(ws->disp);
        memset(ws, 0, sizeof(*ws));
    }
}

/* Bilinear sample of the image at (sx, sy), 0 outside it; src points at pixel (0, 0) of a padded image whose
 * rows are stride floats apart. Coordinates are clamped to [-1, side]: at either end both cells that carry
 * weight lie in the zero border, so the result is 0 exactly as outside the image, and inside the clamp changes
 * nothing. With integer coordinates the result is exactly a pixel. */
static inline float gmn_sample(const float * src, int64_t stride, int h, int w, float sx, float sy) {
    sx = !(sx >= -1.0f) ? -1.0f : (sx > (float) w ? (float) w : sx); /* NaN (inf - inf) -> -1, as _mm256_max_ps does */
    sy = !(sy >= -1.0f) ? -1.0f : (sy > (float) h ? (float) h : sy);
    /* sx, sy >= -1 here, so truncating sx + 1 floors it (cheaper than floorf without SSE4.1) */
    const int x0 = (int) (sx + 1.0f) - 1, y0 = (int) (sy + 1.0f) - 1;
    const float fx = sx - (float) x0, fy = sy - (float) y0;
    const float * p = src + (int64_t) y0 * stride + x0;
    return (1.0f - fy) * ((1.0f - fx) * p[0] + fx * p[1]) + fy * ((1.0f - fx) * p[stride] + fx * p[stride + 1]);
}

/* out(x, y) = in(affine(x, y) + (dx(x, y), dy(x, y))), where the displacement disp holds dx for every pixel and
 * then dy (NULL: none). The AVX2 path computes 8 pixels at a time with the same operations in the same order as
 * the plain one (no fused multiply-adds), so both give the same bits; a row's last partial vector is computed
 * whole (the clamp keeps every lane's reads inside the padded image) and stored in part. */
#if defined(__GNUC__) && defined(__x86_64__)
#define GMN_AUG_AVX2 1
__attribute__((target("avx2"))) static void gmn_resample_avx2(const float * src, int64_t stride, int h, int w,
                                                             const float a[6], const float * disp, float * out) {
    const float cx = 0.5f * (float) (w - 1), cy = 0.5f * (float) (h - 1);
    const __m256 a0 = _mm256_set1_ps(a[0]), a2 = _mm256_set1_ps(a[2]), a3 = _mm256_set1_ps(a[3]), a5 = _mm256_set1_ps(a[5]);
    const __m256 lo = _mm256_set1_ps(-1.0f), hix = _mm256_set1_ps((float) w), hiy = _mm256_set1_ps((float) h);
    const __m256 one = _mm256_set1_ps(1.0f), vcx = _mm256_set1_ps(cx), vcy = _mm256_set1_ps(cy);
    const __m256i vstride = _mm256_set1_epi32((int) stride), ione = _mm256_set1_epi32(1);
    const __m256 lane = _mm256_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f);
    const int64_t npix = (int64_t) h * w;
    float tail[8];
    for (int y = 0; y < h; y++) {
        const float dy = (float) y - cy;
        const __m256 rx = _mm256_set1_ps(a[1] * dy), ry = _mm256_set1_ps(a[4] * dy);
        float * o = out + (int64_t) y * w;
        for (int x = 0; x < w; x += 8) {
            const __m256 dx = _mm256_sub_ps(_mm256_add_ps(_mm256_set1_ps((float) x), lane), vcx);
            __m256 sx = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(a0, dx), rx), vcx), a2);
            __m256 sy = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(a3, dx), ry), vcy), a5);
            if (disp != NULL) {
                const float * d = disp + (int64_t) y * w + x;
                sx = _mm256_add_ps(sx, _mm256_loadu_ps(d));
                sy = _mm256_add_ps(sy, _mm256_loadu_ps(d + npix));
            }
            sx = _mm256_min_ps(_mm256_max_ps(sx, lo), hix);
            sy = _mm256_min_ps(_mm256_max_ps(sy, lo), hiy);
            const __m256i x0 = _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_add_ps(sx, one)), ione);
            const __m256i y0 = _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_add_ps(sy, one)), ione);
            const __m256 fx = _mm256_sub_ps(sx, _mm256_cvtepi32_ps(x0)), fy = _mm256_sub_ps(sy, _mm256_cvtepi32_ps(y0));
            const __m256 gx = _mm256_sub_ps(one, fx), gy = _mm256_sub_ps(one, fy);
            const __m256i i00 = _mm256_add_epi32(_mm256_mullo_epi32(y0, vstride), x0);
            const __m256i i10 = _mm256_add_epi32(i00, vstride);
            const __m256 p00 = _mm256_i32gather_ps(src, i00, 4), p01 = _mm256_i32gather_ps(src + 1, i00, 4);
            const __m256 p10 = _mm256_i32gather_ps(src, i10, 4), p11 = _mm256_i32gather_ps(src + 1, i10, 4);
            const __m256 top = _mm256_add_ps(_mm256_mul_ps(gx, p00), _mm256_mul_ps(fx, p01));
            const __m256 bot = _mm256_add_ps(_mm256_mul_ps(gx, p10), _mm256_mul_ps(fx, p11));
            const __m256 v = _mm256_add_ps(_mm256_mul_ps(gy, top), _mm256_mul_ps(fy, bot));
            if (x + 8 <= w) {
                _mm256_storeu_ps(o + x, v);
            } else {
                _mm256_storeu_ps(tail, v);
                memcpy(o + x, tail, (size_t) (w - x) * sizeof(float));
            }
        }
    }
}
#endif

static void gmn_resample(const float * src, int64_t stride, int h, int w, const float a[6], const float * disp, float * out) {
#ifdef GMN_AUG_AVX2
    if (__builtin_cpu_supports("avx2")) {
        gmn_resample_avx2(src, stride, h, w, a, disp, out);
        return;
    }
#endif
    const float cx = 0.5f * (float) (w - 1), cy = 0.5f * (float) (h - 1);
    const int64_t npix = (int64_t) h * w;
    for (int y = 0; y < h; y++) {
        const float dy = (float) y - cy;
        for (int x = 0; x < w; x++) {
            const float dx = (float) x - cx;
            const int64_t k = (int64_t) y * w + x;
            float sx = a[0] * dx + a[1] * dy + cx + a[2], sy = a[3] * dx + a[4] * dy + cy + a[5];
            if (disp != NULL) {
                sx += disp[k];
                sy += disp[k + npix];
            }
            out[k] = gmn_sample(src, stride, h, w, sx, sy);
        }
    }
}

/* The elastic displacement of every pixel: the bilinear interpolation of the control points in ws->grid (x, y
 * pairs, spacing pixels apart), first along each control row, then between rows. */
static void gmn_elastic_field(struct gmn_aug_ws * ws, int h, int w, float spacing) {
    const int64_t gw = gmn_grid_points(spacing, w), gh = gmn_grid_points(spacing, h);
    const int64_t npix = (int64_t) h * w;
    for (int64_t r = 0; r < gh; r++) {
        const float * g = ws->grid + 2 * r * gw;
        float * rx = ws->rows + 2 * r * w;
        for (int x = 0; x < w; x++) {
            const float t = (float) x / spacing;
            const int64_t i = (int64_t) t;
            const float f = t - (float) i;
            rx[x] = (1.0f - f) * g[2 * i] + f * g[2 * i + 2];
            rx[x + w] = (1.0f - f) * g[2 * i + 1] + f * g[2 * i + 3];
        }
    }
    for (int y = 0; y < h; y++) {
        const float t = (float) y / spacing;
        const int64_t j = (int64_t) t;
        const float f = t - (float) j;
        const float * r0 = ws->rows + 2 * j * w;
        const float * r1 = r0 + 2 * w;
        float * dx = ws->disp + (int64_t) y * w;
        float * dy = dx + npix;
        for (int x = 0; x < w; x++) {
            dx[x] = (1.0f - f) * r0[x] + f * r1[x];
            dy[x] = (1.0f - f) * r0[x + w] + f * r1[x + w];
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
    float * pad = calloc(gmn_padded_floats(h, w), sizeof(float));
    if (pad == NULL) {
        return gmn_fail(GMN_E_NOMEM, "image_warp: out of memory for a %dx%d image", h, w);
    }
    const int64_t stride = w + GMN_PAD_LO + GMN_PAD_HI;
    float * src = pad + GMN_PAD_LO * stride + GMN_PAD_LO;
    for (int y = 0; y < h; y++) {
        memcpy(src + y * stride, in + (int64_t) y * w, (size_t) w * sizeof(float));
    }
    gmn_resample(src, stride, h, w, a, NULL, out);
    free(pad);
    return GMN_OK;
}

static float gmn_sym(struct gmn_rng * rng, float range) {
    return (float) (2.0 * gmn_rng_uniform(rng) - 1.0) * range;
}

/* A whole number in [-range, range], each equally likely. */
static int gmn_sym_int(struct gmn_rng * rng, int range) {
    return (int) (gmn_rng_next(rng) % (uint64_t) (2 * range + 1)) - range;
}

/* The inverse of content transform p -> R(rot) Sh(shear) s F p + t + crop about the centre, as gmn_resample's a[6];
 * F mirrors x with probability aug->flip (drawn last, and only when flip > 0, so other settings keep their streams);
 * crop[2] is the whole-pixel crop offset (drawn from a stream of its own). With no rotation, shear or scale, a crop
 * alone gives an integer a[2] and a[5], so every pixel is copied exactly (gmn_sample). */
static void gmn_draw_affine(const struct gmn_augment * aug, struct gmn_rng * rng, const int crop[2], float a[6]) {
    const double deg = M_PI / 180.0;
    const double rot = gmn_sym(rng, aug->rotate) * deg;
    const double shear = tan(gmn_sym(rng, aug->shear) * deg);
    const double s = 1.0 + gmn_sym(rng, aug->scale);
    double tx = gmn_sym(rng, aug->shift), ty = gmn_sym(rng, aug->shift);
    const double c = cos(rot), sn = sin(rot);
    /* M = R * [[1, shear], [0, 1]] * s */
    const double m00 = s * c, m01 = s * (c * shear - sn), m10 = s * sn, m11 = s * (sn * shear + c);
    const double det = m00 * m11 - m01 * m10; /* = s^2 > 0 */
    const double i00 = m11 / det, i01 = -m01 / det, i10 = -m10 / det, i11 = m00 / det;
    const double f = aug->flip > 0.0f && gmn_rng_uniform(rng) < (double) aug->flip ? -1.0 : 1.0; /* F^-1 = F */
    tx += crop[0];
    ty += crop[1];
    a[0] = (float) (f * i00);
    a[1] = (float) (f * i01);
    a[2] = (float) (-f * (i00 * tx + i01 * ty));
    a[3] = (float) i10;
    a[4] = (float) i11;
    a[5] = (float) -(i10 * tx + i11 * ty);
}

/* With probability aug->erase, fill one random rectangle of out with uniform values in [0, 1). */
static void gmn_erase(const struct gmn_augment * aug, struct gmn_rng * rng, int h, int w, float * out) {
    if (!(gmn_rng_uniform(rng) < (double) aug->erase)) {
        return;
    }
    const double npix = (double) h * (double) w, log_ratio = log(GMN_ERASE_RATIO);
    for (int t = 0; t < GMN_ERASE_TRIES; t++) {
        const double area = npix * (GMN_ERASE_MIN_AREA + gmn_rng_uniform(rng) * (aug->erase_area - GMN_ERASE_MIN_AREA));
        const double ratio = exp(log_ratio * (1.0 - 2.0 * gmn_rng_uniform(rng))); /* height / width */
        const int eh = (int) lround(sqrt(area * ratio)), ew = (int) lround(sqrt(area / ratio));
        if (eh < 1 || ew < 1 || eh > h || ew > w) {
            continue;
        }
        const int y0 = (int) (gmn_rng_next(rng) % (uint64_t) (h - eh + 1));
        const int x0 = (int) (gmn_rng_next(rng) % (uint64_t) (w - ew + 1));
        for (int y = y0; y < y0 + eh; y++) {
            for (int x = x0; x < x0 + ew; x++) {
                out[(int64_t) y * w + x] = (float) (gmn_rng_next(rng) >> 40) * 0x1p-24f; /* [0, 1): 24 bits */
            }
        }
        return;
    }
}

uint64_t gmn_augment_image_seed(uint64_t seed, uint64_t index) {
    return seed ^ (index * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL);
}

void gmn_augment_one(const struct gmn_augment * aug, uint64_t image_seed, struct gmn_aug_ws * ws, const uint8_t * img,
                     int h, int w, float * out) {
    const int64_t npix = (int64_t) h * w;
    const int64_t stride = w + GMN_PAD_LO + GMN_PAD_HI;
    float * src = ws->src + GMN_PAD_LO * stride + GMN_PAD_LO;
    for (int y = 0; y < h; y++) {
        gmn_u8_to_f32(src + y * stride, img + (int64_t) y * w, w);
    }
    struct gmn_rng state;
    struct gmn_rng * rng = &state;
    gmn_rng_seed(rng, image_seed);
    int crop[2] = { 0, 0 };
    if (aug->crop > 0) { /* a stream of its own: turning the crop on changes no other draw of the image */
        struct gmn_rng crop_rng;
        gmn_rng_seed(&crop_rng, image_seed ^ 0x243f6a8885a308d3ULL);
        crop[0] = gmn_sym_int(&crop_rng, aug->crop);
        crop[1] = gmn_sym_int(&crop_rng, aug->crop);
    }
    float a[6];
    gmn_draw_affine(aug, rng, crop, a);
    if (aug->elastic > 0.0f) {
        const int64_t n = gmn_grid_points(aug->elastic_grid, w) * gmn_grid_points(aug->elastic_grid, h);
        for (int64_t i = 0; i < 2 * n; i++) {
            ws->grid[i] = gmn_sym(rng, aug->elastic);
        }
        gmn_elastic_field(ws, h, w, aug->elastic_grid);
    }
    gmn_resample(src, stride, h, w, a, aug->elastic > 0.0f ? ws->disp : NULL, out);
    for (int k = 0; k < aug->noise_pixels; k++) {
        const int64_t i = (int64_t) (gmn_rng_next(rng) % (uint64_t) npix);
        out[i] = 1.0f - out[i];
    }
    if (aug->erase > 0.0f) {
        gmn_erase(aug, rng, h, w, out);
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
