/* bench_util.h — timing helpers shared by the benchmarks (bench_ns, bench_gpu, bench_e2e): the
 * monotonic clock and the median of the timed repetitions. Each benchmark is a single translation
 * unit: everything here is static. The includer defines _POSIX_C_SOURCE (>= 199309L, for
 * clock_gettime) or _GNU_SOURCE first. */
#ifndef ORTHOD_BENCH_UTIL_H
#define ORTHOD_BENCH_UTIL_H

#include <stdlib.h>
#include <time.h>

/* CLOCK_MONOTONIC in seconds / in milliseconds. */
static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median as the spec's benchmark reports it: sorted[n / 2] (v is sorted in place). */
static inline double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2];
}

#endif /* ORTHOD_BENCH_UTIL_H */
