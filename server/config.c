/* server/config.c — the daemon's configuration. One static table (one row per key) drives the
 * defaults, the config file, the ORTHOD_* environment, the flags, every range check, --help, the
 * sample file in deploy/, the key table in docs/OPERATIONS.md and the effective-config log, so a
 * key added here is documented and validated everywhere at once. Nothing here exits: the caller
 * decides what a result means. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the table ------------------------------------------------------------------------------ */

typedef enum {
  K_BOOL,   /* bool: true/false, yes/no, on/off, 1/0; flags --key / --no-key */
  K_U32,    /* uint32_t, decimal */
  K_INT,    /* int, decimal, non-negative */
  K_U64,    /* uint64_t, decimal (a count) */
  K_SIZE,   /* uint64_t bytes, decimal with an optional K/M/G/T suffix (powers of 1024) */
  K_ENUM,   /* an int-sized enum; the value is the index of the name in `names` */
  K_CHOICE, /* a char array holding one of `names` */
  K_PATH,   /* a char array, a path */
  K_LISTEN, /* a char array, host:port */
} key_type_t;

enum {
  KF_NOT_IN_FILE = 1u << 0, /* the config file cannot set it (the key that names the file) */
  KF_MAY_BE_EMPTY = 1u << 1,
};

typedef struct {
  const char *name;          /* "max-message-bytes": flag --name, env ORTHOD_MAX_MESSAGE_BYTES */
  key_type_t type;
  size_t offset;             /* of the field in orthod_server_config_t */
  size_t size;               /* of the field, bytes (the capacity of char arrays) */
  const char *def;           /* the default, written as a value is written */
  uint64_t min, max;         /* numeric range, inclusive */
  const char *metavar;       /* placeholder in --help */
  const char *help;          /* one sentence, no '|' (it lands in a Markdown table) */
  const char *const *names;  /* K_ENUM, K_CHOICE: the allowed values */
  unsigned flags;            /* KF_* */
} config_key_t;

#define FIELD(f) offsetof(orthod_server_config_t, f), sizeof(((orthod_server_config_t *)0)->f)
#define KIB UINT64_C(1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)
#define DAY_MS UINT64_C(86400000)

static const char *const backend_names[] = {"auto", "cpu", "cuda", NULL};
/* Index = enum value: orthod_nonfinite_policy_t, orthod_log_level_t, orthod_log_format_t. */
static const char *const nonfinite_names[] = {"reject", "skip", NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};

