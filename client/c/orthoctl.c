/* orthoctl.c — command-line tool for an orthod daemon: health (check, or watch the status),
 * list, describe, pull to .npy, drop, set hyper-parameters, checkpoint, and a step benchmark;
 * with --shards, for a set of daemons that a sharded client spreads parameters over
 * (orthod/shard.h): commands on a NAME go to the daemon that owns it, the others run on every
 * daemon, and `where` prints the owners. Exit codes: 0 ok, 1 the daemon (or the connection)
 * reported an error, 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "orthod/client.h"
#include "orthod/shard.h"

#define EXIT_RPC 1
#define EXIT_USAGE 2
#define STATUS_INVALID_ARGUMENT 3 /* the gRPC code, as orthod/client.h returns it */

typedef struct {
  const char *addr;
  int64_t timeout_ms;
  const char *token;
  bool tls;                  /* --tls: TLS with gRPC's default roots */
  const char *tls_ca;        /* --tls-ca / $ORTHOD_TLS_CA */
  const char *tls_cert;      /* --tls-cert / $ORTHOD_TLS_CERT */
  const char *tls_key;       /* --tls-key / $ORTHOD_TLS_KEY */
  const char *tls_server_name; /* --tls-server-name */
  const char *const *shards; /* --shards: the addresses, in order (NULL: none) */
  size_t n_shards;
} globals_t;

/* How a command runs under --shards. */
typedef enum {
  ON_EACH, /* once per shard, each under a "== shard I (ADDR)" line */
  BY_NAME, /* on the shard that owns its NAME argument */
  LOCAL,   /* needs no daemon */
} shard_mode_t;

typedef int (*command_fn)(orthod_client_t *c, const globals_t *g, int argc, char **argv);

typedef struct {
  const char *name;
  command_fn run;
  const char *args;    /* synopsis after the name */
  const char *summary; /* one line for the overview */
  const char *help;    /* the rest of `orthoctl NAME --help` */
  shard_mode_t mode;
} command_t;

static int rpc_error(orthod_client_t *c) {
  fprintf(stderr, "orthoctl: %s\n", orthod_client_last_error(c));
  return EXIT_RPC;
}

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const char *cmd, const char *fmt, ...) {
  fprintf(stderr, "orthoctl%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n(try 'orthoctl %s%s--help')\n", cmd ? cmd : "", cmd ? " " : "");
  return EXIT_USAGE;
}

static const char *shape_text(const int64_t *shape, int ndim, char *buf, size_t len) {
  size_t n = 0;
  buf[0] = '\0';
  for (int d = 0; d < ndim && n < len; d++)
    n += (size_t)snprintf(buf + n, len - n, d ? "x%" PRId64 : "%" PRId64, shape[d]);
  return buf;
}

static int parse_shape(const char *text, int64_t *shape, int *ndim) {
  *ndim = 0;
  const char *p = text;
  while (*p) {
    if (*ndim == ORTHOD_CLIENT_MAX_DIMS) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno != 0 || v < 1) return -1;
    shape[(*ndim)++] = v;
    if (*end == '\0') break;
    if (*end != 'x' && *end != ',') return -1;
    p = end + 1;
    if (*p == '\0') return -1;
  }
  return *ndim > 0 ? 0 : -1;
}

static int parse_dtype(const char *text, orthod_client_dtype_t *out) {
  static const struct { const char *name; orthod_client_dtype_t d; } table[] = {
      {"f32", ORTHOD_CLIENT_F32},  {"fp32", ORTHOD_CLIENT_F32}, {"float32", ORTHOD_CLIENT_F32},
      {"bf16", ORTHOD_CLIENT_BF16}, {"bfloat16", ORTHOD_CLIENT_BF16},
      {"f16", ORTHOD_CLIENT_F16},  {"fp16", ORTHOD_CLIENT_F16}, {"float16", ORTHOD_CLIENT_F16},
  };
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(text, table[i].name) == 0) {
      *out = table[i].d;
      return 0;
    }
  return -1;
}

static const char *mode_text(const orthod_param_info_t *p, char *buf, size_t len) {
  uint32_t workers = p->workers ? p->workers : 1;
  bool sync = p->sync_mode == ORTHOD_SYNC || (p->sync_mode == ORTHOD_SYNC_DEFAULT && workers > 1);
  if (sync) snprintf(buf, len, "sync x%" PRIu32, workers);
  else if (workers > 1) snprintf(buf, len, "async x%" PRIu32, workers);
  else snprintf(buf, len, "async");
  return buf;
}

static double mib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- health ---------------------------------------------------------------------------------- */

/* Set by SIGINT/SIGTERM while `health --watch` runs. */
static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

