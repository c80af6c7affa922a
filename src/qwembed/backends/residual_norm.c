/* A BERT layer's "add & norm" in one pass over memory, for the mixed-bf16 forward on CPUs.
 *
 * Eager PyTorch spends five passes on it: widen the Linear layer's bf16 output to float32, add it
 * to the float32 residual stream, LayerNorm (two reads, one write), and round the result to bf16
 * for the next Linear layer. On all-MiniLM-L6-v2 those took a fifth of the time of short texts
 * once attention was fast (docs/benchmarks.md). Here each row of ``width`` values stays in L1:
 *
 *   hidden[r] ← LayerNorm(hidden[r] + delta[r]) · gamma + beta      (float32, in place)
 *   rounded[r] ← bf16(hidden[r])                                    (the next layer's input)
 *
 * with the mean and the biased variance of the sum, as torch.nn.LayerNorm computes them. ``width``
 * must be a multiple of 32. Rows are shared out over torch's OpenMP threads (the library links
 * the libgomp torch loaded; see native.py).
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

static inline __m512 widen(const uint16_t *bf16) { /* 16 bf16 → float32: the high half of each word */
    __m512i words = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)bf16));
    return _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
}

static void one_row(float *h, const uint16_t *d, const float *gamma, const float *beta, int width, float eps,
                    uint16_t *rounded) {
    __m512 total = _mm512_setzero_ps();
    for (int c = 0; c < width; c += 16) {
        __m512 x = _mm512_add_ps(_mm512_loadu_ps(h + c), widen(d + c));
        _mm512_storeu_ps(h + c, x);
        total = _mm512_add_ps(total, x);
    }
    float mean = _mm512_reduce_add_ps(total) / width;
    __m512 centre = _mm512_set1_ps(mean), squares = _mm512_setzero_ps();
    for (int c = 0; c < width; c += 16) {
        __m512 x = _mm512_sub_ps(_mm512_loadu_ps(h + c), centre);
        squares = _mm512_fmadd_ps(x, x, squares);
    }
    __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / width + eps));
    for (int c = 0; c < width; c += 32) {
        __m512 low = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(h + c), centre), scale);
        __m512 high = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(h + c + 16), centre), scale);
        low = _mm512_fmadd_ps(low, _mm512_loadu_ps(gamma + c), _mm512_loadu_ps(beta + c));
        high = _mm512_fmadd_ps(high, _mm512_loadu_ps(gamma + c + 16), _mm512_loadu_ps(beta + c + 16));
        _mm512_storeu_ps(h + c, low);
        _mm512_storeu_ps(h + c + 16, high);
        _mm512_storeu_si512(rounded + c, (__m512i)_mm512_cvtne2ps_pbh(high, low));
    }
}

/* The calling thread's OpenMP thread count (checked at load against torch.get_num_threads()). */
int qw_norm_threads(void) { return omp_get_max_threads(); }

/* ``rows`` rows of ``width``: hidden (float32, updated in place), delta and rounded (bf16). Returns
 * 0, or -1 when ``width`` is not a multiple of 32. */
int qw_residual_layernorm(float *hidden, const uint16_t *delta, const float *gamma, const float *beta, int64_t rows,
                          int width, float eps, uint16_t *rounded) {
    if (width <= 0 || width % 32 != 0) return -1;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        one_row(hidden + r * width, delta + r * width, gamma, beta, width, eps, rounded + r * width);
    return 0;
}