static const config_key_t keys[] = {
    /* network */
    {"listen", K_LISTEN, FIELD(listen), "127.0.0.1:50051", 0, 0, "HOST:PORT",
     "Address to serve gRPC on. Port 0 picks a free port; IPv6 is written [::1]:PORT.", NULL, 0},
    {"allow-insecure-remote", K_BOOL, FIELD(allow_insecure_remote), "false", 0, 1, NULL,
     "Allow a listen address beyond loopback without TLS. Traffic is then unencrypted.", NULL,
     0},
    {"tls-cert", K_PATH, FIELD(tls_cert), "", 0, 0, "FILE",
     "PEM certificate chain: serve gRPC over TLS only (with tls-key). Any listen address is "
     "then allowed.",
     NULL, KF_MAY_BE_EMPTY},
    {"tls-key", K_PATH, FIELD(tls_key), "", 0, 0, "FILE", "PEM private key of tls-cert.", NULL,
     KF_MAY_BE_EMPTY},
    {"tls-client-ca", K_PATH, FIELD(tls_client_ca), "", 0, 0, "FILE",
     "PEM CA bundle: require client certificates signed by it (mutual TLS).", NULL,
     KF_MAY_BE_EMPTY},
    {"auth-tokens", K_PATH, FIELD(auth_tokens), "", 0, 0, "FILE",
     "Bearer tokens and what each may read or write (docs/OPERATIONS.md, Security); empty: "
     "every client may do everything.",
     NULL, KF_MAY_BE_EMPTY},
    {"max-message-bytes", K_SIZE, FIELD(max_message_bytes), "16M", 64 * KIB, 2 * GIB, "SIZE",
     "Largest gRPC message the daemon receives or sends.", NULL, 0},
    {"chunk-bytes", K_SIZE, FIELD(chunk_bytes), "1M", KIB, 2 * GIB - KIB, "SIZE",
     "Tensor data bytes per message the daemon sends (Step and Pull replies); at most "
     "max-message-bytes less 1K.",
     NULL, 0},
    {"keepalive-time-ms", K_U32, FIELD(keepalive_time_ms), "60000", 1000, DAY_MS, "MS",
     "The daemon pings a connection that has been idle this long.", NULL, 0},
    {"keepalive-timeout-ms", K_U32, FIELD(keepalive_timeout_ms), "20000", 1000, DAY_MS, "MS",
     "A connection whose ping is not acknowledged within this time is closed.", NULL, 0},
    {"keepalive-permit-ms", K_U32, FIELD(keepalive_permit_ms), "10000", 1000, DAY_MS, "MS",
     "Shortest interval of client keepalive pings the daemon expects (pings are permitted "
     "without calls and never answered with GOAWAY).",
     NULL, 0},
    {"metrics-listen", K_LISTEN, FIELD(metrics_listen), "", 0, 0, "HOST:PORT",
     "Serve Prometheus metrics on http://HOST:PORT/metrics and a probe on /healthz (plain HTTP, "
     "read-only; any address is allowed); empty: off.",
     NULL, KF_MAY_BE_EMPTY},
    /* device */
    {"backend", K_CHOICE, FIELD(backend), "auto", 0, 0, "auto|cpu|cuda",
     "Compute backend. auto takes CUDA when this build has it and a device is present, else "
     "the CPU.",
     backend_names, 0},
    {"device", K_INT, FIELD(device), "0", 0, 255, "N", "CUDA device index.", NULL, 0},
    {"threads", K_INT, FIELD(threads), "0", 0, 1024, "N",
     "BLAS threads of the CPU backend; 0 uses every core.", NULL, 0},
    {"memory-limit", K_SIZE, FIELD(memory_limit), "0", 0, UINT64_MAX, "SIZE",
     "Bytes of weights and optimizer state the daemon may hold; 0 means no limit.", NULL, 0},
    /* limits and policies */
    {"max-tensor-elements", K_U64, FIELD(max_tensor_elements), "2147483648", 1,
     UINT64_C(1) << 40, "N", "Largest parameter, in elements.", NULL, 0},
    {"max-params", K_U32, FIELD(max_params), "100000", 1, 100000000, "N",
     "Most parameters registered at once.", NULL, 0},
    {"nonfinite", K_ENUM, FIELD(nonfinite), "reject", 0, 0, "reject|skip",
     "A gradient with NaN or Inf: reject fails the push with INVALID_ARGUMENT; skip advances "
     "the step counter and leaves the weights unchanged.",
     nonfinite_names, 0},
    {"sync-timeout-ms", K_U32, FIELD(sync_timeout_ms), "30000", 1, DAY_MS, "MS",
     "SYNC mode: how long after the first push of a step the daemon waits for the other "
     "workers before it fails the step with ABORTED (a parameter may set its own).",
     NULL, 0},
    {"drain-timeout-ms", K_U32, FIELD(drain_timeout_ms), "3000", 0, 60000, "MS",
     "On SIGTERM or SIGINT, how long in-flight calls may run before they are cancelled.", NULL,
     0},
    /* files and logs */
    {"state-dir", K_PATH, FIELD(state_dir), "./orthod-data", 0, 0, "DIR",
     "Directory for the daemon's state files.", NULL, 0},
    {"restore", K_BOOL, FIELD(restore), "true", 0, 1, NULL,
     "At start, load the newest checkpoint in state-dir (if there is one). A checkpoint that "
     "fails verification stops the start.",
     NULL, 0},
    {"checkpoint-interval-s", K_U32, FIELD(checkpoint_interval_s), "300", 0, 7 * 24 * 3600,
     "S",
     "Write a checkpoint this often when anything changed since the last one; 0: only on "
     "request (Checkpoint RPC) and at shutdown.",
     NULL, 0},
    {"checkpoint-keep", K_U32, FIELD(checkpoint_keep), "3", 1, 1000, "N",
     "Newest checkpoints kept in state-dir; older ones are deleted after each write.", NULL, 0},
    {"checkpoint-on-shutdown", K_BOOL, FIELD(checkpoint_on_shutdown), "true", 0, 1, NULL,
     "Write a final checkpoint on SIGTERM/SIGINT, after the last step, when anything changed.",
     NULL, 0},
    {"config", K_PATH, FIELD(config_file), "", 0, 0, "FILE",
     "Read settings from FILE (key = value lines). Flags and environment override it.", NULL,
     KF_NOT_IN_FILE | KF_MAY_BE_EMPTY},
    {"log-level", K_ENUM, FIELD(log_level), "info", 0, 0, "error|warn|info|debug",
     "Most verbose level logged.", log_level_names, 0},
    {"log-format", K_ENUM, FIELD(log_format), "text", 0, 0, "text|json",
     "Log lines on stderr as text or as JSON objects, one per line.", log_format_names, 0},
};

#define N_KEYS (sizeof keys / sizeof keys[0])
_Static_assert(sizeof keys / sizeof keys[0] <= ORTHOD_CONFIG_KEYS_MAX,
               "raise ORTHOD_CONFIG_KEYS_MAX in config.h");
_Static_assert(sizeof(orthod_nonfinite_policy_t) == sizeof(int) &&
                   sizeof(orthod_log_level_t) == sizeof(int) &&
                   sizeof(orthod_log_format_t) == sizeof(int),
               "K_ENUM fields are stored as int");

/* ---- small helpers -------------------------------------------------------------------------- */

/* Where a value is being read from, for error messages. */
typedef struct {
  orthod_config_source_t src;
  const char *file; /* SRC_FILE */
  unsigned line;    /* SRC_FILE */
} origin_t;

static const char *const source_names[] = {"default", "file", "env", "flag"};

static void *field_ptr(orthod_server_config_t *c, const config_key_t *k) {
  return (char *)c + k->offset;
}
static const void *field_cptr(const orthod_server_config_t *c, const config_key_t *k) {
  return (const char *)c + k->offset;
}

static const config_key_t *find_key(const char *name, size_t len) {
  for (size_t i = 0; i < N_KEYS; i++)
    if (strlen(keys[i].name) == len && memcmp(keys[i].name, name, len) == 0) return &keys[i];
  return NULL;
}

static size_t key_index(const config_key_t *k) { return (size_t)(k - keys); }

/* ORTHOD_MAX_MESSAGE_BYTES for max-message-bytes. */
static void env_name(const config_key_t *k, char *out, size_t outlen) {
  size_t n = (size_t)snprintf(out, outlen, "ORTHOD_");
  for (const char *p = k->name; *p != '\0' && n + 1 < outlen; p++)
    out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  out[n < outlen ? n : outlen - 1] = '\0';
}

