/* traj.c — orthod-traj: run one parameter's optimizer trajectory through the public store API
 * on the CPU backend, from raw little-endian float32 files, so that an independent reference
 * (tests/reference/orthod_ref.py) can replay the same steps and compare the final weights. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/backend.h"
#include "orthod/store.h"
#include "orthod/tensor.h"

#define MAX_SETS 128

static const char k_usage[] =
    "usage: orthod-traj --shape D0[,D1,...] [--set key=value ...] --init FILE --grads FILE\n"
    "                   --steps N --out FILE [--lrs FILE] [--wire fp32|bf16|fp16]\n"
    "                   [--threads N]\n"
    "\n"
    "Registers one parameter of the given shape on the CPU backend, writes FILE --init as its\n"
    "weights, applies N optimizer steps with the gradients of --grads and writes the final\n"
    "weights to --out.\n"
    "\n"
    "  --shape D0,D1,...   parameter shape (1 to 8 dims)\n"
    "  --set key=value     optimizer config key (repeatable, applied in order; 'algo' resets the\n"
    "                      other keys to that algorithm's defaults, so give it first). Without\n"
    "                      'algo' the defaults are those of the algorithm chosen for the shape\n"
    "                      (adamw for rank 1, muon otherwise)\n"
    "  --init FILE         numel float32 values (raw little-endian)\n"
    "  --grads FILE        steps*numel float32 values, step-major\n"
    "  --steps N           number of steps (>= 0)\n"
    "  --out FILE          numel float32 values written after the last step\n"
    "  --lrs FILE          steps float64 values: the learning rate of each step (default: the\n"
    "                      configured lr)\n"
    "  --wire DTYPE        dtype the weights and gradients are sent in: fp32 (default), bf16 or\n"
    "                      fp16 (converted from the float32 files with round-to-nearest-even)\n"
    "  --threads N         BLAS threads of the CPU backend (default: library default)\n"
    "  --help              this text\n"
    "\n"
    "Exit status: 0 success, 1 engine or file error (printed as 'orthod-traj: E_NAME: detail'),\n"
    "2 usage error.\n";

static int usage_error(const char *fmt, ...) ORTHOD_PRINTF(1, 2);
static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "orthod-traj: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(try --help)\n");
  va_end(ap);
  return 2;
}

static int fail(orthod_err_t err, const char *what) {
  fprintf(stderr, "orthod-traj: %s: %s: %s\n", orthod_err_name(err), what, orthod_error_detail());
  return 1;
}

/* File errors carry E_INVAL: the engine never saw the data. */
static int fail_io(const char *option, const char *path, const char *why, size_t expected) {
  if (errno != 0)
    fprintf(stderr, "orthod-traj: %s: %s '%s': %s: %s\n", orthod_err_name(ORTHOD_E_INVAL), option,
            path, why, strerror(errno));
  else
    fprintf(stderr, "orthod-traj: %s: %s '%s': %s (expected exactly %zu bytes)\n",
            orthod_err_name(ORTHOD_E_INVAL), option, path, why, expected);
  return 1;
}

/* Read exactly `bytes` bytes of path into a new buffer; the file must have exactly that size,
 * so that a wrong shape or step count is caught instead of silently reading garbage. */
static void *read_exact(const char *path, size_t bytes, const char **why) {
  errno = 0;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    *why = "cannot open";
    return NULL;
  }
  void *buf = malloc(bytes > 0 ? bytes : 1);
  if (buf == NULL) {
    fclose(f);
    *why = "out of memory reading";
    return NULL;
  }
  size_t got = bytes > 0 ? fread(buf, 1, bytes, f) : 0;
  int extra = fgetc(f);
  int bad = ferror(f);
  fclose(f);
  if (got != bytes || extra != EOF || bad) {
    free(buf);
    if (!bad) errno = 0;
    *why = got != bytes ? "file too short" : (extra != EOF ? "file too long" : "read error");
    return NULL;
  }
  return buf;
}

static int parse_i64(const char *s, long long lo, long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end != '\0' || errno != 0 || v < lo) return -1;
  *out = v;
  return 0;
}

