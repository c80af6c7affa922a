/* Attention of packed bf16 sequences on a CPU — bidirectional (BERT encoders) or causal (Qwen3) —
 * one (sequence, key/value head) at a time, with one of two matrix back ends chosen at build time:
 * Intel AMX's tile unit (``-DQW_AMX``, Sapphire Rapids and later) or AVX512-BF16's ``vdpbf16ps``
 * dot products (AMD Zen 4 and later, Cooper Lake).
 *
 * Why this exists: PyTorch's CPU flash kernel runs bf16 heads narrower than 64 through a
 * general GEMM per block of 64 query rows and an exact exponential per score; with BERT-small's
 * 32-wide heads the softmax, not the matrix units, bounds it. Without AMX it multiplies bf16
 * through a GEMM that reaches 10-20 % of the vector units' bf16 rate on Qwen3's causal 128-wide
 * heads, where attention then takes 39 % of a 512-token forward and most of a longer one
 * (docs/benchmarks.md). Here a (sequence, head) pair is small enough to keep in cache (a
 * 512-token sequence's scores are 16 × 512 floats per block of 16 queries), so the kernel:
 *
 *   1. lays the head's keys and values out in pair-interleaved ("VNNI") order, once for all the
 *      query heads that share them (grouped-query attention): both AMX's tiles and
 *      ``vdpbf16ps`` multiply bf16 pairs into float32;
 *   2. per block of 16 queries: scores S = Q Kᵀ (bf16 in, fp32 out), causal blocks only up to
 *      the block's diagonal;
 *   3. a row softmax in AVX-512 with a polynomial 2^x (relative error 1e-4, well below the bf16
 *      rounding the probabilities get next), each row over the keys it may see;
 *   4. O = P V, divided by the row sums, rounded to bf16.
 *
 * The steps are software-pipelined: the softmax of one block runs on the vector units while the
 * tile unit computes the next block's scores and the previous block's context (on 8 × 256 tokens
 * and 12 heads, 1.25× the plain sequence of steps for 32-wide heads and 1.18× for 64-wide ones;
 * 2.0× and 1.6–1.9× PyTorch's kernel). Without AMX the same schedule runs on the vector units
 * alone; interleaving then only gives the out-of-order core independent work to overlap.
 *
 * Inputs are the packed projections of a batch, (tokens, q_heads + 2 × kv_heads, head_dim):
 * queries, then keys, then values, as ``packing.grouped_attention`` takes them; sequence ``s`` is
 * tokens bounds[s] .. bounds[s + 1]. Output: (tokens, q_heads × head_dim) bf16. What each build
 * handles is ``qw_attention_handles``: the AMX build bidirectional heads of 32 (MiniLM, BGE-small)
 * and 64 (BERT-base and -large shapes); the AVX512-BF16 build those and 128 (Qwen3), causal or
 * not. The (sequence, key/value head) items are shared out over torch's OpenMP threads by cost.
 *
 * Built at first use by ``cpu_attention.py`` with gcc or clang and loaded with ctypes; a build or
 * self-check failure leaves PyTorch's kernel in place.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TILE_ROWS 16  /* queries per block; keys per score block */
#define TILE_BYTES 64 /* 16 fp32, 32 bf16 or 16 bf16 pairs per (tile) row */

#ifdef QW_AMX
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Linux hands out the tile registers' state only to processes that ask (kernel ≥ 5.16). */
int qw_amx_request(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 0 : -1;
}
#endif

static inline int round_up(int n, int to) { return (n + to - 1) / to * to; }

/* 2^t for t <= 0: 2^f for the fraction f = t - floor(t) (vreduceps) by a cubic (least squares
 * on Chebyshev nodes, max relative error 1.0e-4, against the 3.9e-3 of the bf16 rounding that
 * follows), times 2^floor(t) by vscalefps, which flushes to 0 far below the row's maximum. Six
 * instructions for 16 values. */
static inline __m512 exp2_nonpositive(__m512 t) {
    __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.07908570124785536f), f, _mm512_set1_ps(0.22451634404565593f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.696390546655364f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9998966910282051f));
    return _mm512_scalef_ps(p, t);
}

static inline __mmask16 tail_mask(int remaining) {
    return remaining >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << remaining) - 1u);
}