static void set_err(char *err, size_t errlen, const char *fmt, ...) ORTHOD_PRINTF(3, 4);
static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* "--chunk-bytes (environment ORTHOD_CHUNK_BYTES)" / "max-message-bytes (file x.conf:7)": a key
 * is named the way it is written where the value came from (files write it without dashes). */
static void describe_origin(const config_key_t *k, const origin_t *o, char *out, size_t outlen) {
  char env[96];
  switch (o->src) {
    case ORTHOD_CONFIG_SRC_FILE:
      snprintf(out, outlen, "%s (file %s:%u)", k->name, o->file, o->line);
      return;
    case ORTHOD_CONFIG_SRC_ENV:
      env_name(k, env, sizeof env);
      snprintf(out, outlen, "--%s (environment %s)", k->name, env);
      return;
    case ORTHOD_CONFIG_SRC_FLAG:
      snprintf(out, outlen, "--%s (command line)", k->name);
      return;
    case ORTHOD_CONFIG_SRC_DEFAULT:
      break;
  }
  snprintf(out, outlen, "--%s (default)", k->name);
}

/* Byte sizes as written in the config: "16M" when exact, else plain bytes. */
static void format_size(uint64_t v, char *out, size_t outlen) {
  static const char suffix[] = "KMGT";
  int unit = -1;
  for (int i = 3; i >= 0; i--) {
    uint64_t m = UINT64_C(1) << (10 * (i + 1));
    if (v != 0 && v % m == 0) {
      unit = i;
      break;
    }
  }
  if (unit < 0)
    snprintf(out, outlen, "%" PRIu64, v);
  else
    snprintf(out, outlen, "%" PRIu64 "%c", v >> (10 * (unit + 1)), suffix[unit]);
}

/* The value of k in c, written as a value is written. */
static void format_value(const orthod_server_config_t *c, const config_key_t *k, char *out,
                         size_t outlen) {
  const void *p = field_cptr(c, k);
  switch (k->type) {
    case K_BOOL: snprintf(out, outlen, "%s", *(const bool *)p ? "true" : "false"); return;
    case K_U32: snprintf(out, outlen, "%" PRIu32, *(const uint32_t *)p); return;
    case K_INT: snprintf(out, outlen, "%d", *(const int *)p); return;
    case K_U64: snprintf(out, outlen, "%" PRIu64, *(const uint64_t *)p); return;
    case K_SIZE: format_size(*(const uint64_t *)p, out, outlen); return;
    case K_ENUM: {
      int v = *(const int *)p;
      size_t n = 0;
      while (k->names[n] != NULL) n++;
      snprintf(out, outlen, "%s", v >= 0 && (size_t)v < n ? k->names[v] : "?");
      return;
    }
    case K_CHOICE:
    case K_PATH:
    case K_LISTEN: snprintf(out, outlen, "%s", (const char *)p); return;
  }
}

/* A number in range notation: sizes as "64K", others decimal. */
static void format_bound(const config_key_t *k, uint64_t v, char *out, size_t outlen) {
  if (k->type == K_SIZE)
    format_size(v, out, outlen);
  else
    snprintf(out, outlen, "%" PRIu64, v);
}

/* Levenshtein distance, capped: enough to suggest "--chunk-bytes" for "--chunk-byte". */
static size_t edit_distance(const char *a, size_t la, const char *b) {
  size_t lb = strlen(b);
  if (la > 64 || lb > 64) return SIZE_MAX;
  size_t row[65];
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

static const char *suggest(const char *name, size_t len) {
  const char *best = NULL;
  size_t best_d = 3; /* suggest only within two edits */
  for (size_t i = 0; i < N_KEYS; i++) {
    size_t d = edit_distance(name, len, keys[i].name);
    if (d < best_d) {
      best_d = d;
      best = keys[i].name;
    }
  }
  return best;
}

/* ---- parsing one value ---------------------------------------------------------------------- */

/* Decimal digits only (no sign, no spaces). 0 ok, 1 not a number, 2 too large for 64 bits.
 * *end points after the digits. */
static int parse_digits(const char *s, uint64_t *out, const char **end) {
  uint64_t v = 0;
  const char *p = s;
  if (!isdigit((unsigned char)*p)) return 1;
  for (; isdigit((unsigned char)*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) return 2;
    v = v * 10 + d;
  }
  *out = v;
  *end = p;
  return 0;
}

static bool parse_bool(const char *s, bool *out) {
  static const char *const yes[] = {"true", "yes", "on", "1"};
  static const char *const no[] = {"false", "no", "off", "0"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) return (*out = true), true;
    if (strcasecmp(s, no[i]) == 0) return (*out = false), true;
  }
  return false;
}