/* Local wall-clock time with milliseconds and UTC offset: 2026-01-05T10:32:01.123+0100. */
static const char *timestamp(char *buf, size_t len) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  char day[32] = "?", zone[16] = "";
  if (localtime_r(&ts.tv_sec, &tm) != NULL) {
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    strftime(zone, sizeof zone, "%z", &tm);
  }
  snprintf(buf, len, "%s.%03ld%s", day, (long)(ts.tv_nsec / 1000000), zone);
  return buf;
}

/* `health --watch`: one line per status until the stream ends or a signal. --timeout bounds the
 * wait for the first status only; the stream itself has no deadline. */
static int health_watch(orthod_client_t *c, const globals_t *g, const char *service) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  orthod_health_watch_t *w = NULL;
  if (orthod_health_watch_open(c, service, 0, &w) != 0) return rpc_error(c);
  int64_t first_ms = g->timeout_ms >= 0 ? g->timeout_ms : 60000;
  double t0 = now_s();
  int last = -1, rc = 0;
  char ts[64];
  while (!interrupted) {
    int status = 0;
    /* Short waits, so that a signal is noticed within 200 ms. */
    int r = orthod_health_watch_next(w, 200, &status);
    if (r == ORTHOD_HEALTH_WATCH_TIMEOUT) {
      if (last < 0 && first_ms > 0 && (now_s() - t0) * 1e3 >= (double)first_ms) {
        fprintf(stderr, "orthoctl: DEADLINE_EXCEEDED: no health status within %" PRId64 " ms\n",
                first_ms);
        rc = EXIT_RPC;
        break;
      }
      continue;
    }
    if (r == 0) {
      printf("%s %s%s%s: %s\n", timestamp(ts, sizeof ts), g->addr, service[0] ? " " : "", service,
             orthod_health_status_name(status));
      fflush(stdout);
      last = status;
      continue;
    }
    /* The stream is over. After NOT_SERVING, UNAVAILABLE is the daemon's orderly shutdown. */
    if (r == 14 /* UNAVAILABLE */ && last == ORTHOD_HEALTH_NOT_SERVING) {
      printf("%s %s%s%s: stream ended: %s\n", timestamp(ts, sizeof ts), g->addr,
             service[0] ? " " : "", service, orthod_health_watch_last_error(w));
      fflush(stdout);
    } else {
      fprintf(stderr, "orthoctl: %s\n", orthod_health_watch_last_error(w));
      rc = EXIT_RPC;
    }
    break;
  }
  orthod_health_watch_close(w);
  return rc;
}

static int cmd_health(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  bool watch = false;
  const char *service = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--watch") == 0 || strcmp(argv[i], "-w") == 0) watch = true;
    else if (argv[i][0] == '-') return usage_error("health", "unknown option '%s'", argv[i]);
    else if (service == NULL) service = argv[i];
    else return usage_error("health", "unexpected argument '%s'", argv[i]);
  }
  if (service == NULL) service = "";
  if (watch && g->shards != NULL)
    return usage_error("health", "%s", "--watch follows one daemon (--addr), not --shards");
  if (watch) return health_watch(c, g, service);
  int serving = 0;
  if (orthod_health_check(c, service, &serving) != 0) return rpc_error(c);
  printf("%s%s%s: %s\n", g->addr, service[0] ? " " : "", service,
         orthod_health_status_name(serving));
  return serving == ORTHOD_HEALTH_SERVING ? 0 : EXIT_RPC;
}

/* ---- list ------------------------------------------------------------------------------------ */

static int cmd_list(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)g;
  if (argc > 2) return usage_error("list", "unexpected argument '%s'", argv[2]);
  orthod_param_list_t list;
  if (orthod_list(c, argc == 2 ? argv[1] : "", &list) != 0) return rpc_error(c);
  /* Two passes: widths, then rows. */
  enum { NCOL = 6 };
  static const char *const head[NCOL] = {"NAME", "SHAPE", "ALGORITHM", "STEP", "MIB", "MODE"};
  static const int right[NCOL] = {0, 0, 0, 1, 1, 0};
  size_t width[NCOL];
  for (int k = 0; k < NCOL; k++) width[k] = strlen(head[k]);
  char cell[NCOL][300];
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1) {
      for (int k = 0; k < NCOL; k++) {
        if (k + 1 < NCOL) printf(right[k] ? "%*s  " : "%-*s  ", (int)width[k], head[k]);
        else printf("%s\n", head[k]);
      }
    }
    for (size_t i = 0; i < list.n; i++) {
      const orthod_param_info_t *p = &list.params[i];
      snprintf(cell[0], sizeof cell[0], "%s", p->name);
      shape_text(p->shape, p->ndim, cell[1], sizeof cell[1]);
      snprintf(cell[2], sizeof cell[2], "%s", p->algorithm);
      snprintf(cell[3], sizeof cell[3], "%" PRIu64, p->step);
      snprintf(cell[4], sizeof cell[4], "%.2f", mib(p->device_bytes));
      mode_text(p, cell[5], sizeof cell[5]);
      for (int k = 0; k < NCOL; k++) {
        if (pass == 0) {
          if (strlen(cell[k]) > width[k]) width[k] = strlen(cell[k]);
        } else {
          if (k + 1 < NCOL) printf(right[k] ? "%*s  " : "%-*s  ", (int)width[k], cell[k]);
          else printf("%s\n", cell[k]);
        }
      }
    }
  }
  if (list.device_bytes_limit)
    printf("%zu parameter%s, %.2f MiB on the device (limit %.2f MiB)\n", list.n,
           list.n == 1 ? "" : "s", mib(list.device_bytes_used), mib(list.device_bytes_limit));
  else
    printf("%zu parameter%s, %.2f MiB on the device (no limit)\n", list.n, list.n == 1 ? "" : "s",
           mib(list.device_bytes_used));
  orthod_param_list_clear(&list);
  return 0;
}

