/* demo.c — `make run`: the engine at work on a toy least-squares problem.
 * Finds W (32 x 64) minimising ‖W X − Y‖² / N with Muon on the CPU backend, printing the loss
 * as it falls. The gradient is computed here on the host, as a training process would. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orthod/backend.h"
#include "orthod/store.h"

enum { ROWS = 32, COLS = 64, SAMPLES = 256, STEPS = 60 };

static unsigned long long rng_state = 42;

static double randn(void) {
  /* xorshift64* + Box–Muller: reproducible without libc's rand(). */
  double u[2];
  for (int i = 0; i < 2; i++) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    u[i] = (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
  }
  return sqrt(-2.0 * log(u[0] + 1e-300)) * cos(6.283185307179586 * u[1]);
}

/* loss = ‖W X − Y‖² / N and grad = 2 (W X − Y) Xᵀ / N. */
static double loss_and_grad(const float *w, const float *x, const float *y, float *grad) {
  static float resid[ROWS * SAMPLES];
  double loss = 0.0;
  for (int i = 0; i < ROWS; i++)
    for (int s = 0; s < SAMPLES; s++) {
      double acc = 0.0;
      for (int k = 0; k < COLS; k++) acc += (double)w[i * COLS + k] * x[k * SAMPLES + s];
      resid[i * SAMPLES + s] = (float)(acc - y[i * SAMPLES + s]);
      loss += (acc - y[i * SAMPLES + s]) * (acc - y[i * SAMPLES + s]);
    }
  for (int i = 0; i < ROWS; i++)
    for (int k = 0; k < COLS; k++) {
      double acc = 0.0;
      for (int s = 0; s < SAMPLES; s++) acc += (double)resid[i * SAMPLES + s] * x[k * SAMPLES + s];
      grad[i * COLS + k] = (float)(2.0 * acc / SAMPLES);
    }
  return loss / SAMPLES;
}

static int fail(const char *what, orthod_err_t err) {
  fprintf(stderr, "orthod-demo: %s: %s: %s\n", what, orthod_err_name(err), orthod_error_detail());
  return 1;
}

int main(void) {
  static float x[COLS * SAMPLES], y[ROWS * SAMPLES], w_true[ROWS * COLS], w[ROWS * COLS],
      grad[ROWS * COLS];
  for (int i = 0; i < COLS * SAMPLES; i++) x[i] = (float)randn();
  for (int i = 0; i < ROWS * COLS; i++) w_true[i] = (float)(randn() / sqrt(COLS));
  for (int i = 0; i < ROWS; i++)
    for (int s = 0; s < SAMPLES; s++) {
      double acc = 0.0;
      for (int k = 0; k < COLS; k++) acc += (double)w_true[i * COLS + k] * x[k * SAMPLES + s];
      y[i * SAMPLES + s] = (float)acc;
    }

  orthod_backend_t *be = NULL;
  orthod_store_t *store = NULL;
  orthod_param_t *param = NULL;
  orthod_backend_opts_t opts = {0};
  orthod_err_t err = orthod_backend_create_cpu(&opts, &be);
  if (err != ORTHOD_OK) return fail("backend", err);
  int rc = 1;
  if ((err = orthod_store_create(be, 0, &store)) != ORTHOD_OK) {
    fail("store", err);
    goto done;
  }
  orthod_optim_config_t cfg;
  orthod_optim_config_default(&cfg, ORTHOD_ALGO_MUON);
  cfg.lr = 0.02;
  cfg.weight_decay = 0.0;
  cfg.nesterov = true;
  const int64_t dims[2] = {ROWS, COLS};
  orthod_shape_t shape;
  orthod_shape_init(&shape, 2, dims);
  if ((err = orthod_store_register(store, "layer.weight", &shape, &cfg, &param)) != ORTHOD_OK) {
    fail("register", err);
    goto done;
  }

  printf("orthod demo: Muon (quintic NS, bf16 'medium', Nesterov) on a %dx%d least-squares "
         "problem, cpu backend\n", ROWS, COLS);
  double first = 0.0, last = 0.0;
  for (int step = 0; step <= STEPS; step++) {
    if ((err = orthod_param_read(param, 0, w, ORTHOD_DTYPE_F32, ROWS * COLS)) != ORTHOD_OK) {
      fail("read", err);
      goto done;
    }
    last = loss_and_grad(w, x, y, grad);
    if (step == 0) first = last;
    if (step % 5 == 0) printf("  step %3d  loss %.6f\n", step, last);
    if (step == STEPS) break;
    /* A linear decay schedule, passed per step as a client would. */
    double lr = cfg.lr * (1.0 - (double)step / STEPS);
    if ((err = orthod_param_step_host(param, grad, ORTHOD_DTYPE_F32, lr)) != ORTHOD_OK) {
      fail("step", err);
      goto done;
    }
  }
  printf("loss fell %.1fx in %d steps (step counter %lld)\n", first / last, STEPS,
         (long long)orthod_param_step(param));
  rc = last < first ? 0 : 1;
done:
  orthod_store_destroy(store);
  orthod_backend_destroy(be);
  return rc;
}
