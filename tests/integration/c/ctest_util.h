/* ctest_util.h — helpers shared by the C-client test programs (c_trajectory, c_large, c_shard):
 * the CHECK macro and its failure counter, fp32 data files, and the pieces of the cases.txt lines
 * that test_c_client.py and test_c_shard.py write (shape, KEY=VALUE options, learning rates).
 * Each program is a single translation unit: everything here is static. */
#ifndef ORTHOD_CTEST_UTIL_H
#define ORTHOD_CTEST_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/client.h"

/* The checks that failed; a program exits 1 when there are any. */
static int failures;

/* Report a failed condition (printf-style message) with its place, and count it. */
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                        \
      fprintf(stderr, "\n");                               \
      failures++;                                          \
    }                                                      \
  } while (0)

/* Token separators of cases.txt. */
#define CASES_DELIM " \t\n"

static inline FILE *vopen_path(const char *mode, const char *path_fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static inline float *read_f32(size_t n, const char *path_fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline int write_f32(const float *data, size_t n, const char *path_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* fopen of the formatted path; NULL also when the path does not fit. */
static inline FILE *vopen_path(const char *mode, const char *path_fmt, va_list ap) {
  char path[1024];
  int len = vsnprintf(path, sizeof path, path_fmt, ap);
  return len >= 0 && (size_t)len < sizeof path ? fopen(path, mode) : NULL;
}

/* n floats (native byte order) from the file at the formatted path; NULL when it is missing or
 * shorter, or out of memory. The caller frees. */
static inline float *read_f32(size_t n, const char *path_fmt, ...) {
  va_list ap;
  va_start(ap, path_fmt);
  FILE *f = vopen_path("rb", path_fmt, ap);
  va_end(ap);
  if (f == NULL) return NULL;
  float *buf = malloc(n * sizeof *buf);
  if (buf != NULL && fread(buf, sizeof *buf, n, f) != n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

/* n floats into the file at the formatted path; 0 or -1. */
static inline int write_f32(const float *data, size_t n, const char *path_fmt, ...) {
  va_list ap;
  va_start(ap, path_fmt);
  FILE *f = vopen_path("wb", path_fmt, ap);
  va_end(ap);
  if (f == NULL) return -1;
  bool ok = fwrite(data, sizeof *data, n, f) == n;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* A SHAPE token ("96x32") into spec->ndim and spec->shape (at most ORTHOD_CLIENT_MAX_DIMS
 * dimensions); returns the number of elements. */
static inline size_t parse_shape(char *text, orthod_param_spec_t *spec) {
  size_t n = 1;
  for (char *save = NULL, *d = strtok_r(text, "x", &save);
       d != NULL && spec->ndim < ORTHOD_CLIENT_MAX_DIMS; d = strtok_r(NULL, "x", &save)) {
    spec->shape[spec->ndim++] = atoll(d);
    n *= (size_t)atoll(d);
  }
  return n;
}

/* The KEY=VALUE tokens left on a cases.txt line (strtok_r state *save) as the options of spec:
 * at most max_opts into opts, each token copied into text + i * text_size (rows of text_size
 * bytes) and split there. -1 for a token without '='. */
static inline int parse_options(char **save, orthod_param_spec_t *spec, orthod_option_t *opts,
                                char *text, size_t text_size, size_t max_opts) {
  spec->options = opts;
  char *kv;
  while (spec->n_options < max_opts && (kv = strtok_r(NULL, CASES_DELIM, save)) != NULL) {
    size_t i = spec->n_options++;
    char *t = text + i * text_size;
    snprintf(t, text_size, "%s", kv);
    char *eq = strchr(t, '=');
    if (eq == NULL) return -1;
    *eq = '\0';
    opts[i].key = t;
    opts[i].value = eq + 1;
  }
  return 0;
}

/* "LR0,LR1,..." into lrs (at most max values). */
static inline void parse_lrs(char *list, double *lrs, int max) {
  int k = 0;
  for (char *save = NULL, *x = strtok_r(list, ",", &save); x != NULL && k < max;
       x = strtok_r(NULL, ",", &save))
    lrs[k++] = strtod(x, NULL);
}

#endif /* ORTHOD_CTEST_UTIL_H */