/* Split a listen address into host and port. Returns NULL, or the reason it is not one. */
const char *orthod_listen_split(const char *s, char *host, size_t hostlen, unsigned *port,
                                char *why, size_t whylen) {
  const char *colon;
  size_t hlen;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL) return snprintf(why, whylen, "'%s' lacks the closing ']'", s), why;
    colon = close + 1;
    if (*colon != ':') return snprintf(why, whylen, "'%s' is not [IPV6]:PORT", s), why;
    hlen = (size_t)(close - s - 1);
    if (hlen >= hostlen) return snprintf(why, whylen, "'%s': the host is too long", s), why;
    memcpy(host, s + 1, hlen);
    host[hlen] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, host, &a6) != 1)
      return snprintf(why, whylen, "'%s' is not an IPv6 address", host), why;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL) return snprintf(why, whylen, "'%s' is not HOST:PORT", s), why;
    if (strchr(s, ':') != colon)
      return snprintf(why, whylen, "'%s': IPv6 addresses need brackets, as in [::1]:50051", s),
             why;
    hlen = (size_t)(colon - s);
    if (hlen == 0)
      return snprintf(why, whylen, "'%s' has no host (0.0.0.0:PORT means every interface)", s),
             why;
    if (hlen >= hostlen) return snprintf(why, whylen, "'%s': the host is too long", s), why;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    for (const char *p = host; *p != '\0'; p++)
      if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_')
        return snprintf(why, whylen, "'%s' is not a host name or IPv4 address", host), why;
  }
  uint64_t v;
  const char *end;
  if (parse_digits(colon + 1, &v, &end) != 0 || *end != '\0' || v > 65535)
    return snprintf(why, whylen, "port '%s' is not a number in 0..65535", colon + 1), why;
  *port = (unsigned)v;
  return NULL;
}

/* Parse text as k's value into c. Returns NULL, or the reason (written into why). */
static const char *parse_value(orthod_server_config_t *c, const config_key_t *k,
                               const char *text, char *why, size_t whylen) {
  void *p = field_ptr(c, k);
  uint64_t v = 0;
  const char *end = text;
  char lo[32], hi[32];
  switch (k->type) {
    case K_BOOL: {
      bool b;
      if (!parse_bool(text, &b))
        return snprintf(why, whylen, "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)",
                        text),
               why;
      *(bool *)p = b;
      return NULL;
    }
    case K_U32:
    case K_INT:
    case K_U64:
    case K_SIZE: {
      bool negative = text[0] == '-' && isdigit((unsigned char)text[1]);
      int rc = parse_digits(negative ? text + 1 : text, &v, &end);
      if (rc == 0 && k->type == K_SIZE) {
        /* K, M, G, T (optionally KiB, MiB...): powers of 1024. */
        static const char units[] = "KMGT";
        const char *u = *end != '\0' ? strchr(units, toupper((unsigned char)*end)) : NULL;
        if (u != NULL) {
          unsigned shift = 10u * (unsigned)(u - units + 1);
          end++;
          if (strcasecmp(end, "iB") == 0) end += 2;
          if (*end == '\0' && v > (UINT64_MAX >> shift))
            return snprintf(why, whylen, "'%s' overflows 64 bits", text), why;
          v <<= shift;
        }
      }
      if (rc == 1 || (rc == 0 && *end != '\0'))
        return snprintf(why, whylen,
                        k->type == K_SIZE ? "'%s' is not a size (bytes, or with a K, M, G or T "
                                            "suffix)"
                                          : "'%s' is not a number",
                        text),
               why;
      if (rc == 2) return snprintf(why, whylen, "'%s' overflows 64 bits", text), why;
      format_bound(k, k->min, lo, sizeof lo);
      format_bound(k, k->max, hi, sizeof hi);
      if (negative) return snprintf(why, whylen, "%s is below the minimum %s", text, lo), why;
      if (v < k->min || v > k->max) {
        /* Show the bytes behind a suffix: "3G (3221225472) is above the maximum 2G". */
        char shown[96];
        bool suffixed = k->type == K_SIZE && !isdigit((unsigned char)text[strlen(text) - 1]);
        if (suffixed)
          snprintf(shown, sizeof shown, "%s (%" PRIu64 ")", text, v);
        else
          snprintf(shown, sizeof shown, "%s", text);
        if (v < k->min)
          return snprintf(why, whylen, "%s is below the minimum %s", shown, lo), why;
        return snprintf(why, whylen, "%s is above the maximum %s", shown, hi), why;
      }
      if (k->type == K_U32)
        *(uint32_t *)p = (uint32_t)v;
      else if (k->type == K_INT)
        *(int *)p = (int)v;
      else
        *(uint64_t *)p = v;
      return NULL;
    }
    case K_ENUM:
    case K_CHOICE: {
      for (size_t i = 0; k->names[i] != NULL; i++) {
        if (strcasecmp(text, k->names[i]) != 0) continue;
        if (k->type == K_ENUM)
          *(int *)p = (int)i;
        else
          snprintf((char *)p, k->size, "%s", k->names[i]);
        return NULL;
      }
      size_t n = (size_t)snprintf(why, whylen, "'%s' is not one of ", text);
      for (size_t i = 0; k->names[i] != NULL && n < whylen; i++)
        n += (size_t)snprintf(why + n, whylen - n, "%s%s", i ? ", " : "", k->names[i]);
      return why;
    }
    case K_PATH:
    case K_LISTEN: {
      size_t len = strlen(text);
      if (len == 0 && !(k->flags & KF_MAY_BE_EMPTY))
        return snprintf(why, whylen, "the value is empty"), why;
      if (len >= k->size)
        return snprintf(why, whylen, "the value is longer than %zu bytes", k->size - 1), why;
      if (k->type == K_LISTEN && len > 0) {
        char host[256];
        unsigned port;
        if (orthod_listen_split(text, host, sizeof host, &port, why, whylen) != NULL) return why;
      }
      memcpy(p, text, len + 1);
      return NULL;
    }
  }
  return snprintf(why, whylen, "internal: unknown key type"), why;
}

/* Parse and record the source, or fill err with "<name> (<source>): <reason>". */
static int set_value(orthod_server_config_t *c, const config_key_t *k, const char *text,
                     const origin_t *o, char *err, size_t errlen) {
  char why[512], who[ORTHOD_CONFIG_PATH_MAX + 128];
  if (parse_value(c, k, text, why, sizeof why) != NULL) {
    describe_origin(k, o, who, sizeof who);
    set_err(err, errlen, "%s: %s", who, why);
    return -1;
  }
  c->source_[key_index(k)] = (unsigned char)o->src;
  return 0;
}