/* ---- describe -------------------------------------------------------------------------------- */

static void print_info(const orthod_param_info_t *p) {
  char shape[300], mode[64];
  printf("%-14s%s\n", "name", p->name);
  printf("%-14s%s\n", "shape", shape_text(p->shape, p->ndim, shape, sizeof shape));
  printf("%-14s%s\n", "algorithm", p->algorithm);
  printf("%-14s%" PRIu64 "\n", "elements", p->elements);
  printf("%-14s%" PRIu64 "\n", "step", p->step);
  printf("%-14s%.2f MiB\n", "device", mib(p->device_bytes));
  printf("%-14s%s\n", "mode", mode_text(p, mode, sizeof mode));
  if (p->max_staleness) printf("%-14s%" PRIu64 "\n", "max staleness", p->max_staleness);
  if (p->sync_timeout_ms) printf("%-14s%" PRIu32 " ms\n", "sync timeout", p->sync_timeout_ms);
  else printf("%-14s%s\n", "sync timeout", "daemon default");
  size_t w = 3;
  for (size_t i = 0; i < p->n_options; i++)
    if (strlen(p->options[i].key) > w) w = strlen(p->options[i].key);
  printf("options:\n");
  for (size_t i = 0; i < p->n_options; i++)
    printf("  %-*s  %s\n", (int)w, p->options[i].key, p->options[i].value);
}

static int cmd_describe(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)g;
  if (argc != 2) return usage_error("describe", "%s", "expects exactly one NAME");
  orthod_param_info_t info;
  if (orthod_describe(c, argv[1], &info) != 0) return rpc_error(c);
  print_info(&info);
  orthod_param_info_clear(&info);
  return 0;
}

/* ---- pull ------------------------------------------------------------------------------------ */

typedef struct {
  orthod_client_t *c;
  float *data;                           /* elements fp32 */
  uint64_t elements, step, received;
  int64_t shape[ORTHOD_CLIENT_MAX_DIMS];
  int ndim;
  bool done;
} pull_state_t;

static int pull_cb(void *arg, const orthod_pull_chunk_t *ch) {
  pull_state_t *st = arg;
  if (ch->first) {
    if (st->data != NULL) return 1; /* one parameter only */
    st->elements = ch->elements;
    st->ndim = ch->ndim;
    memcpy(st->shape, ch->shape, (size_t)ch->ndim * sizeof *ch->shape);
    st->data = malloc((size_t)ch->elements * sizeof(float));
    if (st->data == NULL) return 1;
  }
  if (st->data == NULL) return 1;
  orthod_client_convert(st->data + ch->offset, ORTHOD_CLIENT_F32, ch->data, ch->dtype, ch->count);
  st->received += ch->count;
  st->step = ch->step;
  if (ch->last) st->done = st->received == st->elements;
  return 0;
}

/* NumPy .npy version 1.0: magic, header length, a Python dict literal padded so that the data
 * starts on a 64-byte boundary, then the raw little-endian float32 data. */
static int write_npy(const char *path, const float *data, const int64_t *shape, int ndim,
                     uint64_t elements) {
  char dict[512];
  int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
  for (int d = 0; d < ndim; d++)
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%" PRId64 "%s", shape[d],
                  ndim == 1 ? "," : (d + 1 < ndim ? ", " : ""));
  n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  FILE *f = fopen(path, "wb");
  if (f == NULL) return -1;
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  size_t hlen = (size_t)n + pad + 1;
  pre[8] = (unsigned char)(hlen & 0xff);
  pre[9] = (unsigned char)(hlen >> 8);
  int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = 0; ok && i < pad; i++) ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  /* the data is little-endian on every platform this builds on (x86-64, aarch64) */
  ok = ok && fwrite(data, sizeof *data, (size_t)elements, f) == (size_t)elements;
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : -1;
}

