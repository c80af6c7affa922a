/* Qwen3's RMSNorms in one pass over memory each, for the mixed-bf16 forward on CPUs.
 *
 * Between its matrix products a Qwen3 layer normalises the residual stream for the next Linear
 * layer and, inside attention, normalises each query and key head and rotates it (RoPE). Eager
 * PyTorch spends several passes on each (casts between bf16 and float32, the norm, the scale, a
 * ``torch.roll`` that concatenates, multiply-adds), about 11 % of the 0.6B shape's forward on
 * 512-token documents once attention was fast (docs/benchmarks.md). Here each row or head stays
 * in registers and L1:
 *
 *   qw_rms_norm:        out[r] ← bf16(x[r] · rsqrt(mean(x[r]²) + eps) · weight)
 *                       (x float32, the residual stream, only read)
 *   qw_rotate_normed:   h ← bf16(n · cos[t] + rotate(n) · sin[t]),  n = h · rsqrt(mean(h²) + eps) · weight
 *                       for every head h of token t, in place in the bf16 QKV projection, where
 *                       rotate(n) = (−n₂, n₁) on the halves (Hugging Face's rotate_half)
 *
 * both computed in float32 and rounded to bf16 once, as ``qwen3_pointwise.py``'s eager steps do.
 * Widths must be multiples of 32. Rows (tokens) are shared out over torch's OpenMP threads (the
 * library links the libgomp torch loaded; see native.py).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

static inline __m512 widen(const uint16_t *bf16) { /* 16 bf16 → float32: the high half of each word */
    __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)bf16));
    return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
}

/* 1 / sqrt(mean(x²) + eps) over ``width`` float32 values, two accumulators. */
static inline float inverse_rms(const float *x, int width, float eps) {
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    for (int c = 0; c < width; c += 32) {
        __m512 low = _mm512_loadu_ps(x + c), high = _mm512_loadu_ps(x + c + 16);
        a = _mm512_fmadd_ps(low, low, a);
        b = _mm512_fmadd_ps(high, high, b);
    }
    return 1.0f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(a, b)) / width + eps);
}

/* The calling thread's OpenMP thread count (checked at load against torch.get_num_threads()). */
int qw_rms_threads(void) { return omp_get_max_threads(); }

/* ``rows`` rows of ``width`` float32 values → their norms in bf16. Returns 0, or -1 when
 * ``width`` is not a multiple of 32. */
int qw_rms_norm(const float *x, int64_t rows, int width, const float *weight, float eps, uint16_t *out) {
    if (width <= 0 || width % 32 != 0) return -1;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * width;
        __m512 scale = _mm512_set1_ps(inverse_rms(row, width, eps));
        for (int c = 0; c < width; c += 32) {
            __m512 low = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(row + c), scale), _mm512_loadu_ps(weight + c));
            __m512 high = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(row + c + 16), scale),
                                        _mm512_loadu_ps(weight + c + 16));
            _mm512_storeu_si512(out + r * width + c, (__m512i)_mm512_cvtne2ps_pbh(high, low));
        }
    }
    return 0;
}

/* ``count`` heads of ``width`` per token, token t's first head at ``heads + t × token_stride``
 * (the heads of one token are adjacent), normalised and rotated in place; ``cos`` and ``sin``
 * are (tokens, width) float32. Returns 0, or -1 when ``width`` is not a multiple of 32 or above
 * 256. */
int qw_rotate_normed(uint16_t *heads, int64_t tokens, int64_t token_stride, int count, int width,
                     const float *weight, float eps, const float *cos, const float *sin) {
    if (width <= 0 || width % 32 != 0 || width > 256) return -1;
    int half = width / 2;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        /* the norm's weight folded into this token's tables, once for all its heads: RoPE(w ⊙ n)
         * = (w ⊙ n) · cos + rotate(w ⊙ n) · sin, and rotate(w ⊙ n) = (−w₂ ⊙ n₂, w₁ ⊙ n₁) */
        float cos_w[256], sin_w[256], h[256];
        for (int c = 0; c < half; c += 16) {
            __m512 w1 = _mm512_loadu_ps(weight + c), w2 = _mm512_loadu_ps(weight + half + c);
            _mm512_storeu_ps(cos_w + c, _mm512_mul_ps(_mm512_loadu_ps(cos + t * width + c), w1));
            _mm512_storeu_ps(cos_w + half + c, _mm512_mul_ps(_mm512_loadu_ps(cos + t * width + half + c), w2));
            /* the sign of rotate's first half goes into the table */
            _mm512_storeu_ps(sin_w + c, _mm512_mul_ps(_mm512_loadu_ps(sin + t * width + c), _mm512_sub_ps(_mm512_setzero_ps(), w2)));
            _mm512_storeu_ps(sin_w + half + c, _mm512_mul_ps(_mm512_loadu_ps(sin + t * width + half + c), w1));
        }
        for (int k = 0; k < count; k++) {
            uint16_t *head = heads + t * token_stride + (int64_t)k * width;
            for (int c = 0; c < width; c += 16) _mm512_storeu_ps(h + c, widen(head + c));
            __m512 scale = _mm512_set1_ps(inverse_rms(h, width, eps));
            for (int c = 0; c < half; c += 16) {
                __m512 first = _mm512_mul_ps(_mm512_loadu_ps(h + c), scale);
                __m512 second = _mm512_mul_ps(_mm512_loadu_ps(h + half + c), scale);
                __m512 out1 = _mm512_fmadd_ps(first, _mm512_loadu_ps(cos_w + c),
                                              _mm512_mul_ps(second, _mm512_loadu_ps(sin_w + c)));
                __m512 out2 = _mm512_fmadd_ps(second, _mm512_loadu_ps(cos_w + half + c),
                                              _mm512_mul_ps(first, _mm512_loadu_ps(sin_w + half + c)));
                _mm256_storeu_si256((__m256i *)(head + c), (__m256i)_mm512_cvtneps_pbh(out1));
                _mm256_storeu_si256((__m256i *)(head + half + c), (__m256i)_mm512_cvtneps_pbh(out2));
            }
        }
    }
    return 0;
}