/* ---- defaults, file, environment, flags ----------------------------------------------------- */

void orthod_server_config_defaults(orthod_server_config_t *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < N_KEYS; i++) {
    char why[256];
    /* The table is constant; a row whose type does not fit its field, or whose default does not
     * parse, is a bug in this file. */
    static const size_t type_size[] = {[K_BOOL] = sizeof(bool),    [K_U32] = sizeof(uint32_t),
                                       [K_INT] = sizeof(int),      [K_U64] = sizeof(uint64_t),
                                       [K_SIZE] = sizeof(uint64_t), [K_ENUM] = sizeof(int)};
    const config_key_t *k = &keys[i];
    bool is_string = k->type == K_CHOICE || k->type == K_PATH || k->type == K_LISTEN;
    if (is_string ? k->size < 2 : k->size != type_size[k->type]) {
      fprintf(stderr, "%s:%d: key %s: field size %zu does not fit its type\n", __FILE__, __LINE__,
              k->name, k->size);
      abort();
    }
    if (parse_value(c, &keys[i], keys[i].def, why, sizeof why) != NULL) {
      fprintf(stderr, "%s:%d: default of %s: %s\n", __FILE__, __LINE__, keys[i].name, why);
      abort();
    }
    c->source_[i] = ORTHOD_CONFIG_SRC_DEFAULT;
  }
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
  return s;
}

/* One `key = value` line (already known not to be blank or a comment). */
static int file_line(orthod_server_config_t *c, char *line, const origin_t *o,
                     unsigned seen[N_KEYS], char *err, size_t errlen) {
  char *eq = strchr(line, '=');
  if (eq == NULL) {
    set_err(err, errlen, "%s:%u: expected 'key = value', got '%s'", o->file, o->line, line);
    return -1;
  }
  *eq = '\0';
  char *name = trim(line);
  for (char *p = name; *p != '\0'; p++)
    if (*p == '_') *p = '-'; /* max_message_bytes reads as max-message-bytes */
  const config_key_t *k = find_key(name, strlen(name));
  if (k == NULL) {
    const char *hint = suggest(name, strlen(name));
    if (hint != NULL)
      set_err(err, errlen, "%s:%u: unknown key '%s' (did you mean %s?)", o->file, o->line, name,
              hint);
    else
      set_err(err, errlen, "%s:%u: unknown key '%s'", o->file, o->line, name);
    return -1;
  }
  if (k->flags & KF_NOT_IN_FILE) {
    set_err(err, errlen, "%s:%u: %s cannot be set in a config file", o->file, o->line, k->name);
    return -1;
  }
  if (seen[key_index(k)] != 0) {
    set_err(err, errlen, "%s:%u: %s is already set on line %u", o->file, o->line, k->name,
            seen[key_index(k)]);
    return -1;
  }
  seen[key_index(k)] = o->line;

  /* The value: quoted ("..." or '...', no escapes) or bare; then optionally a comment. In a bare
   * value only a '#' after whitespace starts a comment, so "a#b" stays whole. */
  char *v = eq + 1;
  while (isspace((unsigned char)*v)) v++;
  if (*v == '"' || *v == '\'') {
    char *close = strchr(v + 1, *v);
    if (close == NULL) {
      set_err(err, errlen, "%s:%u: %s: missing closing %c", o->file, o->line, k->name, *v);
      return -1;
    }
    *close = '\0';
    char *rest = close + 1;
    while (isspace((unsigned char)*rest)) rest++;
    if (*rest != '\0' && *rest != '#') {
      set_err(err, errlen, "%s:%u: %s: unexpected '%s' after the quoted value", o->file, o->line,
              k->name, rest);
      return -1;
    }
    v++;
  } else {
    for (char *p = v; *p != '\0'; p++) {
      if (*p == '#' && p > v && isspace((unsigned char)p[-1])) {
        *p = '\0';
        break;
      }
    }
    v = trim(v);
  }
  return set_value(c, k, v, o, err, errlen);
}

static int load_file(orthod_server_config_t *c, const char *path, const origin_t *path_origin,
                     char *err, size_t errlen) {
  char who[ORTHOD_CONFIG_PATH_MAX + 128];
  describe_origin(find_key("config", 6), path_origin, who, sizeof who);
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    set_err(err, errlen, "%s: cannot open '%s': %s", who, path, strerror(errno));
    return -1;
  }
  unsigned seen[N_KEYS] = {0};
  origin_t o = {ORTHOD_CONFIG_SRC_FILE, path, 0};
  char *line = NULL;
  size_t cap = 0;
  int rc = 0;
  errno = 0;
  while (getline(&line, &cap, f) != -1) {
    o.line++;
    char *s = trim(line);
    if (*s == '\0' || *s == '#') continue;
    if (file_line(c, s, &o, seen, err, errlen) != 0) {
      rc = -1;
      break;
    }
  }
  if (rc == 0 && ferror(f)) {
    set_err(err, errlen, "%s: cannot read '%s': %s", who, path, strerror(errno));
    rc = -1;
  }
  free(line);
  fclose(f);
  return rc;
}

static const char *env_lookup(char **envp, const char *name) {
  if (envp == NULL) return NULL;
  size_t n = strlen(name);
  for (char **e = envp; *e != NULL; e++)
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
  return NULL;
}

