/* bench_e2e.c — end-to-end optimizer step through the daemon vs its floor, in one run.
 *
 * Workload: the matrices of GPT-2 small, 12 layers × {768×2304, 768×768, 768×3072, 3072×768},
 * Muon with its defaults, one C client, one Step stream, every parameter pushed per step.
 * Measured, each as the median of --steps timed steps after --warmup:
 *   e2e fp32   one full step with fp32 gradients up and fp32 weights down
 *   e2e bf16   the same with bf16 on the wire both ways
 *   transfer   a plain TCP echo over loopback of the same fp32 bytes (a thread sends, the peer
 *              writes every byte straight back, the step ends when all came back)
 *   compute    the same optimizer step in-process on the CPU backend (orthod_param_step_host and
 *              orthod_param_read per parameter), i.e. the daemon's work without the network
 * floor = max(transfer, compute); the last line is `e2e step vs floor (fp32 wire): X.XX`.
 *
 * usage: bench_e2e --orthod PATH | --addr HOST:PORT  [--layers N] [--steps N] [--warmup N]
 *                  [--threads N] [--chunk-bytes N]
 * With --orthod the benchmark starts the daemon itself on a free loopback port. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "orthod/client.h"
#include "orthod/store.h"

extern char **environ;

#define MAX_PARAMS 256

typedef struct bench_param {
  char name[64];
  int64_t rows, cols;
  float *weights; /* rows×cols, host */
  float *grad;    /* rows×cols, host */
  uint16_t *weights_bf16;
  uint16_t *grad_bf16;
} bench_param_t;

typedef struct bench {
  bench_param_t params[MAX_PARAMS];
  int n_params;
  size_t total_elements;
  int steps, warmup, threads;
  size_t chunk_bytes;
} bench_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rand_normalish(void) {
  /* xorshift64*, sum of 4 uniforms: cheap, roughly normal, deterministic */
  float s = 0.0f;
  for (int i = 0; i < 4; i++) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t v = rng_state * 2685821657736338717ull;
    s += (float)((double)(v >> 11) / 9007199254740992.0) - 0.5f;
  }
  return s;
}

