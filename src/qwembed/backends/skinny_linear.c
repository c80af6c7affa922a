/* A bf16 Linear layer for a few rows at a time: the weights streamed from memory once, at the
 * memory's speed.
 *
 * A lone query computes five or six tokens of its own once its instruction comes from the prefix
 * cache, and the last layer of any batch one row per text. With that few rows a Linear layer is
 * bound by reading its weights: 0.88 GB of bf16 per forward of the Qwen3-0.6B shape, 29 ms at the
 * ~31 GB/s a 2-core Zen 4 VM reads. oneDNN's bf16 matmul on plain (not prepacked) weights read
 * them at 12-19 GB/s there for 1 to 8 rows (docs/benchmarks.md). Here each thread walks its own
 * share of the weight's rows, ``ROWS`` at a time, front to back, and keeps every input row's
 * products with them in registers:
 *
 *   out[m, n] ← bf16(epilogue(Σ_k x[m, k] · weight[n, k] + bias[n]))
 *
 * with float32 sums (VDPBF16PS, as oneDNN's AVX512-BF16 kernels) and one rounding at the end.
 * ``epilogue``: 0 nothing, 1 SiLU, 2 times ``other[m, n]`` (a gated MLP's up projection times
 * its activated gate), the post-ops ``fused_linear.py`` asks of oneDNN.
 *
 * What made it fast: a software prefetch of the rows ``PREFETCH_AHEAD`` steps ahead into L2.
 * Without it the hardware prefetcher fell behind as soon as the rows' products took time (19 GB/s
 * at 6 rows); with it 29-38 GB/s at 1-8 rows. Rows of ``x`` go ``TILE`` at a time (24
 * accumulators, a weight step and an input in 29 of the 32 vector registers); the weight rows
 * they share stay in L1 between tiles.
 *
 * ``in_features`` must be a multiple of 32 and ``out_features`` of ``ROWS``: 1 is returned
 * otherwise, and nothing written. Weight rows are shared out over torch's OpenMP threads (the
 * library links the libgomp torch loaded; see native.py).
 *
 * ``qw_skinny_linear_f32`` is the same for float32 models (CPUs without bf16 units keep exact
 * float32), in AVX2 and FMA so that it builds for every x86-64 CPU of the last decade: 16 vector
 * registers hold 8 sums of two input rows against four weight rows. oneDNN's float32 matmul read
 * its weights at 18 GB/s for 6 rows, the kernel at 36. The bf16 kernel is in the build only where
 * the compiler is told the CPU has AVX512-BF16 (``__AVX512BF16__``).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define ROWS 4           /* weight rows per step */
#define TILE 6           /* input rows per pass over a step's weight rows (bf16) */
#define TILE_F32 2       /* the same in float32: 3 would need 17 of AVX2's 16 registers */
#define PREFETCH_AHEAD 2 /* steps ahead (8 weight rows): 1 to 4 measured alike, 2 best */

enum { EPILOGUE_NONE = 0, EPILOGUE_SILU = 1, EPILOGUE_TIMES = 2 };

int qw_skinny_threads(void) { return omp_get_max_threads(); }

static inline float epilogue_of(float sum, int epilogue, float factor) {
    if (epilogue == EPILOGUE_SILU) return sum / (1.0f + expf(-sum));
    if (epilogue == EPILOGUE_TIMES) return sum * factor;
    return sum;
}

static int unsupported(int64_t in_features, int64_t out_features, int epilogue, const void *other) {
    return in_features % 32 || out_features % ROWS || epilogue < EPILOGUE_NONE || epilogue > EPILOGUE_TIMES
        || (epilogue == EPILOGUE_TIMES && !other);
}

/* Calls ``STEP(first, tile)`` for every tile of ``rows`` input rows: full tiles of ``FULL``, then the
 * rest, each count its own inlined copy (a constant tile keeps the sums in registers). */
#define EVERY_TILE(FULL, STEP)                                                   \
    do {                                                                         \
        int64_t first = 0;                                                       \
        for (; first + (FULL) <= rows; first += (FULL)) STEP(first, (FULL));     \
        switch (rows - first) {                                                  \
            case 5: if ((FULL) > 5) STEP(first, 5); break;                       \
            case 4: if ((FULL) > 4) STEP(first, 4); break;                       \
            case 3: if ((FULL) > 3) STEP(first, 3); break;                       \
            case 2: if ((FULL) > 2) STEP(first, 2); break;                       \
            case 1: STEP(first, 1); break;                                       \
            default: break;                                                      \
        }                                                                        \
    } while (0)

/* ---- float32 (AVX2, FMA) ---- */