typedef enum { ACT_NONE, ACT_HELP, ACT_VERSION } flag_action_t;

/* Walk the flags. With c NULL only the syntax is checked, and --help/--version and --config are
 * found (so the file can be read before the flags are applied over it); with c set, the values
 * are applied in order (the last of a repeated flag wins). */
static int scan_flags(int argc, char **argv, orthod_server_config_t *c, flag_action_t *action,
                      const char **config_path, char *err, size_t errlen) {
  static const origin_t flag_origin = {ORTHOD_CONFIG_SRC_FLAG, NULL, 0};
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      *action = ACT_HELP;
      return 0;
    }
    if (strcmp(arg, "--version") == 0) {
      *action = ACT_VERSION;
      return 0;
    }
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      set_err(err, errlen, "unexpected argument '%s'; see --help", arg);
      return -1;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    const config_key_t *k = find_key(name, len);
    const char *value = NULL;
    if (k == NULL && len > 3 && strncmp(name, "no-", 3) == 0) {
      k = find_key(name + 3, len - 3);
      if (k != NULL && k->type != K_BOOL) {
        set_err(err, errlen, "--%.*s: --%s is not a boolean option; see --help", (int)len, name,
                k->name);
        return -1;
      }
      if (k != NULL && eq != NULL) {
        set_err(err, errlen, "--%.*s takes no value", (int)len, name);
        return -1;
      }
      if (k != NULL) value = "false";
    }
    if (k == NULL) {
      const char *hint = suggest(name, len);
      if (hint != NULL)
        set_err(err, errlen, "unknown option --%.*s (did you mean --%s?); see --help", (int)len,
                name, hint);
      else
        set_err(err, errlen, "unknown option --%.*s; see --help", (int)len, name);
      return -1;
    }
    if (value == NULL) {
      if (eq != NULL) {
        value = eq + 1;
      } else if (k->type == K_BOOL) {
        value = "true";
      } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
        value = argv[++i];
      } else {
        set_err(err, errlen, "--%s needs a value (%s); see --help", k->name, k->metavar);
        return -1;
      }
    }
    if (c == NULL) {
      if (strcmp(k->name, "config") == 0) *config_path = value;
    } else if (set_value(c, k, value, &flag_origin, err, errlen) != 0) {
      return -1;
    }
  }
  return 0;
}

/* Checks that involve more than one key, after every source has been applied. The key blamed is
 * the one set by the highest-precedence source (the one the operator most likely just changed). */
static int check_combined(const orthod_server_config_t *c, char *err, size_t errlen) {
  const config_key_t *kc = find_key("chunk-bytes", 11), *km = find_key("max-message-bytes", 17);
  if (c->chunk_bytes > c->max_message_bytes - KIB) {
    char who[256], chunk[32], maxm[32], room[32];
    format_size(c->chunk_bytes, chunk, sizeof chunk);
    format_size(c->max_message_bytes, maxm, sizeof maxm);
    format_size(c->max_message_bytes - KIB, room, sizeof room);
    origin_t o = {(orthod_config_source_t)c->source_[key_index(kc)], "", 0};
    origin_t om = {(orthod_config_source_t)c->source_[key_index(km)], "", 0};
    if (om.src > o.src) {
      describe_origin(km, &om, who, sizeof who);
      set_err(err, errlen,
              "%s: %s leaves no room for chunk-bytes %s (%s); it must be at least chunk-bytes "
              "+ 1K",
              who, maxm, chunk, source_names[o.src]);
    } else {
      describe_origin(kc, &o, who, sizeof who);
      set_err(err, errlen,
              "%s: %s is above the maximum %s (max-message-bytes %s, %s, less 1K for framing)",
              who, chunk, room, maxm, source_names[om.src]);
    }
    return -1;
  }
  bool cert = c->tls_cert[0] != '\0', key = c->tls_key[0] != '\0';
  if (cert != key || (c->tls_client_ca[0] != '\0' && !cert)) {
    const config_key_t *kk = find_key(cert ? "tls-cert" : key ? "tls-key" : "tls-client-ca",
                                      cert ? 8 : key ? 7 : 13);
    char who[256];
    origin_t o = {(orthod_config_source_t)c->source_[key_index(kk)], "", 0};
    describe_origin(kk, &o, who, sizeof who);
    set_err(err, errlen, "%s: %s", who,
            cert != key ? "tls-cert and tls-key go together (the certificate chain and its key)"
                        : "tls-client-ca (mutual TLS) needs tls-cert and tls-key");
    return -1;
  }
  if (!c->allow_insecure_remote && !cert && !orthod_listen_is_loopback(c->listen)) {
    char who[256];
    const config_key_t *kl = find_key("listen", 6);
    origin_t o = {(orthod_config_source_t)c->source_[key_index(kl)], "", 0};
    describe_origin(kl, &o, who, sizeof who);
    set_err(err, errlen,
            "%s: %s is not a loopback address; serving beyond loopback without TLS needs "
            "--allow-insecure-remote",
            who, c->listen);
    return -1;
  }
  return 0;
}