/* Keys as the B operand of S = Q Kᵀ: for each 32-wide slice of the head and each block of 16
 * keys, 16 rows (pairs of head dimensions) × 16 keys of bf16 pairs, i.e. the 16 × 16 transpose
 * of the keys' 32-bit pairs, by gathers; keys past the sequence are zero. Layout
 * [slice][key block][pair][key]. */
static void pack_keys(const uint16_t *k, int64_t stride, int length, int key_blocks, int slices, uint32_t *out) {
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32((int)(stride * 2)));
    for (int block = 0; block < key_blocks; block++) {
        __mmask16 live = tail_mask(length - block * 16);
        const uint8_t *first = (const uint8_t *)(k + (int64_t)block * 16 * stride);
        for (int slice = 0; slice < slices; slice++) {
            uint32_t *tile = out + ((size_t)slice * key_blocks + block) * TILE_ROWS * 16;
            for (int pair = 0; pair < TILE_ROWS; pair++) {
                __m512i column = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, offsets,
                                                             first + (slice * 16 + pair) * 4, 1);
                _mm512_storeu_si512(tile + pair * 16, column);
            }
        }
    }
}

/* Values as the B operand of O = P V: for each chunk of 32 keys and each 16-wide block of the
 * head, 16 rows (pairs of keys) × 16 head columns of bf16 pairs, interleaving two keys' rows by
 * a two-source permute; keys past the sequence are zero. Layout [key chunk][column block][pair]
 * [column]. */
static void pack_values(const uint16_t *v, int64_t stride, int length, int key_chunks, int head_dim, uint16_t *out) {
    int column_blocks = head_dim / 16;
    __m512i low, high; /* columns 0..15 / 16..31 of a 32-wide slice, two keys interleaved */
    {
        uint16_t l[32], h[32];
        for (int c = 0; c < 16; c++) {
            l[2 * c] = (uint16_t)c, l[2 * c + 1] = (uint16_t)(32 + c);
            h[2 * c] = (uint16_t)(16 + c), h[2 * c + 1] = (uint16_t)(48 + c);
        }
        low = _mm512_loadu_si512(l), high = _mm512_loadu_si512(h);
    }
    for (int n = 0; n < key_chunks * 32; n += 2) {
        int chunk = n / 32, pair = (n % 32) / 2;
        for (int slice = 0; slice < head_dim / 32; slice++) {
            __m512i a = n < length ? _mm512_loadu_si512(v + (int64_t)n * stride + slice * 32) : _mm512_setzero_si512();
            __m512i b = n + 1 < length ? _mm512_loadu_si512(v + (int64_t)(n + 1) * stride + slice * 32)
                                       : _mm512_setzero_si512();
            uint16_t *tile = out + ((size_t)chunk * column_blocks + slice * 2) * TILE_ROWS * 32 + pair * 32;
            _mm512_storeu_si512(tile, _mm512_permutex2var_epi16(a, low, b));
            _mm512_storeu_si512(tile + TILE_ROWS * 32, _mm512_permutex2var_epi16(a, high, b));
        }
    }
}

typedef struct {
    uint32_t *keys;    /* pack_keys */
    uint16_t *values;  /* pack_values */
    uint16_t *queries; /* 16 × head_dim, zero past the sequence */
    float *scores;     /* 16 × key_span */
    uint16_t *probs;   /* 16 × key_chunks·32, bf16 */
    float *context;    /* 16 × head_dim */
    int query_rows;    /* live rows of ``queries`` (vector back end) */
} scratch;

/* Softmax numerators of one row of scores in bf16 (zero past the sequence); returns their sum.
 * Two accumulators for the maximum and for the sum, so that neither chain of dependent adds sets
 * the pace. */