static int cmd_pull(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)g;
  const char *name = NULL, *out = NULL;
  orthod_client_dtype_t wire = ORTHOD_CLIENT_F32;
  for (int i = 1; i < argc; i++) {
    if ((strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0) && i + 1 < argc) {
      out = argv[++i];
    } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      if (parse_dtype(argv[++i], &wire) != 0)
        return usage_error("pull", "unknown dtype '%s' (f32, bf16, f16)", argv[i]);
    } else if (argv[i][0] == '-') {
      return usage_error("pull", "unknown or incomplete option '%s'", argv[i]);
    } else if (name == NULL) {
      name = argv[i];
    } else {
      return usage_error("pull", "unexpected argument '%s'", argv[i]);
    }
  }
  if (name == NULL || out == NULL) return usage_error("pull", "%s", "needs NAME and -o FILE.npy");
  pull_state_t st = {.c = c};
  const char *names[1] = {name};
  int rc = orthod_pull_each(c, names, 1, wire, pull_cb, &st);
  if (rc != 0) {
    free(st.data);
    return rpc_error(c);
  }
  if (!st.done) {
    free(st.data);
    fprintf(stderr, "orthoctl: DATA_LOSS: incomplete weights for '%s'\n", name);
    return EXIT_RPC;
  }
  if (write_npy(out, st.data, st.shape, st.ndim, st.elements) != 0) {
    fprintf(stderr, "orthoctl: cannot write %s: %s\n", out, strerror(errno));
    free(st.data);
    return EXIT_RPC;
  }
  char shape[300];
  printf("pulled '%s' (%s, step %" PRIu64 ", %s on the wire) to %s\n", name,
         shape_text(st.shape, st.ndim, shape, sizeof shape), st.step,
         wire == ORTHOD_CLIENT_F32 ? "f32" : wire == ORTHOD_CLIENT_BF16 ? "bf16" : "f16", out);
  free(st.data);
  return 0;
}

/* ---- drop, set ------------------------------------------------------------------------------- */

static int cmd_drop(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)g;
  if (argc != 2) return usage_error("drop", "%s", "expects exactly one NAME");
  uint64_t step = 0;
  if (orthod_drop(c, argv[1], &step) != 0) return rpc_error(c);
  printf("dropped '%s' (at step %" PRIu64 ")\n", argv[1], step);
  return 0;
}

/* Split "key=value" arguments into options (pointing into argv, '=' replaced by NUL). */
static int parse_options(const char *cmd, char **args, int n, orthod_option_t *opts) {
  for (int i = 0; i < n; i++) {
    char *eq = strchr(args[i], '=');
    if (eq == NULL || eq == args[i])
      return usage_error(cmd, "expected KEY=VALUE, got '%s'", args[i]);
    *eq = '\0';
    opts[i].key = args[i];
    opts[i].value = eq + 1;
  }
  return 0;
}

static int cmd_set(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)g;
  if (argc < 3) return usage_error("set", "%s", "needs NAME and at least one KEY=VALUE");
  int n = argc - 2;
  orthod_option_t *opts = calloc((size_t)n, sizeof *opts);
  if (opts == NULL) return EXIT_RPC;
  int rc = parse_options("set", argv + 2, n, opts);
  if (rc != 0) {
    free(opts);
    return rc;
  }
  orthod_param_info_t info;
  if (orthod_set_config(c, argv[1], opts, (size_t)n, &info) != 0) {
    free(opts);
    return rpc_error(c);
  }
  printf("set on '%s' (step %" PRIu64 "):\n", info.name, info.step);
  for (int i = 0; i < n; i++) {
    const char *v = orthod_param_info_option(&info, opts[i].key);
    printf("  %s = %s\n", opts[i].key, v ? v : opts[i].value);
  }
  orthod_param_info_clear(&info);
  free(opts);
  return 0;
}

/* ---- checkpoint ------------------------------------------------------------------------------ */

static int cmd_checkpoint(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  if (argc > 1) return usage_error("checkpoint", "unexpected argument '%s'", argv[1]);
  orthod_client_checkpoint_info_t info;
  if (orthod_checkpoint(c, &info) != 0) return rpc_error(c);
  printf("%s: checkpoint %" PRIu64 " (%" PRIu32 " parameter%s, %.2f MiB) -> %s\n", g->addr,
         info.sequence, info.parameters, info.parameters == 1 ? "" : "s", mib(info.bytes),
         info.path);
  return 0;
}