orthod_config_result_t orthod_server_config_load(orthod_server_config_t *c, int argc, char **argv,
                                                 char **envp, FILE *out, char *err, size_t errlen) {
  orthod_server_config_defaults(c);
  if (err != NULL && errlen > 0) err[0] = '\0';

  flag_action_t action = ACT_NONE;
  const char *flag_config = NULL;
  if (scan_flags(argc, argv, NULL, &action, &flag_config, err, errlen) != 0)
    return ORTHOD_CONFIG_ERROR;
  if (action == ACT_HELP) {
    orthod_server_config_help(out);
    return ORTHOD_CONFIG_EXIT;
  }
  if (action == ACT_VERSION) {
    fprintf(out, "orthod %s (protocol %d)\n", ORTHOD_VERSION_STRING, ORTHOD_PROTOCOL_VERSION);
    return ORTHOD_CONFIG_EXIT;
  }

  /* The file first: it is the lowest source after the defaults. */
  const config_key_t *kconf = find_key("config", 6);
  origin_t conf_origin = {ORTHOD_CONFIG_SRC_FLAG, NULL, 0};
  const char *path = flag_config;
  if (path == NULL) {
    path = env_lookup(envp, "ORTHOD_CONFIG");
    conf_origin.src = ORTHOD_CONFIG_SRC_ENV;
  }
  if (path != NULL) {
    if (set_value(c, kconf, path, &conf_origin, err, errlen) != 0) return ORTHOD_CONFIG_ERROR;
    if (path[0] != '\0' && load_file(c, path, &conf_origin, err, errlen) != 0)
      return ORTHOD_CONFIG_ERROR;
  }

  /* Environment over the file. Other ORTHOD_* variables are left alone: clients and tests use
   * some of their own. */
  static const origin_t env_origin = {ORTHOD_CONFIG_SRC_ENV, NULL, 0};
  for (size_t i = 0; i < N_KEYS; i++) {
    if (&keys[i] == kconf) continue;
    char name[96];
    env_name(&keys[i], name, sizeof name);
    const char *v = env_lookup(envp, name);
    if (v != NULL && set_value(c, &keys[i], v, &env_origin, err, errlen) != 0)
      return ORTHOD_CONFIG_ERROR;
  }

  /* Flags over everything. */
  if (scan_flags(argc, argv, c, &action, &flag_config, err, errlen) != 0)
    return ORTHOD_CONFIG_ERROR;
  if (check_combined(c, err, errlen) != 0) return ORTHOD_CONFIG_ERROR;
  return ORTHOD_CONFIG_RUN;
}

/* ---- outputs generated from the table ------------------------------------------------------- */

/* Range or allowed values, for --help, the sample file and the docs. */
static void describe_range(const config_key_t *k, char *out, size_t outlen) {
  char lo[32], hi[32];
  switch (k->type) {
    case K_BOOL: snprintf(out, outlen, "true or false"); return;
    case K_ENUM:
    case K_CHOICE: {
      size_t n = (size_t)snprintf(out, outlen, "one of ");
      for (size_t i = 0; k->names[i] != NULL && n < outlen; i++)
        n += (size_t)snprintf(out + n, outlen - n, "%s%s", i ? ", " : "", k->names[i]);
      return;
    }
    case K_PATH: snprintf(out, outlen, "a path"); return;
    case K_LISTEN: snprintf(out, outlen, "host:port, port 0..65535"); return;
    case K_U32:
    case K_INT:
    case K_U64:
    case K_SIZE:
      format_bound(k, k->min, lo, sizeof lo);
      format_bound(k, k->max, hi, sizeof hi);
      if (k->max == UINT64_MAX)
        snprintf(out, outlen, "%s or more", lo);
      else
        snprintf(out, outlen, "%s..%s", lo, hi);
      return;
  }
}

/* Print text wrapped at `width` columns; the cursor is at column `col` (at least the indent's
 * width), continuation lines start with `indent`. */
static void wrap(FILE *out, const char *text, const char *indent, size_t width, size_t col) {
  size_t ind = strlen(indent);
  const char *p = text;
  while (*p != '\0') {
    while (*p == ' ') p++;
    size_t wl = strcspn(p, " ");
    if (wl == 0) break;
    if (col > ind && col + 1 + wl > width) {
      fprintf(out, "\n%s", indent);
      col = ind;
    } else if (col > ind) {
      fputc(' ', out);
      col++;
    }
    fwrite(p, 1, wl, out);
    col += wl;
    p += wl;
  }
  fputc('\n', out);
}

void orthod_server_config_help(FILE *out) {
  orthod_server_config_t d;
  orthod_server_config_defaults(&d);
  fprintf(out,
          "Usage: orthod [--config FILE] [--KEY=VALUE | --KEY VALUE | --BOOL | --no-BOOL]...\n"
          "\n"
          "orthod %s serves the orthod.v1.Optimizer gRPC API (protocol %d) and grpc.health.v1.\n"
          "\n"
          "Every option is also read from the environment as ORTHOD_<KEY> (upper case, '-' as\n"
          "'_') and from the config file as `key = value`. Precedence: flag > environment >\n"
          "config file > default. Sizes take K, M, G or T suffixes (powers of 1024).\n"
          "\n"
          "Options:\n",
          ORTHOD_VERSION_STRING, ORTHOD_PROTOCOL_VERSION);
  for (size_t i = 0; i < N_KEYS; i++) {
    const config_key_t *k = &keys[i];
    char head[128], text[2048 + ORTHOD_CONFIG_PATH_MAX], def[ORTHOD_CONFIG_PATH_MAX], range[128],
        env[96];
    if (k->type == K_BOOL)
      snprintf(head, sizeof head, "  --%s, --no-%s", k->name, k->name);
    else
      snprintf(head, sizeof head, "  --%s %s", k->name, k->metavar);
    format_value(&d, k, def, sizeof def);
    describe_range(k, range, sizeof range);
    env_name(k, env, sizeof env);
    snprintf(text, sizeof text, "%s [default: %s; %s; env %s]", k->help,
             def[0] != '\0' ? def : "none", range, env);
    fputs(head, out);
    size_t col = strlen(head);
    if (col + 2 > 32) {
      fputc('\n', out);
      col = 0;
    }
    for (; col < 32; col++) fputc(' ', out);
    wrap(out, text, "                                ", 100, col);
  }
  fprintf(out, "  -h, --help                    Print this help and exit.\n"
               "  --version                     Print the version and exit.\n");
}

