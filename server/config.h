/* server/config.h — the daemon's configuration: one table drives the command-line flags, the
 * ORTHOD_* environment variables, the optional config file and --help.
 *
 * Precedence, lowest to highest: built-in defaults, config file (--config FILE or ORTHOD_CONFIG),
 * environment (ORTHOD_<KEY> with '-' → '_', upper case: ORTHOD_MEMORY_LIMIT), flags (--key=value or
 * --key value; booleans also as --key / --no-key). Every value is validated; the first bad one
 * stops the start with its name, its source and the reason. After all sources: chunk_bytes must
 * be at most max_message_bytes - 1 KiB, and a listen address beyond loopback needs
 * allow_insecure_remote. ORTHOD_* variables that are not keys are ignored. docs/OPERATIONS.md
 * describes every key; deploy/orthod.conf is a sample file. */
#ifndef ORTHOD_SERVER_CONFIG_H
#define ORTHOD_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "orthod/log.h"

#define ORTHOD_PROTOCOL_VERSION 1
#define ORTHOD_VERSION_STRING "0.1.0" /* keep equal to project(VERSION) in CMakeLists.txt */
#define ORTHOD_CONFIG_PATH_MAX 1024
#define ORTHOD_CONFIG_KEYS_MAX 40 /* room for the table's keys (see config.c) */

/* Where a key's value came from, lowest precedence first. */
typedef enum {
  ORTHOD_CONFIG_SRC_DEFAULT = 0,
  ORTHOD_CONFIG_SRC_FILE = 1,
  ORTHOD_CONFIG_SRC_ENV = 2,
  ORTHOD_CONFIG_SRC_FLAG = 3,
} orthod_config_source_t;

typedef enum {
  ORTHOD_NONFINITE_REJECT = 0, /* INVALID_ARGUMENT, nothing applied, step counter unchanged */
  ORTHOD_NONFINITE_SKIP = 1,   /* step skipped: weights unchanged, counter advances (as AMP does) */
} orthod_nonfinite_policy_t;

typedef enum { ORTHOD_LOG_FORMAT_TEXT = 0, ORTHOD_LOG_FORMAT_JSON = 1 } orthod_log_format_t;

typedef struct orthod_server_config {
  /* network */
  char listen[256];              /* --listen host:port, default 127.0.0.1:50051; port 0 = any */
  bool allow_insecure_remote;    /* --allow-insecure-remote: listening beyond loopback without TLS */
  uint64_t max_message_bytes;    /* --max-message-bytes: largest message received, default 16 MiB */
  uint64_t chunk_bytes;          /* --chunk-bytes: data bytes per chunk the daemon sends, 1 MiB */
  uint32_t keepalive_time_ms;    /* --keepalive-time-ms: server pings an idle connection, 60000 */
  uint32_t keepalive_timeout_ms; /* --keepalive-timeout-ms: ping ack wait, 20000 */
  uint32_t keepalive_permit_ms;  /* --keepalive-permit-ms: min interval of client pings, 10000 */
  char tls_cert[ORTHOD_CONFIG_PATH_MAX];      /* --tls-cert: PEM chain, "" = plaintext */
  char tls_key[ORTHOD_CONFIG_PATH_MAX];       /* --tls-key: its PEM key */
  char tls_client_ca[ORTHOD_CONFIG_PATH_MAX]; /* --tls-client-ca: mutual TLS, "" = off */
  char auth_tokens[ORTHOD_CONFIG_PATH_MAX];   /* --auth-tokens: token file, "" = no auth */
  char metrics_listen[256];      /* --metrics-listen host:port of the HTTP metrics endpoint, "" off */
  /* device */
  char backend[16];              /* --backend auto|cpu|cuda, default auto */
  int device;                    /* --device N (CUDA), default 0 */
  int threads;                   /* --threads: CPU backend BLAS threads, 0 = all cores */
  uint64_t memory_limit;         /* --memory-limit: bytes for weights + state, 0 = none;
                                    accepts K/M/G/T suffixes (powers of 1024) */
  /* limits and policies */
  uint64_t max_tensor_elements;  /* --max-tensor-elements, default 1<<31 */
  uint32_t max_params;           /* --max-params, default 100000 */
  orthod_nonfinite_policy_t nonfinite; /* --nonfinite reject|skip, default reject */
  uint32_t sync_timeout_ms;      /* --sync-timeout-ms: wait for missing workers, default 30000 */
  uint32_t drain_timeout_ms;     /* --drain-timeout-ms: shutdown grace for in-flight calls, 3000 */
  /* files and logs */
  char state_dir[ORTHOD_CONFIG_PATH_MAX]; /* --state-dir, default ./orthod-data */
  char config_file[ORTHOD_CONFIG_PATH_MAX]; /* --config / ORTHOD_CONFIG, default none */
  bool restore;                  /* --restore: load the newest checkpoint at start, default true */
  uint32_t checkpoint_interval_s; /* --checkpoint-interval-s: periodic checkpoints, 0 = none */
  uint32_t checkpoint_keep;      /* --checkpoint-keep: newest checkpoints kept, default 3 */
  bool checkpoint_on_shutdown;   /* --checkpoint-on-shutdown: final checkpoint, default true */
  orthod_log_level_t log_level;  /* --log-level error|warn|info|debug, default info */
  orthod_log_format_t log_format; /* --log-format text|json, default text */
  /* bookkeeping: orthod_config_source_t of each key, in table order (for the effective-config
     log); read it through orthod_server_config_source */
  unsigned char source_[ORTHOD_CONFIG_KEYS_MAX];
} orthod_server_config_t;

