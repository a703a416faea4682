/* c_trajectory.c — drives an optimizer trajectory through liborthod-client for
 * test_c_client.py: registers the parameters listed in DIR/cases.txt, uploads DIR/NAME.w0.f32,
 * runs the steps on one Step stream with several parameters per push (gradients from
 * DIR/NAME.grads.f32, optional per-step learning rates), checks the step counters, the
 * idempotent re-register, Pull and Describe against the replies, a few error statuses, and
 * writes the final weights to DIR/NAME.out.f32.
 *
 * usage: c_trajectory ADDR DIR [CHUNK_BYTES]
 * cases.txt:  steps N
 *             param NAME ALGO SHAPE WIRE [KEY=VALUE ...]    (SHAPE 96x32, WIRE f32|bf16)
 *             lrs NAME LR0,LR1,...                            (optional, one per step)
 *             extras          (optional: also two SYNC workers from one thread on two streams,
 *                              no_reply pushes, and ABORTED for a missing worker)
 * Exit 0 when every check passed, 1 otherwise (each failure printed). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctest_util.h"
#include "orthod/client.h"

#define MAX_PARAMS 16
#define MAX_OPTS 16
#define MAX_STEPS 64

typedef struct {
  char name[128], algo[64], wire[8];
  orthod_param_spec_t spec;
  orthod_option_t opts[MAX_OPTS];
  char opt_text[MAX_OPTS][128];
  size_t n;                 /* elements */
  float *w0, *grads, *w;    /* n, steps * n, n */
  double lrs[MAX_STEPS];
  bool has_lrs;
} param_t;

static bool extras; /* cases.txt "extras": also run the multi-worker checks */

static int parse_cases(const char *dir, param_t *ps, size_t *np, int *steps) {
  char path[1024], line[4096];
  snprintf(path, sizeof path, "%s/cases.txt", dir);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  *np = 0;
  *steps = 0;
  while (fgets(line, sizeof line, f)) {
    char *save = NULL, *tok = strtok_r(line, CASES_DELIM, &save);
    if (tok == NULL) continue;
    if (strcmp(tok, "extras") == 0) {
      extras = true;
    } else if (strcmp(tok, "steps") == 0) {
      *steps = atoi(strtok_r(NULL, CASES_DELIM, &save));
    } else if (strcmp(tok, "param") == 0 && *np < MAX_PARAMS) {
      param_t *p = &ps[(*np)++];
      memset(p, 0, sizeof *p);
      snprintf(p->name, sizeof p->name, "%s", strtok_r(NULL, CASES_DELIM, &save));
      snprintf(p->algo, sizeof p->algo, "%s", strtok_r(NULL, CASES_DELIM, &save));
      char *shape = strtok_r(NULL, CASES_DELIM, &save);
      snprintf(p->wire, sizeof p->wire, "%s", strtok_r(NULL, CASES_DELIM, &save));
      p->spec.name = p->name;
      p->spec.algorithm = p->algo;
      p->n = parse_shape(shape, &p->spec);
      if (parse_options(&save, &p->spec, p->opts, (char *)p->opt_text, sizeof p->opt_text[0],
                        MAX_OPTS) != 0) {
        fclose(f);
        return -1;
      }
    } else if (strcmp(tok, "lrs") == 0) {
      char *name = strtok_r(NULL, CASES_DELIM, &save), *list = strtok_r(NULL, CASES_DELIM, &save);
      for (size_t i = 0; i < *np; i++) {
        if (strcmp(ps[i].name, name) != 0) continue;
        ps[i].has_lrs = true;
        parse_lrs(list, ps[i].lrs, MAX_STEPS);
      }
    }
  }
  fclose(f);
  return *np > 0 && *steps > 0 && *steps <= MAX_STEPS ? 0 : -1;
}

static orthod_client_dtype_t wire_of(const param_t *p) {
  return strcmp(p->wire, "bf16") == 0 ? ORTHOD_CLIENT_BF16 : ORTHOD_CLIENT_F32;
}

static int count_firsts(void *arg, const orthod_pull_chunk_t *ch) {
  if (ch->first) (*(size_t *)arg)++;
  return ch->dtype == ORTHOD_CLIENT_BF16 ? 0 : 1;
}

/* Two SYNC workers driven from one thread, one stream each: push on both, then wait on both
 * (orthod_step_push does not wait, so neither blocks the other). */