void orthod_server_config_log(const orthod_server_config_t *c) {
  for (size_t i = 0; i < N_KEYS; i++) {
    char v[ORTHOD_CONFIG_PATH_MAX];
    format_value(c, &keys[i], v, sizeof v);
    unsigned src = c->source_[i] < 4 ? c->source_[i] : 0;
    ORTHOD_LOG(ORTHOD_LOG_INFO, "config %s = %s (%s)", keys[i].name, v[0] != '\0' ? v : "none",
               source_names[src]);
  }
}

const char *orthod_server_config_key_name(size_t i) { return i < N_KEYS ? keys[i].name : NULL; }

const char *orthod_server_config_source(const orthod_server_config_t *c, const char *key) {
  const config_key_t *k = key != NULL ? find_key(key, strlen(key)) : NULL;
  if (k == NULL) return NULL;
  unsigned src = c->source_[key_index(k)];
  return src < 4 ? source_names[src] : NULL;
}

void orthod_server_config_write_sample(FILE *out) {
  orthod_server_config_t d;
  orthod_server_config_defaults(&d);
  fprintf(out,
          "# orthod.conf - sample configuration of the orthod daemon, version %s.\n"
          "#\n"
          "# Every key is set below to its built-in default, so this file changes nothing until\n"
          "# you edit it. Use it with `orthod --config /path/orthod.conf` or ORTHOD_CONFIG.\n"
          "# Format: one `key = value` per line; '#' starts a comment (inside a value only after\n"
          "# a space); values may be quoted with \"...\" or '...'; a key may appear once.\n"
          "# Precedence: command-line flags > ORTHOD_<KEY> environment > this file > defaults.\n"
          "# Sizes take K, M, G or T suffixes (powers of 1024): 16M = 16777216 bytes.\n",
          ORTHOD_VERSION_STRING);
  for (size_t i = 0; i < N_KEYS; i++) {
    const config_key_t *k = &keys[i];
    if (k->flags & KF_NOT_IN_FILE) continue;
    char text[2048 + ORTHOD_CONFIG_PATH_MAX], range[128], v[ORTHOD_CONFIG_PATH_MAX], env[96];
    describe_range(k, range, sizeof range);
    env_name(k, env, sizeof env);
    format_value(&d, k, v, sizeof v);
    bool empty = v[0] == '\0';
    snprintf(text, sizeof text, "%s Default %s; allowed: %s. Flag --%s, environment %s.", k->help,
             empty ? "none" : v, range, k->name, env);
    fprintf(out, "\n# ");
    wrap(out, text, "# ", 100, 2);
    /* an empty default is written as a comment: "key =" alone would read as an empty value */
    if (empty) fprintf(out, "# %s = %s\n", k->name, k->metavar);
    else fprintf(out, "%s = %s\n", k->name, v);
  }
}

/* Markdown table cell text: '|' would end the cell. */
static void md_cell(FILE *out, const char *s) {
  for (; *s != '\0'; s++) {
    if (*s == '|') fputc('\\', out);
    fputc(*s, out);
  }
}

void orthod_server_config_write_markdown(FILE *out) {
  orthod_server_config_t d;
  orthod_server_config_defaults(&d);
  fprintf(out, "| key | flag / environment | default | allowed | meaning |\n"
               "|---|---|---|---|---|\n");
  for (size_t i = 0; i < N_KEYS; i++) {
    const config_key_t *k = &keys[i];
    char v[ORTHOD_CONFIG_PATH_MAX], range[128], env[96];
    format_value(&d, k, v, sizeof v);
    describe_range(k, range, sizeof range);
    env_name(k, env, sizeof env);
    fprintf(out, "| `%s` | `--%s`", k->name, k->name);
    if (k->type == K_BOOL) fprintf(out, " / `--no-%s`", k->name);
    fprintf(out, ", `%s` | %s%s%s | ", env, v[0] != '\0' ? "`" : "", v[0] != '\0' ? v : "none",
            v[0] != '\0' ? "`" : "");
    md_cell(out, range);
    fputs(" | ", out);
    md_cell(out, k->help);
    if (k->flags & KF_NOT_IN_FILE) fputs(" Not settable in the file itself.", out);
    fputs(" |\n", out);
  }
}

/* ---- addresses ------------------------------------------------------------------------------ */

bool orthod_listen_is_loopback(const char *listen) {
  if (listen == NULL) return false;
  char host[256];
  const char *start = listen, *stop;
  if (listen[0] == '[') {
    start = listen + 1;
    stop = strchr(start, ']');
    if (stop == NULL) return false;
  } else {
    const char *colon = strrchr(listen, ':');
    /* "host:port", or a bare host; a bare IPv6 address has several colons. */
    stop = colon != NULL && strchr(listen, ':') == colon ? colon : listen + strlen(listen);
  }
  size_t n = (size_t)(stop - start);
  if (n == 0 || n >= sizeof host) return false;
  memcpy(host, start, n);
  host[n] = '\0';
  if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0) return true;
  struct in_addr a4;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  struct in6_addr a6;
  if (inet_pton(AF_INET6, host, &a6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
  return false;
}