/* ---- bench ----------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int cmd_bench(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)g;
  int64_t shape[ORTHOD_CLIENT_MAX_DIMS] = {1024, 1024};
  int ndim = 2;
  long steps = 10;
  const char *algo = "muon";
  orthod_client_dtype_t wire = ORTHOD_CLIENT_F32;
  orthod_option_t opts[32];
  int n_opts = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--shape") == 0 && i + 1 < argc) {
      if (parse_shape(argv[++i], shape, &ndim) != 0)
        return usage_error("bench", "bad shape '%s' (e.g. 1024x1024)", argv[i]);
    } else if (strcmp(a, "--steps") == 0 && i + 1 < argc) {
      char *end;
      steps = strtol(argv[++i], &end, 10);
      if (*end != '\0' || steps < 1 || steps > 100000)
        return usage_error("bench", "bad step count '%s' (1..100000)", argv[i]);
    } else if (strcmp(a, "--algo") == 0 && i + 1 < argc) {
      algo = argv[++i];
    } else if (strcmp(a, "--dtype") == 0 && i + 1 < argc) {
      if (parse_dtype(argv[++i], &wire) != 0)
        return usage_error("bench", "unknown dtype '%s' (f32, bf16, f16)", argv[i]);
    } else if (strcmp(a, "--set") == 0 && i + 1 < argc) {
      if (n_opts == 32) return usage_error("bench", "%s", "at most 32 --set options");
      int rc = parse_options("bench", &argv[++i], 1, &opts[n_opts]);
      if (rc != 0) return rc;
      n_opts++;
    } else {
      return usage_error("bench", "unknown or incomplete option '%s'", a);
    }
  }
  uint64_t elements = 1;
  for (int d = 0; d < ndim; d++) elements *= (uint64_t)shape[d];
  if (elements > ((uint64_t)1 << 31))
    return usage_error("bench", "%s", "at most 2^31 elements");
  char name[64];
  snprintf(name, sizeof name, "orthoctl-bench-%ld", (long)getpid());
  orthod_param_spec_t spec = {.name = name, .ndim = ndim, .algorithm = algo, .options = opts,
                              .n_options = (size_t)n_opts};
  memcpy(spec.shape, shape, sizeof shape);
  float *w = malloc((size_t)elements * sizeof *w), *gr = malloc((size_t)elements * sizeof *gr);
  double *times = calloc((size_t)steps, sizeof *times);
  orthod_step_stream_t *s = NULL;
  int rc = 0, registered = 0;
  if (w == NULL || gr == NULL || times == NULL) {
    fprintf(stderr, "orthoctl: out of memory\n");
    rc = EXIT_RPC;
    goto out;
  }
  uint32_t x = 12345;
  for (uint64_t i = 0; i < elements; i++) {
    x = x * 1664525u + 1013904223u;
    w[i] = ((float)(x >> 8) * (1.0f / 16777216.0f) - 0.5f) * 0.1f;
    x = x * 1664525u + 1013904223u;
    gr[i] = (float)(x >> 8) * (1.0f / 16777216.0f) - 0.5f;
  }
  if (orthod_register(c, &spec, NULL, NULL) != 0) {
    rc = rpc_error(c);
    goto out;
  }
  registered = 1;
  orthod_tensor_t t = {.name = name, .data = w, .dtype = ORTHOD_CLIENT_F32, .elements = elements};
  if (orthod_upload(c, &t, 1, ORTHOD_CLIENT_F32, NULL, NULL) != 0 ||
      orthod_step_open(c, &s) != 0) {
    rc = rpc_error(c);
    goto out;
  }
  char shp[300];
  printf("bench: '%s' %s %s, %ld steps, %s on the wire, daemon %s\n", name,
         shape_text(shape, ndim, shp, sizeof shp), algo, steps,
         wire == ORTHOD_CLIENT_F32 ? "f32" : wire == ORTHOD_CLIENT_BF16 ? "bf16" : "f16", g->addr);
  for (long k = 0; k < steps; k++) {
    orthod_step_item_t it = {.name = name, .step = (uint64_t)k, .grad = gr,
                             .grad_dtype = ORTHOD_CLIENT_F32, .grad_wire = wire,
                             .elements = elements, .weights = w,
                             .weights_dtype = ORTHOD_CLIENT_F32, .reply_dtype = wire};
    double t0 = now_s();
    if (orthod_step(s, 0, &it, 1) != 0) {
      fprintf(stderr, "orthoctl: %s\n", orthod_step_last_error(s));
      rc = EXIT_RPC;
      goto out;
    }
    times[k] = now_s() - t0;
  }
  if (orthod_step_finish(s) != 0) {
    fprintf(stderr, "orthoctl: %s\n", orthod_step_last_error(s));
    rc = EXIT_RPC;
    goto out;
  }
  double sum = 0;
  for (long k = 0; k < steps; k++) sum += times[k];
  double first = times[0];
  qsort(times, (size_t)steps, sizeof *times, cmp_double);
  double med = times[steps / 2], mean = sum / (double)steps;
  double bytes = 2.0 * (double)elements * (double)orthod_client_dtype_size(wire);
  printf("%-12s %10s %10s %10s %10s %12s\n", "", "first", "min", "median", "mean", "MB/s(med)");
  printf("%-12s %10.2f %10.2f %10.2f %10.2f %12.1f\n", "step ms", first * 1e3, times[0] * 1e3,
         med * 1e3, mean * 1e3, bytes / med / 1e6);
  printf("(MB/s counts gradient out + weights back: %.1f MB per step)\n", bytes / 1e6);
out:
  orthod_step_destroy(s);
  if (registered && orthod_drop(c, name, NULL) != 0 && rc == 0) rc = rpc_error(c);
  free(w);
  free(gr);
  free(times);
  return rc;
}

/* ---- where ----------------------------------------------------------------------------------- */