static inline float softmax_row(const float *s, int length, int prob_span, float log2_scale, uint16_t *p) {
    __m512 top0 = _mm512_set1_ps(-__builtin_inff()), top1 = top0;
    int j = 0;
    for (; j + 32 <= length; j += 32) {
        top0 = _mm512_max_ps(top0, _mm512_loadu_ps(s + j));
        top1 = _mm512_max_ps(top1, _mm512_loadu_ps(s + j + 16));
    }
    for (; j < length; j += 16) top0 = _mm512_mask_max_ps(top0, tail_mask(length - j), top0, _mm512_loadu_ps(s + j));
    __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(top0, top1)) * log2_scale);
    __m512 scale = _mm512_set1_ps(log2_scale);
    __m512 total0 = _mm512_setzero_ps(), total1 = total0;
    for (j = 0; j + 32 <= length; j += 32) {
        __m512 e0 = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), scale, shift));
        __m512 e1 = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), scale, shift));
        total0 = _mm512_add_ps(total0, e0);
        total1 = _mm512_add_ps(total1, e1);
        _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
    for (; j < length; j += 16) {
        __m512 e = exp2_nonpositive(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), scale, shift));
        e = _mm512_maskz_mov_ps(tail_mask(length - j), e);
        total0 = _mm512_add_ps(total0, e);
        _mm256_storeu_si256((__m256i *)(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    for (; j < prob_span; j += 16) _mm256_storeu_si256((__m256i *)(p + j), _mm256_setzero_si256());
    return _mm512_reduce_add_ps(_mm512_add_ps(total0, total1));
}

/* The block's float32 context rows divided by their softmax sums, rounded to bf16 into the output. */
static inline void normalise_context(const scratch *w, int width, const float *sums, int rows, uint16_t *out,
                                     int64_t out_stride) {
    for (int r = 0; r < rows; r++) {
        __m512 inverse = _mm512_set1_ps(1.0f / sums[r]);
        for (int c = 0; c < width; c += 32) {
            __m512 low = _mm512_mul_ps(_mm512_loadu_ps(w->context + r * width + c), inverse);
            __m512 high = _mm512_mul_ps(_mm512_loadu_ps(w->context + r * width + c + 16), inverse);
            _mm512_storeu_si512(out + (int64_t)r * out_stride + c, (__m512i)_mm512_cvtne2ps_pbh(high, low));
        }
    }
}

#ifdef QW_AMX
/* The tile unit and the vector units work at once: the softmax of query block b runs on the
 * vector units while, between its rows, the tile unit gets the scores of block b + 1 and the
 * context of block b - 1, so neither waits for the other (1.25× the same steps one after another
 * on 8 × 256 tokens with 32-wide heads); scores and probabilities are double-buffered for it.
 *
 * Tile registers, by head width:
 *              scores acc.   keys   next queries   context acc.   probabilities   values
 *   32 wide    0, 1          2      3              4, 5           6               7
 *   64 wide    0             1      2, 3           4, 5           6               7
 * A 64-wide head's context is 4 column blocks for 2 accumulators: two passes over the keys. */

static inline void load_queries(const uint16_t *q, int first, int length, int64_t stride, int width, scratch *w) {
    int rows = length - first < TILE_ROWS ? length - first : TILE_ROWS;
    const uint16_t *from = q + (int64_t)first * stride;
    int64_t ld = stride * 2;
    if (rows < TILE_ROWS) { /* the last rows, zero-padded: reading past them could leave the buffer */
        for (int r = 0; r < TILE_ROWS; r++)
            for (int c = 0; c < width; c += 32)
                _mm512_storeu_si512(w->queries + r * width + c,
                                    r < rows ? _mm512_loadu_si512(from + (int64_t)r * stride + c) : _mm512_setzero_si512());
        from = w->queries, ld = width * 2;
    }
    if (width == 32) _tile_loadd(3, from, ld);
    else {
        _tile_loadd(2, from, ld);
        _tile_loadd(3, from + 32, ld);
    }
}

/* Scores of key block ``block`` into its 16 columns of ``scores``. */
static inline void score_block(const scratch *w, int width, int blocks, int block, float *scores, int key_span) {
    const uint32_t *keys = w->keys + (size_t)block * TILE_ROWS * 16;
    if (width == 32) { /* alternate accumulators: one multiplies while the other is stored */
        _tile_loadd(2, keys, TILE_BYTES);
        if (block & 1) {
            _tile_zero(1);
            _tile_dpbf16ps(1, 3, 2);
            _tile_stored(1, scores + block * 16, key_span * 4);
        } else {
            _tile_zero(0);
            _tile_dpbf16ps(0, 3, 2);
            _tile_stored(0, scores + block * 16, key_span * 4);
        }
    } else { /* two 32-wide slices of the head */
        _tile_zero(0);
        _tile_loadd(1, keys, TILE_BYTES);
        _tile_dpbf16ps(0, 2, 1);
        _tile_loadd(1, keys + (size_t)blocks * TILE_ROWS * 16, TILE_BYTES);
        _tile_dpbf16ps(0, 3, 1);
        _tile_stored(0, scores + block * 16, key_span * 4);
    }
}

/* Context unit ``unit``: one chunk of 32 keys times one 16-column block of values. Units run
 * pass by pass (64 wide: columns 0-31, then 32-63), chunk by chunk, column block by block. */
static inline void context_begin(scratch *w, int width) {
    (void)w, (void)width;
    _tile_zero(4);
    _tile_zero(5);
}

/* (``rows``: the block's live rows; the tile unit computes all 16, dead ones on zero probabilities) */
static inline void context_unit(scratch *w, int width, int chunks, int unit, const uint16_t *probs, int prob_span,
                                int rows) {
    (void)rows;
    int per_pass = 2 * chunks, pass = unit / per_pass, chunk = unit % per_pass / 2, half = unit & 1;
    if (!half) _tile_loadd(6, probs + chunk * 32, prob_span * 2);
    int block = chunk * (width / 16) + pass * 2 + half; /* pack_values' [chunk][column block] */
    _tile_loadd(7, w->values + (size_t)block * TILE_ROWS * 32, TILE_BYTES);
    if (half) _tile_dpbf16ps(5, 6, 7);
    else _tile_dpbf16ps(4, 6, 7);
    if (width == 64 && pass == 0 && unit == per_pass - 1) { /* columns 0-31 done */
        _tile_stored(4, w->context, 64 * 4);
        _tile_stored(5, w->context + 16, 64 * 4);
        _tile_zero(4);
        _tile_zero(5);
    }
}

static inline void write_context(scratch *w, int width, const float *sums, int rows, uint16_t *out,
                                 int64_t out_stride) {
    _tile_stored(4, w->context + width - 32, width * 4); /* the last pass's 32 columns */
    _tile_stored(5, w->context + width - 16, width * 4);
    normalise_context(w, width, sums, rows, out, out_stride);
}

/* A score unit is one block of 16 keys; a context unit one chunk of 32 keys times 16 columns. */
static inline int score_units(int key_blocks, int width) {
    (void)width;
    return key_blocks;
}

static inline void score_unit(const scratch *w, int width, int blocks, int unit, int key_blocks, float *scores,
                              int key_span) {
    (void)key_blocks;
    score_block(w, width, blocks, unit, scores, key_span);
}

static inline int context_units(int chunks, int width) { return chunks * (width / 16); }

/* The tile registers' plan above covers heads of 32 and 64 without a causal mask. */
static inline int handles(int head_dim, int causal) { return !causal && (head_dim == 32 || head_dim == 64); }

#else /* AVX512-BF16: the same steps on the vector units, 16 keys or 16 head columns per register */

/* Each step keeps 16 accumulators in registers: 8 query rows × 2 blocks of 16 keys (scores) or of
 * 16 head columns (context). ``vdpbf16ps`` has a latency of several cycles and, on Zen 5, two
 * issue ports, so fewer independent chains leave the ports idle (8 chains ran the 64-wide heads
 * at 56 % of the core's bf16 rate); each loaded B operand (16 keys' or 16 columns' pairs) serves
 * 8 rows, each broadcast query or probability pair 2 blocks. */
#define GROUP 8

/* The next block's queries, copied into 16 contiguous rows (zero past the sequence): the score
 * loop then addresses every row at a fixed offset from one pointer. */
static inline void load_queries(const uint16_t *q, int first, int length, int64_t stride, int width, scratch *w) {
    int rows = length - first < TILE_ROWS ? length - first : TILE_ROWS;
    for (int r = 0; r < TILE_ROWS; r++)
        for (int c = 0; c < width; c += 32)
            _mm512_storeu_si512(w->queries + r * width + c,
                                r < rows ? _mm512_loadu_si512(q + (int64_t)(first + r) * stride + c)
                                         : _mm512_setzero_si512());
    w->query_rows = rows;
}

static inline __m512bh broadcast_pair(const uint16_t *pair) {
    uint32_t bits;
    memcpy(&bits, pair, 4);
    return (__m512bh)_mm512_set1_epi32((int)bits);
}

/* Scores of ``count`` (1 or 2, a constant once inlined) key blocks from ``block`` into their
 * columns of ``scores``, for the live query rows. */
static inline __attribute__((always_inline)) void score_blocks(const scratch *w, int width, int blocks, int block,
                                                               int count, float *scores, int key_span) {
    for (int r0 = 0; r0 < w->query_rows; r0 += GROUP) {
        const uint16_t *rows = w->queries + r0 * width; /* rows past the sequence are zero, not stored */
        __m512 acc[2][GROUP];
        for (int i = 0; i < GROUP; i++) acc[0][i] = acc[1][i] = _mm512_setzero_ps();
        for (int slice = 0; slice < width / 32; slice++) {
            const uint32_t *keys = w->keys + ((size_t)slice * blocks + block) * TILE_ROWS * 16;
#pragma GCC unroll 16
            for (int pair = 0; pair < 16; pair++) {
                __m512bh k0 = (__m512bh)_mm512_loadu_si512(keys + pair * 16);
                __m512bh k1 = count == 2 ? (__m512bh)_mm512_loadu_si512(keys + TILE_ROWS * 16 + pair * 16) : k0;
                for (int i = 0; i < GROUP; i++) {
                    __m512bh q = broadcast_pair(rows + i * width + slice * 32 + 2 * pair);
                    acc[0][i] = _mm512_dpbf16_ps(acc[0][i], q, k0);
                    if (count == 2) acc[1][i] = _mm512_dpbf16_ps(acc[1][i], q, k1);
                }
            }
        }
        for (int i = 0; i < GROUP && r0 + i < w->query_rows; i++) {
            float *row = scores + (size_t)(r0 + i) * key_span + block * 16;
            _mm512_storeu_ps(row, acc[0][i]);
            if (count == 2) _mm512_storeu_ps(row + 16, acc[1][i]);
        }
    }
}

/* A score unit is a pair of key blocks (the last one alone when their count is odd), except for
 * heads of 32, whose units stay single blocks: their 16 pairs of dimensions make short chains,
 * and finer units interleave better with the softmax (measured: pairs 1.14× faster for heads of
 * 64 and 128, single blocks 1.10× for heads of 32). A context unit is one chunk of 32 keys times
 * 32 columns, for every width. */
static inline int paired(int width) { return width >= 64; }

static inline int score_units(int key_blocks, int width) { return paired(width) ? (key_blocks + 1) / 2 : key_blocks; }

static inline void score_unit(const scratch *w, int width, int blocks, int unit, int key_blocks, float *scores,
                              int key_span) {
    if (!paired(width)) score_blocks(w, width, blocks, unit, 1, scores, key_span);
    else if (2 * unit + 1 < key_blocks) score_blocks(w, width, blocks, 2 * unit, 2, scores, key_span);
    else score_blocks(w, width, blocks, 2 * unit, 1, scores, key_span);
}

static inline int context_units(int chunks, int width) { return chunks * (width / 32); }

static inline void context_begin(scratch *w, int width) { memset(w->context, 0, (size_t)TILE_ROWS * width * 4); }

/* Context unit ``unit``: one chunk of 32 keys times two 16-column blocks of values, added into
 * the float32 context of the block's live rows. */
static inline void context_unit(scratch *w, int width, int chunks, int unit, const uint16_t *probs, int prob_span,
                                int rows) {
    (void)chunks;
    int column_blocks = width / 16, chunk = unit / (width / 32), column_block = unit % (width / 32) * 2;
    const uint16_t *values = w->values + ((size_t)chunk * column_blocks + column_block) * TILE_ROWS * 32;
    for (int r0 = 0; r0 < rows; r0 += GROUP) {
        float *out = w->context + (size_t)r0 * width + column_block * 16; /* 16 rows allocated */
        __m512 acc[2][GROUP];
        for (int i = 0; i < GROUP; i++) {
            acc[0][i] = _mm512_loadu_ps(out + i * width);
            acc[1][i] = _mm512_loadu_ps(out + i * width + 16);
        }
#pragma GCC unroll 16
        for (int pair = 0; pair < 16; pair++) {
            __m512bh v0 = (__m512bh)_mm512_loadu_si512(values + pair * 32);
            __m512bh v1 = (__m512bh)_mm512_loadu_si512(values + TILE_ROWS * 32 + pair * 32);
            for (int i = 0; i < GROUP; i++) {
                __m512bh p = broadcast_pair(probs + (size_t)(r0 + i) * prob_span + chunk * 32 + 2 * pair);
                acc[0][i] = _mm512_dpbf16_ps(acc[0][i], p, v0);
                acc[1][i] = _mm512_dpbf16_ps(acc[1][i], p, v1);
            }
        }
        for (int i = 0; i < GROUP; i++) {
            _mm512_storeu_ps(out + i * width, acc[0][i]);
            _mm512_storeu_ps(out + i * width + 16, acc[1][i]);
        }
    }
}

static inline void write_context(scratch *w, int width, const float *sums, int rows, uint16_t *out,
                                 int64_t out_stride) {
    normalise_context(w, width, sums, rows, out, out_stride);
}

static inline int handles(int head_dim, int causal) {
    (void)causal;
    return head_dim == 32 || head_dim == 64 || head_dim == 128;
}
#endif

/* Keys a block's last query sees: all of them, or (causal) those up to its own position. */
static inline int keys_seen(int block, int length, int causal) {
    int last = (block + 1) * TILE_ROWS;
    return causal && last < length ? last : length;
}

/* Blocks of 16 keys (scores) and chunks of 32 keys (probabilities, context) that hold them. */
static inline int key_blocks_seen(int block, int length, int causal) {
    return round_up(keys_seen(block, length, causal), 16) / 16;
}

static inline int chunks_seen(int block, int length, int causal) {
    return round_up(keys_seen(block, length, causal), 32) / 32;
}

/* One query head over keys and values already packed into ``w`` (``pack_keys``,
 * ``pack_values``): queries ``q`` (row stride ``stride``), output ``out``. */
static inline __attribute__((always_inline)) void attend(const uint16_t *q, int64_t stride, int length, int width,
                                                         int causal, float log2_scale, uint16_t *out,
                                                         int64_t out_stride, scratch *w) {
    int key_span = round_up(length, 16), blocks = key_span / 16, prob_span = round_up(length, 32);
    float *scores[2] = {w->scores, w->scores + (size_t)TILE_ROWS * key_span};
    uint16_t *probs[2] = {w->probs, w->probs + (size_t)TILE_ROWS * prob_span};
    float sums[2][TILE_ROWS];

    load_queries(q, 0, length, stride, width, w);
    int key_blocks = key_blocks_seen(0, length, causal);
    for (int u = 0; u < score_units(key_blocks, width); u++) score_unit(w, width, blocks, u, key_blocks, scores[0], key_span);
    for (int b = 0; b < blocks; b++) {
        int now = b & 1, next = b + 1 < blocks, previous = b > 0;
        int first = b * TILE_ROWS, rows = length - first < TILE_ROWS ? length - first : TILE_ROWS;
        int chunks = chunks_seen(b, length, causal);
        /* the work slipped in between this block's softmax rows: the next block's scores and the
         * previous block's context, each spread evenly over the 16 rows */
        int next_blocks = next ? key_blocks_seen(b + 1, length, causal) : 0;
        int next_units = next ? score_units(next_blocks, width) : 0;
        int previous_chunks = previous ? chunks_seen(b - 1, length, causal) : 0;
        int previous_units = previous ? context_units(previous_chunks, width) : 0;
        if (next) load_queries(q, first + TILE_ROWS, length, stride, width, w);
        if (previous) context_begin(w, width);
        for (int r = 0; r < TILE_ROWS; r++) {
            uint16_t *p = probs[now] + (size_t)r * prob_span;
            int seen = causal ? first + r + 1 : length;
            if (r < rows) sums[now][r] = softmax_row(scores[now] + (size_t)r * key_span, seen, chunks * 32, log2_scale, p);
            else memset(p, 0, (size_t)chunks * 32 * 2);
            for (int u = r * next_units / TILE_ROWS; u < (r + 1) * next_units / TILE_ROWS; u++)
                score_unit(w, width, blocks, u, next_blocks, scores[!now], key_span);
            for (int u = r * previous_units / TILE_ROWS; u < (r + 1) * previous_units / TILE_ROWS; u++)
                context_unit(w, width, previous_chunks, u, probs[!now], prob_span, TILE_ROWS);
        }
        if (previous)
            write_context(w, width, sums[!now], TILE_ROWS, out + (int64_t)(first - TILE_ROWS) * out_stride, out_stride);
    }
    int last = blocks - 1, last_rows = length - last * TILE_ROWS;
    int chunks = chunks_seen(last, length, causal);
    context_begin(w, width);
    for (int u = 0; u < context_units(chunks, width); u++)
        context_unit(w, width, chunks, u, probs[last & 1], prob_span, last_rows);
    write_context(w, width, sums[last & 1], last_rows, out + (int64_t)last * TILE_ROWS * out_stride, out_stride);
}

/* One (sequence, key/value head) item: its keys and values packed once, then each query head
 * of its group. One copy of the whole schedule per head width and masking, so that every loop
 * bound is a constant; the AMX build has copies only for what it handles. */
static void attend_group(const uint16_t *q, const uint16_t *k, const uint16_t *v, int64_t stride, int length,
                         int head_dim, int causal, int group, float log2_scale, uint16_t *out, int64_t out_stride,
                         scratch *w) {
#ifdef QW_AMX
    (void)causal; /* always 0 here: handles() refuses it */
#endif
    pack_keys(k, stride, length, round_up(length, 16) / 16, head_dim / 32, w->keys);
    pack_values(v, stride, length, round_up(length, 32) / 32, head_dim, w->values);
    for (int i = 0; i < group; i++) {
        const uint16_t *qi = q + (int64_t)i * head_dim;
        uint16_t *oi = out + (int64_t)i * head_dim;
#define ATTEND(WIDTH, CAUSAL) attend(qi, stride, length, WIDTH, CAUSAL, log2_scale, oi, out_stride, w)
#ifdef QW_AMX
        if (head_dim == 32) ATTEND(32, 0);
        else ATTEND(64, 0);
#else
        if (head_dim == 32) causal ? ATTEND(32, 1) : ATTEND(32, 0);
        else if (head_dim == 64) causal ? ATTEND(64, 1) : ATTEND(64, 0);
        else causal ? ATTEND(128, 1) : ATTEND(128, 0);
#endif
#undef ATTEND
    }
}

/* Items first .. last of the (sequence, key/value head) grid, sequence-major, on this thread.
 * Returns 0, or -1 when memory runs out. */
static int run_items(const uint16_t *qkv, uint16_t *out, const int64_t *bounds, int q_heads, int kv_heads,
                     int head_dim, float scale, int causal, int64_t first, int64_t last) {
    int longest = 0;
    for (int64_t s = first / kv_heads; s <= (last - 1) / kv_heads; s++) {
        int64_t n = bounds[s + 1] - bounds[s];
        if (n > longest) longest = (int)n;
    }
    if (longest == 0) return 0;
    int key_span = round_up(longest, 16), prob_span = round_up(longest, 32);
    size_t sizes[6] = {
        (size_t)(head_dim / 32) * key_span * TILE_ROWS * 4, /* keys: slices × blocks × 16 × 16 × 4 */
        (size_t)prob_span * head_dim * 2,                   /* values */
        (size_t)TILE_ROWS * head_dim * 2,                   /* queries */
        (size_t)2 * TILE_ROWS * key_span * 4,               /* scores, two blocks */
        (size_t)2 * TILE_ROWS * prob_span * 2,              /* probabilities, two blocks */
        (size_t)TILE_ROWS * head_dim * 4,                   /* context */
    };
    void *parts[6] = {0};
    int failed = 0;
    for (int i = 0; i < 6; i++) {
        parts[i] = aligned_alloc(64, (sizes[i] + 63) / 64 * 64);
        failed |= parts[i] == NULL;
    }
    if (failed) {
        for (int i = 0; i < 6; i++) free(parts[i]);
        return -1;
    }
    scratch w = {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], 0};

    /* Subnormal numbers flush to zero while it runs: probabilities below 2^-126 of a row's largest
     * are zero for this purpose, and without flushing each one costs a microcode assist (a row
     * of widely spread scores ran 15× slower). The thread's own setting comes back afterwards. */
    unsigned int caller_csr = _mm_getcsr();
    _mm_setcsr(caller_csr | 0x8040); /* flush to zero, denormals are zero */

#ifdef QW_AMX
    /* Whatever tile configuration this thread had (oneDNN's, say) comes back afterwards. */
    tile_config saved, ours;
    _tile_storeconfig(&saved);
    memset(&ours, 0, sizeof ours);
    ours.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        ours.rows[t] = TILE_ROWS;
        ours.colsb[t] = TILE_BYTES;
    }
    _tile_loadconfig(&ours);
