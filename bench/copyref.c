/*
 * copyref: the machine's limit for a RAM disk — random 4 KiB copies in and out of one buffer of
 * the RAM disk's size, with the page policy Keel's malloc bdev uses.
 *
 * The buffer is an anonymous private mapping aligned to 2 MiB, advised MADV_HUGEPAGE (policy
 * "thp", what `bdev_malloc_create` does) or MADV_NOHUGEPAGE (policy "4k"), and written once in
 * full before the clock starts (so reads hit real pages, not the shared zero page). Each
 * operation picks a random block-aligned offset (xorshift) and copies one block between it and
 * the next of QD small buffers (a keel-perf job's buffers at queue depth QD): "read" copies out
 * of the big buffer, "write" into it. One thread, pinned by the caller (taskset).
 *
 * Copy methods: memcpy (glibc's, as any C program would), rep movsb, and an AVX2 loop of
 * unaligned 32-byte loads and stores (when the CPU has AVX2). The best of them is the limit the
 * malloc bdev is compared against.
 *
 * Build: cc -O2 -o copyref copyref.c   (bench/malloc.py does it)
 * Usage: copyref SIZE_BYTES SECONDS read|write METHOD thp|4k [BLOCK] [QD]
 *   METHOD: memcpy movsb avx2 avx2pf avx2nt avx2pfnt
 * Prints one JSON object: {"ops_per_sec": ..., "ns_per_op": ..., "anon_huge_kib": ...}.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <immintrin.h>

#define HUGE (2u << 20)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static inline void copy_movsb(void *dst, const void *src, size_t n) {
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

__attribute__((target("avx2"))) static void copy_avx2(void *dst, const void *src, size_t n) {
    char *d = dst;
    const char *s = src;
    for (size_t i = 0; i < n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
        _mm256_storeu_si256((__m256i *)(d + i), a);
        _mm256_storeu_si256((__m256i *)(d + i + 32), b);
        _mm256_storeu_si256((__m256i *)(d + i + 64), c);
        _mm256_storeu_si256((__m256i *)(d + i + 96), e);
    }
    __asm__ volatile("" : : : "memory");
}

/* AVX2 with every source line prefetched first: the block's cache misses are all in flight at
 * once instead of as the hardware prefetcher ramps up. */
__attribute__((target("avx2"))) static void copy_avx2pf(void *dst, const void *src, size_t n) {
    for (size_t i = 0; i < n; i += 64)
        _mm_prefetch((const char *)src + i, _MM_HINT_T0);
    copy_avx2(dst, src, n);
}

/* AVX2 loads, non-temporal stores (no read-for-ownership of the destination), then sfence. */
__attribute__((target("avx2"))) static void copy_avx2nt(void *dst, const void *src, size_t n, int pf) {
    char *d = dst;
    const char *s = src;
    if (pf)
        for (size_t i = 0; i < n; i += 64)
            _mm_prefetch(s + i, _MM_HINT_T0);
    for (size_t i = 0; i < n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
        __m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
        _mm256_stream_si256((__m256i *)(d + i), a);
        _mm256_stream_si256((__m256i *)(d + i + 32), b);
        _mm256_stream_si256((__m256i *)(d + i + 64), c);
        _mm256_stream_si256((__m256i *)(d + i + 96), e);
    }
    _mm_sfence();
}

static long anon_huge_kib(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kib = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s SIZE_BYTES SECONDS read|write memcpy|movsb|avx2|avx2pf|avx2nt|avx2pfnt thp|4k [BLOCK] [QD]\n", argv[0]);
        return 2;
    }
    size_t size = strtoull(argv[1], 0, 0);
    double secs = atof(argv[2]);
    int reading = strcmp(argv[3], "read") == 0;
    const char *method = argv[4];
    int thp = strcmp(argv[5], "thp") == 0;
    size_t block = argc > 6 ? strtoull(argv[6], 0, 0) : 4096;
    size_t qd = argc > 7 ? strtoull(argv[7], 0, 0) : 32;
    if (block == 0 || block % 128 || size < block || qd == 0) {
        fprintf(stderr, "bad sizes\n");
        return 2;
    }
    static const char *methods[] = {"memcpy", "movsb", "avx2", "avx2pf", "avx2nt", "avx2pfnt"};
    int m = -1;
    for (int i = 0; i < 6; i++)
        if (strcmp(method, methods[i]) == 0)
            m = i;
    if (m < 0) {
        fprintf(stderr, "unknown method %s\n", method);
        return 2;
    }
    if (m >= 2 && !__builtin_cpu_supports("avx2")) {
        printf("{\"ops_per_sec\": null, \"error\": \"no avx2\"}\n");
        return 0;
    }
    /* An aligned mapping: over-map by 2 MiB and trim both ends. */
    size_t len = (size + HUGE - 1) / HUGE * HUGE;
    char *raw = mmap(0, len + HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    char *big = (char *)(((uintptr_t)raw + HUGE - 1) & ~(uintptr_t)(HUGE - 1));
    if (big > raw)
        munmap(raw, big - raw);
    munmap(big + len, raw + len + HUGE - (big + len));
    madvise(big, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    for (size_t i = 0; i < len; i += 4096)
        memset(big + i, (int)(i >> 12), 4096);
    char *bufs = aligned_alloc(4096, qd * block);
    memset(bufs, 0x5a, qd * block);

    uint64_t seed = 0x9e3779b97f4a7c15ull, blocks = size / block, ops = 0;
    double t0 = now(), t1 = t0;
    size_t k = 0;
    for (;;) {
        for (int j = 0; j < 1024; j++) {
            char *disk = big + (xorshift(&seed) % blocks) * block;
            char *mem = bufs + k * block;
            k = k + 1 == qd ? 0 : k + 1;
            char *dst = reading ? mem : disk;
            const char *src = reading ? disk : mem;
            switch (m) {
            case 0:
                memcpy(dst, src, block);
                __asm__ volatile("" : : "r"(dst) : "memory");
                break;
            case 1:
                copy_movsb(dst, src, block);
                break;
            case 2:
                copy_avx2(dst, src, block);
                break;
            case 3:
                copy_avx2pf(dst, src, block);
                break;
            case 4:
                copy_avx2nt(dst, src, block, 0);
                break;
            default:
                copy_avx2nt(dst, src, block, 1);
            }
        }
        ops += 1024;
        t1 = now();
        if (t1 - t0 >= secs)
            break;
    }
    printf("{\"ops_per_sec\": %.0f, \"ns_per_op\": %.1f, \"anon_huge_kib\": %ld, \"method\": \"%s\", \"policy\": \"%s\", "
           "\"dir\": \"%s\", \"size\": %zu}\n",
           ops / (t1 - t0), (t1 - t0) * 1e9 / ops, anon_huge_kib(), method, thp ? "thp" : "4k",
           reading ? "read" : "write", size);
    return 0;
}