static int cmd_where(orthod_client_t *c, const globals_t *g, int argc, char **argv) {
  (void)c;
  if (argc < 2) return usage_error("where", "%s", "needs at least one NAME");
  const char *one[1] = {g->addr};
  const char *const *addrs = g->shards ? g->shards : one;
  size_t n = g->shards ? g->n_shards : 1;
  for (int i = 1; i < argc; i++) {
    size_t k = orthod_shard_placement(addrs, n, argv[i]);
    printf("%s\t%zu\t%s\n", argv[i], k, addrs[k]);
  }
  return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */

static const command_t commands[] = {
    {"health", cmd_health, "[--watch] [SERVICE]", "check that the daemon serves (grpc.health.v1)",
     "Prints ADDR: SERVING and exits 0, or exits 1 when the daemon is not serving or cannot be\n"
     "reached. SERVICE: \"\" (the default, the whole daemon) or orthod.v1.Optimizer; another\n"
     "name is NOT_FOUND.\n"
     "\n"
     "--watch (-w) follows the status (grpc.health.v1.Health/Watch; one daemon, not with\n"
     "--shards): prints TIME ADDR: STATUS at once and on every change, with TIME the local\n"
     "time (2026-01-05T10:32:01.123+0100), until the stream ends or Ctrl-C. An unknown SERVICE\n"
     "prints SERVICE_UNKNOWN and keeps watching. --timeout bounds the wait for the first status\n"
     "only. Exit status: 0 after Ctrl-C (SIGINT) or SIGTERM, and when the daemon shuts down in\n"
     "order (NOT_SERVING, then the stream ends with UNAVAILABLE: printed as TIME ADDR: stream\n"
     "ended: ...); 1 for any other end (daemon unreachable or gone without NOT_SERVING, no\n"
     "first status within --timeout), with the error on stderr.\n", ON_EACH},
    {"list", cmd_list, "[PREFIX]", "table of parameters (name, shape, algorithm, step, MiB, mode)",
     "Lists the parameters whose names start with PREFIX (all without it), in name order, with\n"
     "their device memory (weights + optimizer state) and the device total.\n", ON_EACH},
    {"describe", cmd_describe, "NAME", "one parameter and the effective value of every option",
     "Prints the spec the parameter was registered with, its step counter, and every\n"
     "hyper-parameter with its effective value.\n", BY_NAME},
    {"pull", cmd_pull, "NAME -o FILE.npy [--dtype f32|bf16|f16]", "save current weights as .npy",
     "Writes the parameter's current weights to FILE.npy (NumPy, float32 '<f4', its shape).\n"
     "--dtype picks the dtype on the wire (default f32); with bf16 or f16 the values are\n"
     "rounded by the daemon and widened back to float32 in the file.\n", BY_NAME},
    {"drop", cmd_drop, "NAME", "remove a parameter and its optimizer state",
     "Removes the parameter; prints the step counter it had.\n", BY_NAME},
    {"set", cmd_set, "NAME KEY=VALUE...", "change hyper-parameters (lr, weight_decay, ...)",
     "Changes hyper-parameters of a registered parameter by the engine's keys (docs/ENGINE.md),\n"
     "e.g. `orthoctl set layer0.w lr=0.01 weight_decay=0`. Keys that define the state layout\n"
     "(algo, split_rows, num_heads, ...) cannot change. Prints the effective values.\n", BY_NAME},
    {"checkpoint", cmd_checkpoint, "", "write a checkpoint of every parameter to the state dir",
     "Has the daemon write every parameter (weights, optimizer state, step counter, spec) to a\n"
     "checkpoint file in its state directory and waits until the file is durable. Prints\n"
     "ADDR: checkpoint SEQUENCE (N parameters, SIZE MiB) -> PATH, with PATH the file on the\n"
     "daemon's machine and SEQUENCE one more than the previous checkpoint of that directory.\n"
     "--timeout bounds the wait; when it expires the file may still be written. With --shards\n"
     "every daemon writes its own checkpoint (one after the other, not at one instant).\n",
     ON_EACH},
    {"bench", cmd_bench,
     "[--shape 1024x1024] [--steps 10] [--algo muon] [--dtype f32|bf16|f16] [--set KEY=VALUE]",
     "time steps of a temporary parameter",
     "Registers a temporary parameter 'orthoctl-bench-PID', uploads random weights, runs the\n"
     "steps on one Step stream (gradient out, new weights back, --dtype on the wire both ways),\n"
     "prints step times (first, min, median, mean) and the median throughput, then drops it.\n",
     ON_EACH},
    {"where", cmd_where, "NAME...", "which shard owns each name (with --shards)",
     "Prints NAME<TAB>INDEX<TAB>ADDRESS for each name: the --shards daemon that the sharded\n"
     "client's consistent hashing places it on (without --shards, the one --addr daemon).\n"
     "Contacts no daemon.\n", LOCAL},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void print_usage(FILE *f) {
  fprintf(f,
          "usage: orthoctl [--addr HOST:PORT | --shards A,B,...] [--timeout MS] [--token TOKEN]\n"
          "                [--tls] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]\n"
          "                [--tls-server-name NAME] COMMAND [ARGS]\n"
          "\n"
          "  --addr HOST:PORT  daemon address (default $ORTHOD_ADDR, else 127.0.0.1:50051)\n"
          "  --shards A,B,...  the daemons of a sharded client, in its order: describe, pull,\n"
          "                    drop and set go to the owner of NAME; health, list, checkpoint\n"
          "                    and bench run on each daemon in turn\n"
          "  --timeout MS      deadline per call in milliseconds (default 60000; 0: none)\n"
          "  --token TOKEN     bearer token (default $ORTHOD_TOKEN)\n"
          "  --tls             connect with TLS, verifying the daemon with gRPC's default roots\n"
          "                    (implied by every --tls-* option and $ORTHOD_TLS_*)\n"
          "  --tls-ca FILE     PEM CA bundle that verifies the daemon (default $ORTHOD_TLS_CA)\n"
          "  --tls-cert FILE   PEM client certificate chain for mutual TLS, with --tls-key\n"
          "                    (default $ORTHOD_TLS_CERT)\n"
          "  --tls-key FILE    PEM private key of --tls-cert (default $ORTHOD_TLS_KEY)\n"
          "  --tls-server-name NAME\n"
          "                    name to check in the daemon's certificate instead of the host of\n"
          "                    the address\n"
          "\ncommands:\n");
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
  fprintf(f, "\n'orthoctl COMMAND --help' describes one command. Exit status: 0 ok, 1 error from\n"
             "the daemon or the connection, 2 usage.\n");
}

/* The NAME argument of a BY_NAME command (the first word that is neither an option nor an
 * option's value), NULL if none: the command itself then reports the usage error. */
static const char *name_argument(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0 ||
        strcmp(argv[i], "--dtype") == 0) {
      i++;
      continue;
    }
    if (argv[i][0] != '-') return argv[i];
  }
  return NULL;
}