#endif

    int64_t width = (int64_t)(q_heads + 2 * kv_heads) * head_dim, out_width = (int64_t)q_heads * head_dim;
    int group = q_heads / kv_heads;
    const float log2e = 1.4426950408889634f;
    for (int64_t item = first; item < last; item++) {
        int64_t s = item / kv_heads;
        int g = (int)(item % kv_heads);
        int64_t start = bounds[s];
        int length = (int)(bounds[s + 1] - start);
        if (length == 0) continue;
        const uint16_t *base = qkv + start * width;
        const uint16_t *q = base + (int64_t)g * group * head_dim, *k = base + (int64_t)(q_heads + g) * head_dim;
        const uint16_t *v = base + (int64_t)(q_heads + kv_heads + g) * head_dim;
        uint16_t *o = out + start * out_width + (int64_t)g * group * head_dim;
        attend_group(q, k, v, width, length, head_dim, causal, group, scale * log2e, o, out_width, &w);
    }

#ifdef QW_AMX
    if (saved.palette_id) _tile_loadconfig(&saved);
    else _tile_release();
#endif
    _mm_setcsr(caller_csr);
    for (int i = 0; i < 6; i++) free(parts[i]);
    return 0;
}

/* Thread ``me``'s items of ``threads``: a contiguous run of the (sequence, key/value head) grid
 * holding about an equal share of the work, which grows with the square of a sequence's length
 * (a batch is packed longest sequence first, so equal counts of items could give one thread all
 * the long ones). Each item goes to the thread whose share holds its midpoint. */
