/* c_large.c — a large parameter through liborthod-client for test_c_client.py: a ROWSxCOLS
 * (default 4096x4096) AdamW parameter is uploaded in fp32 and stepped three times:
 *   step 0: gradient fp32, weights back fp32 -> must equal a following fp32 Pull exactly;
 *   step 1: gradient sent as bf16 (converted from fp32 here), weights back as bf16 into a bf16
 *           buffer -> must equal bf16(fp32 Pull) exactly;
 *   step 2: gradient fp32, weights back as bf16 widened into an fp32 buffer -> must equal
 *           widen(bf16(fp32 Pull)) exactly.
 * Writes the fp32 weights after step 0 and after step 2 (DIR/large.w1.f32, DIR/large.w3.f32)
 * for the float64 reference check in Python. Data: a hash of the element index (the Python side
 * regenerates it bit for bit, so nothing large is written besides the results).
 *
 * usage: c_large ADDR DIR [ROWS COLS]   exit 0 when every check passed. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctest_util.h"
#include "orthod/client.h"

/* Uniform in [-1, 1) with 2^-23 spacing, exact in fp32; mirrored by hash_data() in Python. */
static float hval(uint32_t seed, uint32_t i) {
  uint32_t h = i * 0x9E3779B1u + seed;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return (float)(h >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

static void fill(float *x, size_t n, uint32_t seed, float scale) {
  for (size_t i = 0; i < n; i++) x[i] = hval(seed, (uint32_t)i) * scale;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 5) {
    fprintf(stderr, "usage: c_large ADDR DIR [ROWS COLS]\n");
    return 2;
  }
  const char *dir = argv[2];
  int64_t rows = argc == 5 ? atoll(argv[3]) : 4096, cols = argc == 5 ? atoll(argv[4]) : 4096;
  size_t n = (size_t)(rows * cols);
  const char *name = "large";
  float *w0 = malloc(n * 4), *g = malloc(n * 4), *w = malloc(n * 4), *pull = malloc(n * 4);
  uint16_t *wb = malloc(n * 2), *pb = malloc(n * 2);
  orthod_client_t *c = NULL;
  orthod_step_stream_t *s = NULL;
  if (!w0 || !g || !w || !pull || !wb || !pb) {
    fprintf(stderr, "c_large: out of memory\n");
    failures++;
    goto out;
  }
  int rc = orthod_client_create(argv[1], NULL, &c);
  if (rc != 0) {
    fprintf(stderr, "c_large: client_create: %d\n", rc);
    failures++;
    goto out;
  }
  orthod_option_t opts[] = {{"lr", "0.01"}, {"weight_decay", "0.01"}};
  orthod_param_spec_t spec = {.name = name, .ndim = 2, .shape = {rows, cols},
                              .algorithm = "adamw", .options = opts, .n_options = 2};
  rc = orthod_register(c, &spec, NULL, NULL);
  CHECK(rc == 0, "register: %s", orthod_client_last_error(c));
  if (rc != 0) goto out;

  fill(w0, n, 1, 0.05f);
  double t0 = now_s();
  orthod_tensor_t t = {.name = name, .data = w0, .dtype = ORTHOD_CLIENT_F32, .elements = n};
  rc = orthod_upload(c, &t, 1, ORTHOD_CLIENT_F32, NULL, NULL);
  CHECK(rc == 0, "upload: %s", orthod_client_last_error(c));
  if (rc != 0) goto out;
  printf("upload %.1f MiB: %.3f s\n", (double)n * 4 / 1048576.0, now_s() - t0);

  rc = orthod_step_open(c, &s);
  CHECK(rc == 0, "step_open: %s", orthod_client_last_error(c));
  if (rc != 0) goto out;
  orthod_tensor_t pt = {.name = name, .data = pull, .dtype = ORTHOD_CLIENT_F32, .elements = n};

  /* step 0: fp32 both ways */
  fill(g, n, 101, 1.0f);
  orthod_step_item_t it = {.name = name, .step = 0, .grad = g, .elements = n, .weights = w};
  t0 = now_s();
  rc = orthod_step(s, 0, &it, 1);
  CHECK(rc == 0 && it.new_step == 1, "step 0: rc %d new step %" PRIu64 ": %s", rc, it.new_step,
        orthod_step_last_error(s));
  if (rc != 0) goto out;
  printf("step 0 (fp32 out, fp32 back): %.3f s\n", now_s() - t0);
  rc = orthod_pull(c, &pt, 1, ORTHOD_CLIENT_F32);
  CHECK(rc == 0 && pt.step == 1, "pull 1: rc %d step %" PRIu64 ": %s", rc, pt.step,
        orthod_client_last_error(c));
  CHECK(memcmp(w, pull, n * 4) == 0, "step 0: fp32 reply differs from the fp32 pull");
  if (write_f32(pull, n, "%s/large.w1.f32", dir) != 0) failures++;

  /* step 1: bf16 both ways, bf16 host buffer for the reply */
  fill(g, n, 102, 1.0f);
  it = (orthod_step_item_t){.name = name, .step = 1, .grad = g, .grad_dtype = ORTHOD_CLIENT_F32,
                            .grad_wire = ORTHOD_CLIENT_BF16, .elements = n, .weights = wb,
                            .weights_dtype = ORTHOD_CLIENT_BF16};
  t0 = now_s();
  rc = orthod_step(s, 0, &it, 1);
  CHECK(rc == 0 && it.new_step == 2, "step 1: rc %d new step %" PRIu64 ": %s", rc, it.new_step,
        orthod_step_last_error(s));
  if (rc != 0) goto out;
  printf("step 1 (bf16 out, bf16 back): %.3f s\n", now_s() - t0);
  rc = orthod_pull(c, &pt, 1, ORTHOD_CLIENT_F32);
  CHECK(rc == 0 && pt.step == 2, "pull 2: rc %d: %s", rc, orthod_client_last_error(c));
  orthod_client_convert(pb, ORTHOD_CLIENT_BF16, pull, ORTHOD_CLIENT_F32, n);
  size_t diff = 0;
  for (size_t i = 0; i < n; i++) diff += wb[i] != pb[i];
  CHECK(diff == 0, "step 1: %zu of %zu bf16 reply values differ from bf16(fp32 pull)", diff, n);

  /* step 2: fp32 out, bf16 back widened into an fp32 buffer */
  fill(g, n, 103, 1.0f);
  it = (orthod_step_item_t){.name = name, .step = 2, .grad = g, .elements = n, .weights = w,
                            .weights_dtype = ORTHOD_CLIENT_F32, .reply_dtype = ORTHOD_CLIENT_BF16};
  t0 = now_s();
  rc = orthod_step(s, 0, &it, 1);
  CHECK(rc == 0 && it.new_step == 3, "step 2: rc %d new step %" PRIu64 ": %s", rc, it.new_step,
        orthod_step_last_error(s));
  if (rc != 0) goto out;
  printf("step 2 (fp32 out, bf16 back): %.3f s\n", now_s() - t0);
  rc = orthod_pull(c, &pt, 1, ORTHOD_CLIENT_F32);
  CHECK(rc == 0 && pt.step == 3, "pull 3: rc %d: %s", rc, orthod_client_last_error(c));
  orthod_client_convert(pb, ORTHOD_CLIENT_BF16, pull, ORTHOD_CLIENT_F32, n);
  orthod_client_convert(g, ORTHOD_CLIENT_F32, pb, ORTHOD_CLIENT_BF16, n); /* g: widened bf16 */
  CHECK(memcmp(w, g, n * 4) == 0, "step 2: widened bf16 reply differs from bf16(fp32 pull)");
  if (write_f32(pull, n, "%s/large.w3.f32", dir) != 0) failures++;

  rc = orthod_step_finish(s);
  CHECK(rc == 0, "step_finish: %s", orthod_step_last_error(s));
  uint64_t step = 0;
  rc = orthod_drop(c, name, &step);
  CHECK(rc == 0 && step == 3, "drop: rc %d step %" PRIu64 ": %s", rc, step,
        orthod_client_last_error(c));

out:
  orthod_step_destroy(s);
  orthod_client_destroy(c);
  free(w0);
  free(g);
  free(w);
  free(pull);
  free(wb);
  free(pb);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