typedef enum {
  ORTHOD_CONFIG_RUN = 0,   /* loaded: start the daemon */
  ORTHOD_CONFIG_EXIT = 1,  /* --help or --version was printed: exit 0 */
  ORTHOD_CONFIG_ERROR = -1 /* err holds "--memory-limit (environment ORTHOD_MEMORY_LIMIT): ..." */
} orthod_config_result_t;

/* Fill c with the defaults. */
void orthod_server_config_defaults(orthod_server_config_t *c);

/* Defaults, then config file, environment (envp, NULL-terminated; NULL = none), flags.
 * --help / --version print to out. */
orthod_config_result_t orthod_server_config_load(orthod_server_config_t *c, int argc, char **argv,
                                                 char **envp, FILE *out, char *err, size_t errlen);

/* Print the usage text generated from the table. */
void orthod_server_config_help(FILE *out);

/* Log the effective configuration (one line per key, level info) through ORTHOD_LOG. */
void orthod_server_config_log(const orthod_server_config_t *c);

/* Keys of the table in order ("listen", "allow-insecure-remote", ...); NULL past the end. */
const char *orthod_server_config_key_name(size_t i);

/* Where key's current value came from: "default", "file", "env" or "flag"; NULL for an unknown
 * key. */
const char *orthod_server_config_source(const orthod_server_config_t *c, const char *key);

/* The sample config file (deploy/orthod.conf): every key with its help and its default. */
void orthod_server_config_write_sample(FILE *out);

/* The Markdown table of keys for docs/OPERATIONS.md (key, flag, environment, default, range). */
void orthod_server_config_write_markdown(FILE *out);

/* Split a listen address ("HOST:PORT", "[IPV6]:PORT") into host (without brackets) and port.
 * Returns NULL, or the reason it is not one (written into why). */
const char *orthod_listen_split(const char *s, char *host, size_t hostlen, unsigned *port,
                                char *why, size_t whylen);

/* True when the host part of a listen address is loopback (127.0.0.0/8, ::1, localhost). */
bool orthod_listen_is_loopback(const char *listen);

/* Install the daemon's log sink on core's log (stderr, text or JSON lines with time and level). */
void orthod_server_log_install(orthod_log_level_t level, orthod_log_format_t format);

#endif