static void share_of_items(const int64_t *bounds, int64_t sequences, int kv_heads, int64_t threads, int64_t me,
                           int64_t *first, int64_t *last) {
    int64_t total = 0;
    for (int64_t s = 0; s < sequences; s++) {
        int64_t n = bounds[s + 1] - bounds[s];
        total += n * (n + 64) * kv_heads; /* attention, plus packing and per-block work */
    }
    *first = *last = 0;
    if (total == 0) return;
    int64_t done = 0, item = 0;
    int started = 0;
    for (int64_t s = 0; s < sequences; s++) {
        int64_t n = bounds[s + 1] - bounds[s], cost = n * (n + 64);
        for (int g = 0; g < kv_heads; g++, item++) {
            int64_t owner = (2 * done + cost) * threads / (2 * total);
            done += cost;
            if (owner == me) {
                if (!started) *first = item, started = 1;
                *last = item + 1;
            }
        }
    }
}

/* The calling thread's OpenMP thread count: equal to torch.get_num_threads() when this library
 * shares torch's OpenMP runtime, as it must (checked at load). */
int qw_attention_threads(void) { return omp_get_max_threads(); }

/* Whether this build handles heads of ``head_dim`` with (1) or without (0) a causal mask. */
int qw_attention_handles(int head_dim, int causal) { return handles(head_dim, causal); }

/* Attention of every (sequence, query head), in items of a sequence's key/value head and the
 * query heads that share it, split by cost over the calling thread's OpenMP team: the library
 * links the libgomp that torch has loaded already, so this is torch's own intra-op thread pool
 * and thread count (separate Python threads would have competed with its workers, which spin
 * for a while after each operator: 2.2× slower on 2 threads). Each item is computed the same way
 * whichever thread runs it. ``causal``: each query sees the keys up to its own position. Returns
 * 0, or -1 on arguments this build does not handle or when memory runs out. */
int qw_attention(const uint16_t *qkv, uint16_t *out, const int64_t *bounds, int64_t sequences, int q_heads,
                 int kv_heads, int head_dim, float scale, int causal) {
    if (!handles(head_dim, causal) || kv_heads < 1 || q_heads % kv_heads != 0) return -1;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        int64_t first, last;
        share_of_items(bounds, sequences, kv_heads, omp_get_num_threads(), omp_get_thread_num(), &first, &last);
        if (first < last) failed |= run_items(qkv, out, bounds, q_heads, kv_heads, head_dim, scale, causal, first, last);
    }
    return failed ? -1 : 0;
}