/* Split "A,B,C" into g->shards (pointing into *buf, a copy the caller frees). */
static int parse_shards(const char *text, globals_t *g, char **buf, const char ***list) {
  size_t n = 1;
  for (const char *p = text; *p; p++) n += *p == ',';
  *buf = strdup(text);
  *list = calloc(n, sizeof **list);
  if (*buf == NULL || *list == NULL) return -1;
  size_t k = 0;
  for (char *p = *buf, *comma; p != NULL; p = comma ? comma + 1 : NULL) {
    comma = strchr(p, ',');
    if (comma) *comma = '\0';
    if (*p == '\0') return -1;
    for (size_t j = 0; j < k; j++)
      if (strcmp((*list)[j], p) == 0) return -1;
    (*list)[k++] = p;
  }
  g->shards = *list;
  g->n_shards = k;
  return 0;
}

/* Create a client for `addr` and run the command on it. */
static int run_on(const command_t *cmd, const globals_t *g, const char *addr, int argc,
                  char **argv) {
  orthod_client_options_t opts;
  orthod_client_options_init(&opts);
  if (g->timeout_ms >= 0) opts.deadline_ms = g->timeout_ms;
  opts.token = g->token;
  opts.tls = g->tls;
  opts.tls_ca_file = g->tls_ca;
  opts.tls_cert_file = g->tls_cert;
  opts.tls_key_file = g->tls_key;
  opts.tls_server_name = g->tls_server_name;
  orthod_client_t *c = NULL;
  int rc = orthod_client_create(addr, &opts, &c);
  if (rc != 0) {
    fprintf(stderr, "orthoctl: %s\n", orthod_client_create_error());
    /* Bad options (an unreadable TLS file, a key without a certificate) are the caller's to
     * fix, like a usage error; no daemon was contacted. */
    return rc == STATUS_INVALID_ARGUMENT ? EXIT_USAGE : EXIT_RPC;
  }
  globals_t here = *g;
  here.addr = addr;
  rc = cmd->run(c, &here, argc, argv);
  orthod_client_destroy(c);
  return rc;
}