static int setup_params(bench_t *b, int layers) {
  static const int64_t shapes[4][2] = {{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}};
  static const char *const names[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  b->n_params = 0;
  b->total_elements = 0;
  for (int l = 0; l < layers; l++) {
    for (int k = 0; k < 4; k++) {
      if (b->n_params >= MAX_PARAMS) return -1;
      bench_param_t *p = &b->params[b->n_params++];
      snprintf(p->name, sizeof p->name, "h.%d.%s.weight", l, names[k]);
      p->rows = shapes[k][0];
      p->cols = shapes[k][1];
      size_t n = (size_t)(p->rows * p->cols);
      p->weights = malloc(n * sizeof(float));
      p->grad = malloc(n * sizeof(float));
      p->weights_bf16 = malloc(n * sizeof(uint16_t));
      p->grad_bf16 = malloc(n * sizeof(uint16_t));
      if (!p->weights || !p->grad || !p->weights_bf16 || !p->grad_bf16) return -1;
      for (size_t i = 0; i < n; i++) {
        p->weights[i] = 0.02f * rand_normalish();
        p->grad[i] = rand_normalish();
      }
      orthod_client_convert(p->grad_bf16, ORTHOD_CLIENT_BF16, p->grad, ORTHOD_CLIENT_F32, n);
      b->total_elements += n;
    }
  }
  return 0;
}

static void free_params(bench_t *b) {
  for (int i = 0; i < b->n_params; i++) {
    free(b->params[i].weights);
    free(b->params[i].grad);
    free(b->params[i].weights_bf16);
    free(b->params[i].grad_bf16);
  }
}

/* ---- the daemon ---------------------------------------------------------------------------- */

typedef struct daemon_proc {
  pid_t pid;
  char address[64];
  char state_dir[64];
} daemon_proc_t;

static int daemon_start(const char *path, int threads, daemon_proc_t *d) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  snprintf(d->state_dir, sizeof d->state_dir, "/tmp/orthod-bench-XXXXXX");
  if (!mkdtemp(d->state_dir)) return -1;
  char threads_arg[32];
  snprintf(threads_arg, sizeof threads_arg, "--threads=%d", threads);
  char state_arg[96];
  snprintf(state_arg, sizeof state_arg, "--state-dir=%s", d->state_dir);
  char *argv[] = {(char *)path, "--listen=127.0.0.1:0", state_arg, threads_arg,
                  "--log-level=warn", "--max-message-bytes=64M",
                  /* no periodic checkpoint inside the timed steps; one is timed on its own */
                  "--checkpoint-interval-s=0", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  int rc = posix_spawn(&d->pid, path, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    fprintf(stderr, "bench_e2e: cannot start %s: %s\n", path, strerror(rc));
    return -1;
  }
  /* Read the listen line: "orthod: listening on 127.0.0.1:PORT (pid PID)". */
  FILE *f = fdopen(fds[0], "r");
  char line[256];
  int port = -1;
  while (f && fgets(line, sizeof line, f)) {
    const char *at = strstr(line, "listening on ");
    if (at && sscanf(at, "listening on %63[^ ]", d->address) == 1) {
      port = 0;
      break;
    }
  }
  if (f) fclose(f);
  if (port < 0) {
    fprintf(stderr, "bench_e2e: the daemon did not print its listen line\n");
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    return -1;
  }
  return 0;
}

static int daemon_stop(daemon_proc_t *d) {
  int status = 0;
  kill(d->pid, SIGTERM);
  waitpid(d->pid, &status, 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->state_dir);
  if (system(cmd) != 0) fprintf(stderr, "bench_e2e: could not remove %s\n", d->state_dir);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* ---- end to end ---------------------------------------------------------------------------- */

static int e2e_register(orthod_client_t *c, bench_t *b) {
  orthod_tensor_t *t = calloc((size_t)b->n_params, sizeof *t);
  if (!t) return -1;
  for (int i = 0; i < b->n_params; i++) {
    bench_param_t *p = &b->params[i];
    orthod_param_spec_t spec = {.name = p->name, .ndim = 2, .shape = {p->rows, p->cols},
                                .algorithm = "muon"};
    int st = orthod_register(c, &spec, NULL, NULL);
    if (st != 0) {
      fprintf(stderr, "bench_e2e: register %s: %s\n", p->name, orthod_client_last_error(c));
      free(t);
      return -1;
    }
    t[i] = (orthod_tensor_t){.name = p->name, .data = p->weights, .dtype = ORTHOD_CLIENT_F32,
                             .elements = (size_t)(p->rows * p->cols)};
  }
  int st = orthod_upload(c, t, (size_t)b->n_params, ORTHOD_CLIENT_F32, NULL, NULL);
  if (st != 0) fprintf(stderr, "bench_e2e: upload: %s\n", orthod_client_last_error(c));
  free(t);
  return st == 0 ? 0 : -1;
}

/* One timed pass of `count` steps (after `warm` untimed ones); *median_ms receives the median. */
static int e2e_run(orthod_client_t *c, bench_t *b, orthod_client_dtype_t wire, uint64_t *step,
                   double *median_ms) {
  orthod_step_stream_t *s = NULL;
  if (orthod_step_open(c, &s) != 0) {
    fprintf(stderr, "bench_e2e: step open: %s\n", orthod_client_last_error(c));
    return -1;
  }
  orthod_step_item_t *items = calloc((size_t)b->n_params, sizeof *items);
  double *times = calloc((size_t)(b->steps > 0 ? b->steps : 1), sizeof *times);
  int rc = -1;
  if (!items || !times) goto done;
  for (int it = 0; it < b->warmup + b->steps; it++) {
    for (int i = 0; i < b->n_params; i++) {
      bench_param_t *p = &b->params[i];
      bool bf = wire == ORTHOD_CLIENT_BF16;
      items[i] = (orthod_step_item_t){
          .name = p->name, .step = *step, .elements = (size_t)(p->rows * p->cols),
          .grad = bf ? (const void *)p->grad_bf16 : (const void *)p->grad,
          .grad_dtype = bf ? ORTHOD_CLIENT_BF16 : ORTHOD_CLIENT_F32, .grad_wire = wire,
          .weights = bf ? (void *)p->weights_bf16 : (void *)p->weights,
          .weights_dtype = bf ? ORTHOD_CLIENT_BF16 : ORTHOD_CLIENT_F32, .reply_dtype = wire};
    }
    double t0 = now_ms();
    if (orthod_step(s, 0, items, (size_t)b->n_params) != 0) {
      fprintf(stderr, "bench_e2e: step: %s\n", orthod_step_last_error(s));
      goto done;
    }
    double t = now_ms() - t0;
    (*step)++;
    if (it >= b->warmup) times[it - b->warmup] = t;
  }
  *median_ms = median(times, b->steps);
  rc = 0;
done:
  if (rc == 0 && orthod_step_finish(s) != 0) rc = -1;
  orthod_step_destroy(s);
  free(items);
  free(times);
  return rc;
}

/* ---- transfer floor: TCP echo over loopback -------------------------------------------------- */

typedef struct echo_ctx {
  int fd;
  size_t bytes;
  size_t buf_bytes;
  int rc;
} echo_ctx_t;

static void *echo_server(void *arg) {
  echo_ctx_t *e = arg;
  char *buf = malloc(e->buf_bytes);
  size_t left = e->bytes;
  e->rc = buf ? 0 : -1;
  while (buf && left > 0) {
    ssize_t n = read(e->fd, buf, left < e->buf_bytes ? left : e->buf_bytes);
    if (n <= 0) { e->rc = -1; break; }
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(e->fd, buf + off, (size_t)(n - off));
      if (w <= 0) { e->rc = -1; break; }
      off += w;
    }
    left -= (size_t)n;
  }
  free(buf);
  return NULL;
}

static void *echo_sender(void *arg) {
  echo_ctx_t *e = arg;
  char *buf = calloc(1, e->buf_bytes);
  size_t left = e->bytes;
  e->rc = buf ? 0 : -1;
  while (buf && left > 0) {
    size_t n = left < e->buf_bytes ? left : e->buf_bytes;
    ssize_t w = write(e->fd, buf, n);
    if (w <= 0) { e->rc = -1; break; }
    left -= (size_t)w;
  }
  free(buf);
  return NULL;
}

/* Time to send `bytes` to a peer that echoes them, until all have come back. */
static int tcp_echo_ms(size_t bytes, double *out_ms) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 1) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &len) != 0) {
    if (lfd >= 0) close(lfd);
    return -1;
  }
  int cfd = socket(AF_INET, SOCK_STREAM, 0);
  if (cfd < 0 || connect(cfd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(lfd);
    if (cfd >= 0) close(cfd);
    return -1;
  }
  int sfd = accept(lfd, NULL, NULL);
  close(lfd);
  if (sfd < 0) { close(cfd); return -1; }
  int one = 1;
  setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  const size_t buf_bytes = 1 << 20; /* the daemon's default chunk */
  echo_ctx_t srv = {.fd = sfd, .bytes = bytes, .buf_bytes = buf_bytes};
  echo_ctx_t snd = {.fd = cfd, .bytes = bytes, .buf_bytes = buf_bytes};
  char *rbuf = malloc(buf_bytes);
  pthread_t ts, tc;
  double t0 = now_ms();
  pthread_create(&ts, NULL, echo_server, &srv);
  pthread_create(&tc, NULL, echo_sender, &snd);
  size_t left = bytes;
  int rc = rbuf ? 0 : -1;
  while (rbuf && left > 0) {
    ssize_t n = read(cfd, rbuf, left < buf_bytes ? left : buf_bytes);
    if (n <= 0) { rc = -1; break; }
    left -= (size_t)n;
  }
  *out_ms = now_ms() - t0;
  pthread_join(tc, NULL);
  pthread_join(ts, NULL);
  free(rbuf);
  close(cfd);
  close(sfd);
  return (rc || srv.rc || snd.rc) ? -1 : 0;
}