static inline float sum_of(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline __attribute__((always_inline)) void step_f32(
    const float *x, int64_t first, int tile, int64_t in_features, const float *weight, int64_t n,
    int64_t out_features, const float *bias, int epilogue, const float *other, float *out)
{
    __m256 sums[TILE_F32][ROWS];
    for (int i = 0; i < tile; i++)
        for (int j = 0; j < ROWS; j++) sums[i][j] = _mm256_setzero_ps();
    const int prefetch = n + (PREFETCH_AHEAD + 1) * ROWS <= out_features;
    const float *ahead = prefetch ? weight + (n + PREFETCH_AHEAD * ROWS) * in_features : weight;
    for (int64_t k = 0; k < in_features; k += 8) {
        __m256 w[ROWS];
        for (int j = 0; j < ROWS; j++) {
            w[j] = _mm256_loadu_ps(weight + (n + j) * in_features + k);
            if (prefetch && (k & 15) == 0) /* one prefetch per 64-byte line */
                _mm_prefetch((const char *)(ahead + j * in_features + k), _MM_HINT_T1);
        }
        for (int i = 0; i < tile; i++) {
            __m256 row = _mm256_loadu_ps(x + (first + i) * in_features + k);
            for (int j = 0; j < ROWS; j++) sums[i][j] = _mm256_fmadd_ps(row, w[j], sums[i][j]);
        }
    }
    for (int i = 0; i < tile; i++)
        for (int j = 0; j < ROWS; j++) {
            int64_t at = (first + i) * out_features + n + j;
            float sum = sum_of(sums[i][j]) + (bias ? bias[n + j] : 0.0f);
            out[at] = epilogue_of(sum, epilogue, other ? other[at] : 0.0f);
        }
}

int qw_skinny_linear_f32(const float *x, int64_t rows, int64_t in_features, const float *weight,
                         int64_t out_features, const float *bias, int epilogue, const float *other, float *out)
{
    if (unsupported(in_features, out_features, epilogue, other)) return 1;
#define STEP_F32(first, tile) \
    step_f32(x, first, tile, in_features, weight, n, out_features, bias, epilogue, other, out)
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < out_features; n += ROWS) EVERY_TILE(TILE_F32, STEP_F32);
    return 0;
}

/* ---- bf16 (AVX512-BF16) ---- */
#ifdef __AVX512BF16__

static inline float from_bf16(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

/* ``tile`` input rows from ``first`` against weight rows n … n + ROWS - 1. Inlined with a constant
 * ``tile``, so that the accumulators are registers. */
static inline __attribute__((always_inline)) void step_bf16(
    const uint16_t *x, int64_t first, int tile, int64_t in_features, const uint16_t *weight,
    int64_t n, int64_t out_features, const uint16_t *bias, int epilogue, const uint16_t *other,
    uint16_t *out)
{
    __m512 sums[TILE][ROWS];
    for (int i = 0; i < tile; i++)
        for (int j = 0; j < ROWS; j++) sums[i][j] = _mm512_setzero_ps();
    const int prefetch = n + (PREFETCH_AHEAD + 1) * ROWS <= out_features;
    const uint16_t *ahead = prefetch ? weight + (n + PREFETCH_AHEAD * ROWS) * in_features : weight;
    for (int64_t k = 0; k < in_features; k += 32) {
        __m512bh w[ROWS];
        for (int j = 0; j < ROWS; j++) {
            w[j] = (__m512bh)_mm512_loadu_si512(weight + (n + j) * in_features + k);
            if (prefetch) _mm_prefetch((const char *)(ahead + j * in_features + k), _MM_HINT_T1);
        }
        for (int i = 0; i < tile; i++) {
            __m512bh row = (__m512bh)_mm512_loadu_si512(x + (first + i) * in_features + k);
            for (int j = 0; j < ROWS; j++) sums[i][j] = _mm512_dpbf16_ps(sums[i][j], row, w[j]);
        }
    }
    for (int i = 0; i < tile; i++) {
        float results[ROWS];
        for (int j = 0; j < ROWS; j++) {
            int64_t at = (first + i) * out_features + n + j;
            float sum = _mm512_reduce_add_ps(sums[i][j]) + (bias ? from_bf16(bias[n + j]) : 0.0f);
            results[j] = epilogue_of(sum, epilogue, other ? from_bf16(other[at]) : 0.0f);
        }
        __m128bh rounded = _mm_cvtneps_pbh(_mm_loadu_ps(results)); /* ROWS = 4 floats */
        _mm_storel_epi64((__m128i *)(out + (first + i) * out_features + n), (__m128i)rounded);
    }
}

int qw_skinny_linear(const uint16_t *x, int64_t rows, int64_t in_features, const uint16_t *weight,
                     int64_t out_features, const uint16_t *bias, int epilogue, const uint16_t *other,
                     uint16_t *out)
{
    if (unsupported(in_features, out_features, epilogue, other)) return 1;
#define STEP_BF16(first, tile) \
    step_bf16(x, first, tile, in_features, weight, n, out_features, bias, epilogue, other, out)
    #pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < out_features; n += ROWS) EVERY_TILE(TILE, STEP_BF16);
    return 0;
}
#endif