static int parse_shape(const char *s, orthod_shape_t *shape) {
  int64_t dims[ORTHOD_MAX_DIMS];
  int nd = 0;
  const char *p = s;
  while (*p != '\0') {
    if (nd == ORTHOD_MAX_DIMS) return -1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno != 0) return -1;
    dims[nd++] = (int64_t)v;
    if (*end == ',' || *end == 'x') {
      p = end + 1;
      if (*p == '\0') return -1;
    } else if (*end == '\0') {
      p = end;
    } else {
      return -1;
    }
  }
  if (nd == 0) return -1;
  orthod_err_t err = orthod_shape_init(shape, nd, dims);
  if (err != ORTHOD_OK) return (int)err;
  return 0;
}

/* Convert n floats to the wire dtype in a new buffer (fp32: the same data, copied). */
static void *to_wire(const float *src, size_t n, orthod_dtype_t wire, orthod_err_t *err) {
  size_t es = orthod_dtype_size(wire);
  void *dst = malloc(n * es > 0 ? n * es : 1);
  if (dst == NULL) {
    *err = ORTHOD_E_NOMEM;
    return NULL;
  }
  *err = orthod_convert(dst, wire, src, ORTHOD_DTYPE_F32, n);
  if (*err != ORTHOD_OK) {
    free(dst);
    return NULL;
  }
  return dst;
}