/* ---- compute floor: the same step in-process ---------------------------------------------- */

static int compute_only_ms(bench_t *b, double *median_ms) {
  orthod_backend_t *be = NULL;
  orthod_store_t *store = NULL;
  orthod_param_t **ps = calloc((size_t)b->n_params, sizeof *ps);
  double *times = calloc((size_t)(b->steps > 0 ? b->steps : 1), sizeof *times);
  int rc = -1;
  if (!ps || !times) goto done;
  if (orthod_backend_create_cpu(&(orthod_backend_opts_t){.threads = b->threads}, &be) != ORTHOD_OK ||
      orthod_store_create(be, 0, &store) != ORTHOD_OK)
    goto done;
  for (int i = 0; i < b->n_params; i++) {
    bench_param_t *p = &b->params[i];
    orthod_shape_t shape;
    orthod_optim_config_t cfg;
    if (orthod_shape_init(&shape, 2, (int64_t[]){p->rows, p->cols}) != ORTHOD_OK ||
        orthod_optim_config_default(&cfg, ORTHOD_ALGO_MUON) != ORTHOD_OK ||
        orthod_store_register(store, p->name, &shape, &cfg, &ps[i]) != ORTHOD_OK ||
        orthod_param_write(ps[i], 0, p->weights, ORTHOD_DTYPE_F32,
                           (size_t)(p->rows * p->cols)) != ORTHOD_OK) {
      fprintf(stderr, "bench_e2e: compute-only setup: %s\n", orthod_error_detail());
      goto done;
    }
  }
  for (int it = 0; it < b->warmup + b->steps; it++) {
    double t0 = now_ms();
    for (int i = 0; i < b->n_params; i++) {
      bench_param_t *p = &b->params[i];
      size_t n = (size_t)(p->rows * p->cols);
      if (orthod_param_step_host(ps[i], p->grad, ORTHOD_DTYPE_F32, -1.0) != ORTHOD_OK ||
          orthod_param_read(ps[i], 0, p->weights, ORTHOD_DTYPE_F32, n) != ORTHOD_OK) {
        fprintf(stderr, "bench_e2e: compute-only step: %s\n", orthod_error_detail());
        goto done;
      }
    }
    double t = now_ms() - t0;
    if (it >= b->warmup) times[it - b->warmup] = t;
  }
  *median_ms = median(times, b->steps);
  rc = 0;
done:
  orthod_store_destroy(store);
  orthod_backend_destroy(be);
  free(ps);
  free(times);
  return rc;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void usage(void) {
  fprintf(stderr,
          "usage: bench_e2e --orthod PATH | --addr HOST:PORT [--layers N] [--steps N]\n"
          "                 [--warmup N] [--threads N] [--chunk-bytes N]\n"
          "  --orthod PATH  start this daemon on a free loopback port (stopped at the end)\n"
          "  --addr A       use a running daemon instead (it must be on this machine for the\n"
          "                 compute-only floor to mean anything)\n"
          "  --layers N     GPT-2 small layers (default 12: 48 matrices, 85M parameters)\n"
          "  --steps N      timed steps per measurement, median reported (default 5)\n"
          "  --warmup N     untimed steps first (default 1)\n"
          "  --threads N    CPU backend threads for the daemon and the compute floor (0: all)\n");
}

int main(int argc, char **argv) {
  static bench_t b;
  const char *orthod_path = NULL, *addr = NULL;
  int layers = 12;
  b.steps = 5;
  b.warmup = 1;
  b.threads = 0;
  b.chunk_bytes = 1 << 20;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(); return 0; }
    if (!v) { usage(); return 2; }
    if (!strcmp(a, "--orthod")) orthod_path = v;
    else if (!strcmp(a, "--addr")) addr = v;
    else if (!strcmp(a, "--layers")) layers = atoi(v);
    else if (!strcmp(a, "--steps")) b.steps = atoi(v);
    else if (!strcmp(a, "--warmup")) b.warmup = atoi(v);
    else if (!strcmp(a, "--threads")) b.threads = atoi(v);
    else if (!strcmp(a, "--chunk-bytes")) b.chunk_bytes = (size_t)atol(v);
    else { usage(); return 2; }
    i++;
  }
  if ((!orthod_path && !addr) || layers < 1 || layers > MAX_PARAMS / 4 || b.steps < 1 ||
      b.warmup < 0 || b.chunk_bytes < 1024) {
    usage();
    return 2;
  }
  if (setup_params(&b, layers) != 0) { fprintf(stderr, "bench_e2e: out of memory\n"); return 1; }
  double fp32_bytes = (double)b.total_elements * 4.0 * 2.0; /* up and down */
  printf("workload: GPT-2 small, %d layers, %d matrices, %zu parameters, Muon defaults\n",
         layers, b.n_params, b.total_elements);
  printf("wire bytes per step (up + down): fp32 %.1f MB, bf16 %.1f MB; %d timed steps (median) "
         "after %d warm-up\n", fp32_bytes / 1e6, fp32_bytes / 2e6, b.steps, b.warmup);
  fflush(stdout);

  daemon_proc_t d = {0};
  if (orthod_path) {
    if (daemon_start(orthod_path, b.threads, &d) != 0) return 1;
    addr = d.address;
  }
  int rc = 1;
  orthod_client_t *c = NULL;
  orthod_client_options_t opts;
  orthod_client_options_init(&opts);
  opts.chunk_bytes = b.chunk_bytes;
  opts.deadline_ms = 600000;
  double e2e_fp32 = 0, e2e_bf16 = 0, transfer = 0, compute = 0;
  uint64_t step = 0;
  if (orthod_client_create(addr, &opts, &c) != 0 || e2e_register(c, &b) != 0) goto out;
  if (e2e_run(c, &b, ORTHOD_CLIENT_F32, &step, &e2e_fp32) != 0) goto out;
  if (e2e_run(c, &b, ORTHOD_CLIENT_BF16, &step, &e2e_bf16) != 0) goto out;
  /* A checkpoint of the whole model (weights + momentum), as the daemon writes it between
   * steps: steps wait this long (docs/OPERATIONS.md). */
  orthod_client_checkpoint_info_t ck;
  double t0 = now_ms();
  if (orthod_checkpoint(c, &ck) != 0) {
    fprintf(stderr, "bench_e2e: checkpoint: %s\n", orthod_client_last_error(c));
    goto out;
  }
  double ck_ms = now_ms() - t0;
  printf("checkpoint: %u parameters, %.1f MiB in %.0f ms (%.2f GB/s, fsync included)\n",
         ck.parameters, (double)ck.bytes / (1024.0 * 1024.0), ck_ms,
         (double)ck.bytes / (ck_ms * 1e6));
  orthod_client_destroy(c);
  c = NULL;
  if (orthod_path) {
    daemon_stop(&d);
    orthod_path = NULL;
  }
  /* Floors, with the daemon gone so that they get the whole machine as the daemon did. */
  double echo[16];
  int reps = b.steps < 16 ? b.steps : 16;
  for (int i = 0; i < reps; i++)
    if (tcp_echo_ms((size_t)b.total_elements * 4, &echo[i]) != 0) {
      fprintf(stderr, "bench_e2e: loopback echo failed\n");
      goto out;
    }
  transfer = median(echo, reps);
  if (compute_only_ms(&b, &compute) != 0) goto out;

  double floor_ms = transfer > compute ? transfer : compute;
  printf("\n%-22s %10s %10s %12s\n", "measurement", "ms/step", "GB/s", "vs floor");
  printf("%-22s %10.1f %10.2f %12.2f\n", "e2e, fp32 wire", e2e_fp32,
         fp32_bytes / (e2e_fp32 * 1e6), e2e_fp32 / floor_ms);
  printf("%-22s %10.1f %10.2f %12.2f\n", "e2e, bf16 wire", e2e_bf16,
         fp32_bytes / 2 / (e2e_bf16 * 1e6), e2e_bf16 / floor_ms);
  printf("%-22s %10.1f %10.2f %12s\n", "floor: tcp echo fp32", transfer,
         fp32_bytes / (transfer * 1e6), "");
  printf("%-22s %10.1f %10s %12s\n", "floor: compute-only", compute, "", "");
  printf("e2e step vs floor (fp32 wire): %.2f\n", e2e_fp32 / floor_ms);
  rc = 0;
out:
  orthod_client_destroy(c);
  if (orthod_path) daemon_stop(&d);
  free_params(&b);
  return rc;
}