static void multi_worker_checks(orthod_client_t *c, const char *address) {
  enum { N = 16 * 8 };
  float g0[N], g1[N], w0[N], w1[N], w[N];
  for (int i = 0; i < N; i++) {
    g0[i] = 0.5f + (float)i / N;
    g1[i] = -1.0f + (float)i / N;
  }
  orthod_param_spec_t spec = {.name = "sync2", .ndim = 2, .shape = {16, 8}, .algorithm = "adamw",
                              .workers = 2, .sync_mode = ORTHOD_SYNC, .sync_timeout_ms = 10000};
  orthod_step_stream_t *s0 = NULL, *s1 = NULL;
  int rc = orthod_register(c, &spec, NULL, NULL);
  CHECK(rc == 0, "register sync2: %s", orthod_client_last_error(c));
  if (rc != 0 || orthod_step_open(c, &s0) != 0 || orthod_step_open(c, &s1) != 0) {
    CHECK(0, "step_open: %s", orthod_client_last_error(c));
    goto out;
  }
  orthod_step_item_t a = {.name = "sync2", .step = 0, .grad = g0, .elements = N, .weights = w0};
  orthod_step_item_t b = {.name = "sync2", .step = 0, .grad = g1, .elements = N, .weights = w1};
  CHECK(orthod_step_push(s0, 0, &a, 1) == 0, "sync push rank 0: %s", orthod_step_last_error(s0));
  CHECK(orthod_step_push(s1, 1, &b, 1) == 0, "sync push rank 1: %s", orthod_step_last_error(s1));
  CHECK(orthod_step_wait(s0) == 0, "sync wait rank 0: %s", orthod_step_last_error(s0));
  CHECK(orthod_step_wait(s1) == 0, "sync wait rank 1: %s", orthod_step_last_error(s1));
  CHECK(a.new_step == 1 && b.new_step == 1, "sync steps %" PRIu64 " %" PRIu64, a.new_step,
        b.new_step);
  CHECK(memcmp(w0, w1, sizeof w0) == 0, "the two workers got different weights");
  orthod_tensor_t t = {.name = "sync2", .data = w, .dtype = ORTHOD_CLIENT_F32, .elements = N};
  rc = orthod_pull(c, &t, 1, ORTHOD_CLIENT_DEFAULT);
  CHECK(rc == 0 && t.step == 1 && memcmp(w, w0, sizeof w) == 0, "pull after the sync step");

  /* no_reply pushes (weights NULL): nothing to wait for; the step still happens */
  a = (orthod_step_item_t){.name = "sync2", .step = 1, .grad = g0, .elements = N};
  b = (orthod_step_item_t){.name = "sync2", .step = 1, .grad = g1, .elements = N};
  CHECK(orthod_step(s0, 0, &a, 1) == 0, "no_reply rank 0: %s", orthod_step_last_error(s0));
  CHECK(orthod_step(s1, 1, &b, 1) == 0, "no_reply rank 1: %s", orthod_step_last_error(s1));
  uint64_t step = 0;
  for (int tries = 0; tries < 200 && step != 2; tries++) {
    orthod_param_info_t info;
    if (orthod_describe(c, "sync2", &info) == 0) step = info.step;
    orthod_param_info_clear(&info);
    if (step != 2) nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
  }
  CHECK(step == 2, "no_reply sync step: the counter is %" PRIu64 ", expected 2", step);
  CHECK(orthod_step_finish(s0) == 0, "finish s0: %s", orthod_step_last_error(s0));
  CHECK(orthod_step_finish(s1) == 0, "finish s1: %s", orthod_step_last_error(s1));
  orthod_step_destroy(s0);
  orthod_step_destroy(s1);
  s0 = s1 = NULL;

  /* a missing worker: ABORTED after the sync timeout, naming the absent rank */
  spec.name = "sync2t";
  spec.sync_timeout_ms = 300;
  rc = orthod_register(c, &spec, NULL, NULL);
  CHECK(rc == 0, "register sync2t: %s", orthod_client_last_error(c));
  if (rc != 0 || orthod_step_open(c, &s0) != 0) goto out;
  a = (orthod_step_item_t){.name = "sync2t", .step = 0, .grad = g0, .elements = N, .weights = w0};
  rc = orthod_step(s0, 0, &a, 1);
  CHECK(rc == 10 && strstr(orthod_step_last_error(s0), "did not push") != NULL,
        "missing worker: rc %d '%s' (want ABORTED ... did not push)", rc,
        orthod_step_last_error(s0));
  printf("missing worker: %s\n", orthod_step_last_error(s0));

  /* the client's own wait deadline: a second client whose waits last 300 ms, a SYNC step whose
   * other worker never comes (the daemon would wait 10 s) */
  {
    orthod_client_options_t o;
    orthod_client_options_init(&o);
    o.deadline_ms = 300;
    orthod_client_t *c2 = NULL;
    orthod_step_stream_t *s2 = NULL;
    spec.name = "sync2d";
    spec.sync_timeout_ms = 10000;
    CHECK(orthod_register(c, &spec, NULL, NULL) == 0, "register sync2d: %s",
          orthod_client_last_error(c));
    if (orthod_client_create(address, &o, &c2) == 0 &&
        orthod_step_open(c2, &s2) == 0) {
      a = (orthod_step_item_t){.name = "sync2d", .step = 0, .grad = g0, .elements = N,
                               .weights = w0};
      rc = orthod_step(s2, 0, &a, 1);
      CHECK(rc == 4 && strstr(orthod_step_last_error(s2), "within 300 ms") != NULL,
            "client wait deadline: rc %d '%s'", rc, orthod_step_last_error(s2));
    } else {
      CHECK(0, "second client: %s", c2 ? orthod_client_last_error(c2) : "create failed");
    }
    orthod_step_destroy(s2);
    orthod_client_destroy(c2);
  }

  /* argument errors found by the client leave a stream usable; size mismatches are refused */
  orthod_step_destroy(s0);
  s0 = NULL;
  spec = (orthod_param_spec_t){.name = "solo", .ndim = 1, .shape = {N}, .algorithm = "adamw"};
  CHECK(orthod_register(c, &spec, NULL, NULL) == 0, "register solo: %s",
        orthod_client_last_error(c));
  if (orthod_step_open(c, &s0) != 0) goto out;
  a = (orthod_step_item_t){.name = "solo", .step = 0, .grad = NULL, .elements = N, .weights = w0};
  rc = orthod_step(s0, 0, &a, 1);
  CHECK(rc == 3, "NULL gradient: rc %d '%s'", rc, orthod_step_last_error(s0));
  a.grad = g0;
  rc = orthod_step(s0, 0, &a, 1);
  CHECK(rc == 0 && a.new_step == 1, "push after an argument error: rc %d '%s'", rc,
        orthod_step_last_error(s0));
  t = (orthod_tensor_t){.name = "solo", .data = w, .dtype = ORTHOD_CLIENT_F32, .elements = N - 1};
  rc = orthod_pull(c, &t, 1, ORTHOD_CLIENT_F32);
  CHECK(rc == 3 && strstr(orthod_client_last_error(c), "elements") != NULL,
        "pull into a short buffer: rc %d '%s'", rc, orthod_client_last_error(c));
  rc = orthod_upload(c, &t, 1, ORTHOD_CLIENT_F32, NULL, NULL);
  CHECK(rc == 3, "upload of N-1 elements: rc %d '%s'", rc, orthod_client_last_error(c));
  spec.ndim = 0;
  rc = orthod_register(c, &spec, NULL, NULL);
  CHECK(rc == 3, "register with ndim 0: rc %d", rc);
  rc = orthod_health_check(c, "no.such.Service", NULL);
  CHECK(rc == 5, "health of an unknown service: rc %d '%s'", rc, orthod_client_last_error(c));
out:
  orthod_step_destroy(s0);
  orthod_step_destroy(s1);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: c_trajectory ADDR DIR [CHUNK_BYTES]\n");
    return 2;
  }
  const char *dir = argv[2];
  static param_t ps[MAX_PARAMS];
  size_t np = 0;
  int steps = 0;
  if (parse_cases(dir, ps, &np, &steps) != 0) {
    fprintf(stderr, "c_trajectory: cannot read %s/cases.txt\n", dir);
    return 2;
  }
  orthod_client_options_t opts;
  orthod_client_options_init(&opts);
  opts.deadline_ms = 20000;
  if (argc > 3) opts.chunk_bytes = (size_t)atol(argv[3]);
  orthod_client_t *c = NULL;
  orthod_step_stream_t *s = NULL;
  orthod_tensor_t tensors[MAX_PARAMS];
  orthod_step_item_t items[MAX_PARAMS];
  uint16_t *bf_w0[MAX_PARAMS] = {0};
  int rc = orthod_client_create(argv[1], &opts, &c);
  if (rc != 0) {
    fprintf(stderr, "c_trajectory: client_create: %d\n", rc);
    return 1;
  }

  int serving = 0;
  rc = orthod_health_check(c, NULL, &serving);
  CHECK(rc == 0 && serving == 1, "health: rc %d serving %d: %s", rc, serving,
        orthod_client_last_error(c));

  /* register (twice: the second must be an idempotent no-op) and load the data */
  for (size_t i = 0; i < np; i++) {
    param_t *p = &ps[i];
    orthod_param_info_t info;
    bool created = false;
    rc = orthod_register(c, &p->spec, &info, &created);
    CHECK(rc == 0 && created, "register %s: rc %d created %d: %s", p->name, rc, created,
          orthod_client_last_error(c));
    if (rc == 0) {
      CHECK(info.elements == p->n && info.step == 0 && strcmp(info.name, p->name) == 0,
            "register %s: info elements %" PRIu64 " step %" PRIu64, p->name, info.elements,
            info.step);
      for (size_t k = 0; k < p->spec.n_options; k++) {
        const char *v = orthod_param_info_option(&info, p->opts[k].key);
        CHECK(v != NULL, "register %s: option %s missing from the info", p->name, p->opts[k].key);
      }
    }
    orthod_param_info_clear(&info);
    rc = orthod_register(c, &p->spec, NULL, &created);
    CHECK(rc == 0 && !created, "re-register %s: rc %d created %d: %s", p->name, rc, created,
          orthod_client_last_error(c));
    p->w0 = read_f32(p->n, "%s/%s.w0.f32", dir, p->name);
    p->grads = read_f32((size_t)steps * p->n, "%s/%s.grads.f32", dir, p->name);
    p->w = calloc(p->n, sizeof *p->w);
    if (p->w0 == NULL || p->grads == NULL || p->w == NULL) {
      fprintf(stderr, "c_trajectory: cannot load the data of %s\n", p->name);
      failures++;
      goto out;
    }
    /* bf16-wire parameters: the initial weights travel as bf16 too (converted here, uploaded in
     * their own dtype) */
    tensors[i] = (orthod_tensor_t){.name = p->name, .data = p->w0, .dtype = ORTHOD_CLIENT_F32,
                                   .elements = p->n};
    if (wire_of(p) == ORTHOD_CLIENT_BF16) {
      bf_w0[i] = malloc(p->n * sizeof *bf_w0[i]);
      if (bf_w0[i] == NULL) goto out;
      orthod_client_convert(bf_w0[i], ORTHOD_CLIENT_BF16, p->w0, ORTHOD_CLIENT_F32, p->n);
      tensors[i].data = bf_w0[i];
      tensors[i].dtype = ORTHOD_CLIENT_BF16;
    }
  }
  orthod_param_info_t up_infos[MAX_PARAMS];
  size_t n_up = 0;
  rc = orthod_upload(c, tensors, np, ORTHOD_CLIENT_DEFAULT, up_infos, &n_up);
  CHECK(rc == 0 && n_up == np, "upload: rc %d, %zu infos: %s", rc, n_up,
        orthod_client_last_error(c));
  for (size_t i = 0; i < n_up; i++) orthod_param_info_clear(&up_infos[i]);
  if (rc != 0) goto out;

  /* the trajectory: every parameter in each push, one stream */
  rc = orthod_step_open(c, &s);
  CHECK(rc == 0, "step_open: %s", orthod_client_last_error(c));
  if (rc != 0) goto out;
  for (int k = 0; k < steps; k++) {
    for (size_t i = 0; i < np; i++) {
      param_t *p = &ps[i];
      items[i] = (orthod_step_item_t){.name = p->name, .step = (uint64_t)k,
                                      .grad = p->grads + (size_t)k * p->n,
                                      .grad_dtype = ORTHOD_CLIENT_F32, .grad_wire = wire_of(p),
                                      .elements = p->n, .has_lr = p->has_lrs, .lr = p->lrs[k],
                                      .weights = p->w, .weights_dtype = ORTHOD_CLIENT_F32};
    }
    rc = orthod_step(s, 0, items, np);
    CHECK(rc == 0, "step %d: rc %d: %s", k, rc, orthod_step_last_error(s));
    if (rc != 0) goto out;
    for (size_t i = 0; i < np; i++)
      CHECK(items[i].new_step == (uint64_t)k + 1, "step %d of %s: new step %" PRIu64, k,
            ps[i].name, items[i].new_step);
  }
  rc = orthod_step_finish(s);
  CHECK(rc == 0, "step_finish: rc %d: %s", rc, orthod_step_last_error(s));
  orthod_step_destroy(s);
  s = NULL;

  /* Pull (all in one call) and Describe must agree with the last replies */
  float *pulled[MAX_PARAMS] = {0};
  for (size_t i = 0; i < np; i++) {
    pulled[i] = calloc(ps[i].n, sizeof(float));
    tensors[i] = (orthod_tensor_t){.name = ps[i].name, .data = pulled[i],
                                   .dtype = ORTHOD_CLIENT_F32, .elements = ps[i].n};
  }
  rc = orthod_pull(c, tensors, np, ORTHOD_CLIENT_F32);
  CHECK(rc == 0, "pull: rc %d: %s", rc, orthod_client_last_error(c));
  for (size_t i = 0; i < np; i++) {
    param_t *p = &ps[i];
    if (rc == 0) {
      CHECK(tensors[i].step == (uint64_t)steps, "pull %s: step %" PRIu64, p->name,
            tensors[i].step);
      CHECK(memcmp(pulled[i], p->w, p->n * sizeof(float)) == 0,
            "pull %s: weights differ from the last Step reply", p->name);
    }
    free(pulled[i]);
    orthod_param_info_t info;
    rc = orthod_describe(c, p->name, &info);
    CHECK(rc == 0 && info.step == (uint64_t)steps, "describe %s: rc %d step %" PRIu64 ": %s",
          p->name, rc, info.step, orthod_client_last_error(c));
    orthod_param_info_clear(&info);
    if (write_f32(p->w, p->n, "%s/%s.out.f32", dir, p->name) != 0) {
      fprintf(stderr, "c_trajectory: cannot write %s.out.f32\n", p->name);
      failures++;
    }
    printf("%s step=%d\n", p->name, steps);
  }

  /* error statuses: a stale step ends the stream with FAILED_PRECONDITION naming the current
   * step; the stream then keeps that status; an unknown name is NOT_FOUND */
  rc = orthod_step_open(c, &s);
  CHECK(rc == 0, "step_open 2: %s", orthod_client_last_error(c));
  if (rc == 0) {
    items[0] = (orthod_step_item_t){.name = ps[0].name, .step = 3, .grad = ps[0].grads,
                                    .elements = ps[0].n, .weights = ps[0].w};
    rc = orthod_step(s, 0, items, 1);
    char want[64];
    snprintf(want, sizeof want, "current step is %d", steps);
    CHECK(rc == 9 && strstr(orthod_step_last_error(s), want) != NULL,
          "stale push: rc %d, '%s' (want FAILED_PRECONDITION with '%s')", rc,
          orthod_step_last_error(s), want);
    CHECK(orthod_step(s, 0, items, 1) == rc, "a failed stream must keep its status");
    orthod_step_destroy(s);
    s = NULL;
  }
  orthod_param_info_t info;
  rc = orthod_describe(c, "no-such-parameter", &info);
  CHECK(rc == 5 && strncmp(orthod_client_last_error(c), "NOT_FOUND: ", 11) == 0,
        "describe unknown: rc %d '%s'", rc, orthod_client_last_error(c));
  orthod_param_info_clear(&info);
  orthod_param_list_t list;
  rc = orthod_list(c, NULL, &list);
  CHECK(rc == 0 && list.n == np, "list: rc %d n %zu", rc, list.n);
  orthod_param_list_clear(&list);
  size_t firsts = 0;
  rc = orthod_pull_each(c, NULL, 0, ORTHOD_CLIENT_BF16, count_firsts, &firsts);
  CHECK(rc == 0 && firsts == np, "pull_each of everything: rc %d, %zu parameters: %s", rc,
        firsts, orthod_client_last_error(c));

  if (extras) multi_worker_checks(c, argv[1]);

out:
  orthod_step_destroy(s);
  for (size_t i = 0; i < np; i++) {
    free(ps[i].w0);
    free(ps[i].grads);
    free(ps[i].w);
    free(bf_w0[i]);
  }
  orthod_client_destroy(c);
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