int main(int argc, char **argv) {
  const char *shape_arg = NULL, *init_path = NULL, *grads_path = NULL, *out_path = NULL;
  const char *lrs_path = NULL, *wire_arg = "fp32";
  const char *sets[MAX_SETS];
  int n_sets = 0;
  long long steps = -1, threads = 0;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(k_usage, stdout);
      return 0;
    }
    if (i + 1 >= argc) return usage_error("option %s needs a value", a);
    const char *v = argv[++i];
    if (strcmp(a, "--shape") == 0) shape_arg = v;
    else if (strcmp(a, "--init") == 0) init_path = v;
    else if (strcmp(a, "--grads") == 0) grads_path = v;
    else if (strcmp(a, "--out") == 0) out_path = v;
    else if (strcmp(a, "--lrs") == 0) lrs_path = v;
    else if (strcmp(a, "--wire") == 0) wire_arg = v;
    else if (strcmp(a, "--steps") == 0) {
      if (parse_i64(v, 0, &steps) != 0) return usage_error("--steps: '%s' is not an integer >= 0", v);
    } else if (strcmp(a, "--threads") == 0) {
      if (parse_i64(v, 0, &threads) != 0 || threads > 4096)
        return usage_error("--threads: '%s' is not an integer in [0, 4096]", v);
    } else if (strcmp(a, "--set") == 0) {
      if (strchr(v, '=') == NULL) return usage_error("--set: '%s' is not key=value", v);
      if (n_sets == MAX_SETS) return usage_error("too many --set options (at most %d)", MAX_SETS);
      sets[n_sets++] = v;
    } else {
      return usage_error("unknown option '%s'", a);
    }
  }
  if (shape_arg == NULL) return usage_error("--shape is required");
  if (init_path == NULL) return usage_error("--init is required");
  if (grads_path == NULL) return usage_error("--grads is required");
  if (out_path == NULL) return usage_error("--out is required");
  if (steps < 0) return usage_error("--steps is required");

  orthod_shape_t shape;
  int sr = parse_shape(shape_arg, &shape);
  if (sr < 0) return usage_error("--shape: cannot parse '%s' (expected e.g. 33,65)", shape_arg);
  if (sr > 0) return fail((orthod_err_t)sr, "--shape");
  orthod_dtype_t wire;
  orthod_err_t err = orthod_dtype_from_name(wire_arg, &wire);
  if (err != ORTHOD_OK) return usage_error("--wire: unknown dtype '%s' (fp32, bf16 or fp16)", wire_arg);

  /* The configuration: the shape's default algorithm, then every --set in order. */
  orthod_optim_config_t cfg;
  err = orthod_optim_config_default(&cfg, orthod_algo_for(&shape, ORTHOD_ROLE_AUTO));
  if (err != ORTHOD_OK) return fail(err, "config defaults");
  for (int i = 0; i < n_sets; i++) {
    char key[128];
    const char *eq = strchr(sets[i], '=');
    size_t kl = (size_t)(eq - sets[i]);
    if (kl == 0 || kl >= sizeof key) return usage_error("--set: bad key in '%s'", sets[i]);
    memcpy(key, sets[i], kl);
    key[kl] = '\0';
    err = orthod_optim_config_set(&cfg, key, eq + 1);
    if (err != ORTHOD_OK) return fail(err, sets[i]);
  }

  const size_t numel = (size_t)orthod_shape_numel(&shape);
  const size_t nsteps = (size_t)steps;
  if (nsteps > 0 && numel > SIZE_MAX / sizeof(float) / nsteps)
    return usage_error("--steps: %lld steps of this shape overflow memory", steps);

  const char *why = NULL;
  float *init = read_exact(init_path, numel * sizeof(float), &why);
  if (init == NULL) return fail_io("--init", init_path, why, numel * sizeof(float));
  float *grads = read_exact(grads_path, nsteps * numel * sizeof(float), &why);
  if (grads == NULL) {
    free(init);
    return fail_io("--grads", grads_path, why, nsteps * numel * sizeof(float));
  }
  double *lrs = NULL;
  if (lrs_path != NULL) {
    lrs = read_exact(lrs_path, nsteps * sizeof(double), &why);
    if (lrs == NULL) {
      free(init);
      free(grads);
      return fail_io("--lrs", lrs_path, why, nsteps * sizeof(double));
    }
  }

  int rc = 1;
  orthod_backend_t *be = NULL;
  orthod_store_t *store = NULL;
  orthod_param_t *param = NULL;
  void *wire_buf = NULL;
  float *out = malloc(numel * sizeof(float) > 0 ? numel * sizeof(float) : 1);
  if (out == NULL) {
    fail(ORTHOD_E_NOMEM, "output buffer");
    goto done;
  }
  orthod_backend_opts_t bopts = {.threads = (int)threads, .device = 0};
  if ((err = orthod_backend_create_cpu(&bopts, &be)) != ORTHOD_OK) {
    fail(err, "backend");
    goto done;
  }
  if ((err = orthod_store_create(be, 0, &store)) != ORTHOD_OK) {
    fail(err, "store");
    goto done;
  }
  if ((err = orthod_store_register(store, "traj", &shape, &cfg, &param)) != ORTHOD_OK) {
    fail(err, "register");
    goto done;
  }
  wire_buf = to_wire(init, numel, wire, &err);
  if (wire_buf == NULL) {
    fail(err, "init conversion");
    goto done;
  }
  if ((err = orthod_param_write(param, 0, wire_buf, wire, numel)) != ORTHOD_OK) {
    fail(err, "write init");
    goto done;
  }
  free(wire_buf);
  wire_buf = NULL;
  for (size_t s = 0; s < nsteps; s++) {
    char what[64];
    wire_buf = to_wire(grads + s * numel, numel, wire, &err);
    if (wire_buf == NULL) {
      fail(err, "gradient conversion");
      goto done;
    }
    double lr = lrs != NULL ? lrs[s] : -1.0; /* < 0: the configured lr */
    if (lrs != NULL && !(lr >= 0.0)) {
      snprintf(what, sizeof what, "--lrs entry %zu", s);
      fprintf(stderr, "orthod-traj: %s: %s: learning rate %g is negative or NaN; the engine "
              "reads a negative lr as 'use the configured lr'\n",
              orthod_err_name(ORTHOD_E_INVAL), what, lr);
      goto done;
    }
    err = orthod_param_step_host(param, wire_buf, wire, lr);
    free(wire_buf);
    wire_buf = NULL;
    if (err != ORTHOD_OK) {
      snprintf(what, sizeof what, "step %zu", s);
      fail(err, what);
      goto done;
    }
  }
  if ((err = orthod_param_read(param, 0, out, ORTHOD_DTYPE_F32, numel)) != ORTHOD_OK) {
    fail(err, "read weights");
    goto done;
  }
  errno = 0;
  FILE *f = fopen(out_path, "wb");
  if (f == NULL) {
    fail_io("--out", out_path, "cannot open", numel * sizeof(float));
    goto done;
  }
  size_t put = fwrite(out, sizeof(float), numel, f);
  int close_rc = fclose(f);
  if (put != numel || close_rc != 0) {
    fail_io("--out", out_path, "cannot write", numel * sizeof(float));
    goto done;
  }
  rc = 0;
done:
  free(wire_buf);
  free(out);
  orthod_store_destroy(store);
  orthod_backend_destroy(be);
  free(lrs);
  free(init);
  free(grads);
  return rc;
}