/* $NAME, or NULL when unset or empty. */
static const char *env_or_null(const char *name) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Whether argv[*i] is option `name` ("--name VALUE" or "--name=VALUE"); *value receives it. */
static bool option_value(int argc, char **argv, int *i, const char *name, const char **value) {
  size_t len = strlen(name);
  if (strncmp(argv[*i], name, len) != 0) return false;
  if (argv[*i][len] == '=') {
    *value = argv[*i] + len + 1;
    return true;
  }
  if (argv[*i][len] != '\0' || *i + 1 >= argc) return false;
  *value = argv[++*i];
  return true;
}

int main(int argc, char **argv) {
  globals_t g = {.addr = env_or_null("ORTHOD_ADDR"), .timeout_ms = -1,
                 .token = env_or_null("ORTHOD_TOKEN"), .tls_ca = env_or_null("ORTHOD_TLS_CA"),
                 .tls_cert = env_or_null("ORTHOD_TLS_CERT"),
                 .tls_key = env_or_null("ORTHOD_TLS_KEY")};
  if (g.addr == NULL) g.addr = "127.0.0.1:50051";
  const char *shards_text = NULL;
  bool addr_given = false;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      print_usage(stdout);
      return 0;
    } else if (strcmp(a, "--addr") == 0 && i + 1 < argc) {
      g.addr = argv[++i];
      addr_given = true;
    } else if (strncmp(a, "--addr=", 7) == 0) {
      g.addr = a + 7;
      addr_given = true;
    } else if (strcmp(a, "--shards") == 0 && i + 1 < argc) {
      shards_text = argv[++i];
    } else if (strncmp(a, "--shards=", 9) == 0) {
      shards_text = a + 9;
    } else if ((strcmp(a, "--timeout") == 0 && i + 1 < argc) || strncmp(a, "--timeout=", 10) == 0) {
      const char *v = a[9] == '=' ? a + 10 : argv[++i];
      char *end;
      errno = 0;
      long long t = strtoll(v, &end, 10);
      if (*v == '\0' || *end != '\0' || errno != 0 || t < 0)
        return usage_error(NULL, "bad --timeout '%s' (milliseconds, >= 0)", v);
      g.timeout_ms = t;
    } else if (option_value(argc, argv, &i, "--token", &g.token)) {
    } else if (strcmp(a, "--tls") == 0) {
      g.tls = true;
    } else if (option_value(argc, argv, &i, "--tls-ca", &g.tls_ca) ||
               option_value(argc, argv, &i, "--tls-cert", &g.tls_cert) ||
               option_value(argc, argv, &i, "--tls-key", &g.tls_key) ||
               option_value(argc, argv, &i, "--tls-server-name", &g.tls_server_name)) {
    } else {
      return usage_error(NULL, "unknown or incomplete option '%s'", a);
    }
  }
  if (i == argc) {
    print_usage(stderr);
    return EXIT_USAGE;
  }
  const command_t *cmd = NULL;
  for (size_t k = 0; k < N_COMMANDS; k++)
    if (strcmp(argv[i], commands[k].name) == 0) cmd = &commands[k];
  if (cmd == NULL) return usage_error(NULL, "unknown command '%s'", argv[i]);
  for (int k = i + 1; k < argc; k++) {
    if (strcmp(argv[k], "-h") == 0 || strcmp(argv[k], "--help") == 0) {
      printf("usage: orthoctl [global options] %s%s%s\n\n%s\n%s", cmd->name,
             cmd->args[0] ? " " : "", cmd->args, cmd->summary, cmd->help);
      return 0;
    }
  }
  if (shards_text == NULL) return run_on(cmd, &g, g.addr, argc - i, argv + i);

  if (addr_given) return usage_error(NULL, "%s", "--addr and --shards exclude each other");
  char *buf = NULL;
  const char **list = NULL;
  int rc;
  if (parse_shards(shards_text, &g, &buf, &list) != 0) {
    rc = usage_error(NULL, "bad --shards '%s' (distinct, non-empty addresses: A,B,...)",
                     shards_text);
  } else if (cmd->mode == LOCAL) {
    rc = cmd->run(NULL, &g, argc - i, argv + i);
  } else if (cmd->mode == BY_NAME) {
    const char *name = name_argument(argc - i, argv + i);
    size_t k = name ? orthod_shard_placement(g.shards, g.n_shards, name) : 0;
    rc = run_on(cmd, &g, g.shards[k], argc - i, argv + i);
  } else {
    rc = 0;
    for (size_t k = 0; k < g.n_shards; k++) {
      printf("== shard %zu (%s)\n", k, g.shards[k]);
      fflush(stdout);
      int r = run_on(cmd, &g, g.shards[k], argc - i, argv + i);
      if (r > rc) rc = r;
      if (r == EXIT_USAGE) break;
    }
  }
  free(list);
  free(buf);
  return rc;
}
