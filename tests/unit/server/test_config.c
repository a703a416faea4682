/* test_config.c — the daemon's configuration (server/config.c) and log sink (server/logsink.c):
 * precedence of the sources, every kind of value and error message, the config-file format, the
 * generated help/sample/docs, loopback detection, and log lines from several threads.
 * `server_test_config --print-sample` / `--print-markdown` regenerate deploy/orthod.conf and the
 * key table of docs/OPERATIONS.md. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <unistd.h>

#include "config.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------------------- */

#define MAX_ARGS 32
static char err[2048];

/* Load with argv = {"orthod", args...} and envp = env (both NULL-terminated; env NULL = none). */
static orthod_config_result_t load_with(orthod_server_config_t *c, const char *const *args,
                                        const char *const *env, FILE *out) {
  char *argv[MAX_ARGS + 2];
  char *envp[MAX_ARGS + 1];
  int argc = 0;
  argv[argc++] = (char *)"orthod";
  for (size_t i = 0; args != NULL && args[i] != NULL; i++) argv[argc++] = (char *)args[i];
  argv[argc] = NULL;
  size_t ne = 0;
  for (; env != NULL && env[ne] != NULL; ne++) envp[ne] = (char *)env[ne];
  envp[ne] = NULL;
  return orthod_server_config_load(c, argc, argv, env != NULL ? envp : NULL,
                                   out != NULL ? out : stdout, err, sizeof err);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NOARGS ((const char *const *)NULL)

static bool str_eq(const char *label, const char *got, const char *want) {
  if (got != NULL && want != NULL && strcmp(got, want) == 0) return true;
  fprintf(stderr, "\n  %s: got \"%s\", expected \"%s\"\n", label, got ? got : "(null)",
          want ? want : "(null)");
  return false;
}
static bool contains(const char *label, const char *hay, const char *needle) {
  if (hay != NULL && strstr(hay, needle) != NULL) return true;
  fprintf(stderr, "\n  %s: \"%s\" lacks \"%s\"\n", label, hay ? hay : "(null)", needle);
  return false;
}
#define CHECK_STR(got, want) CU_ASSERT_TRUE(str_eq(#got, (got), (want)))
#define CHECK_HAS(hay, needle) CU_ASSERT_TRUE(contains(#hay, (hay), (needle)))
#define CHECK_U(got, want)                                                                  \
  do {                                                                                      \
    unsigned long long g_ = (unsigned long long)(got), w_ = (unsigned long long)(want);     \
    if (g_ != w_) fprintf(stderr, "\n  %s:%d: %s = %llu, expected %llu\n", __FILE__, __LINE__, \
                          #got, g_, w_);                                                    \
    CU_ASSERT_EQUAL(g_, w_);                                                                \
  } while (0)

/* Expect a load error whose message equals (exact) or contains the text. */
#define EXPECT_ERROR(args, env, text)                                 \
  do {                                                                \
    orthod_server_config_t c_;                                        \
    CU_ASSERT_EQUAL(load_with(&c_, (args), (env), NULL), ORTHOD_CONFIG_ERROR); \
    CHECK_HAS(err, (text));                                           \
  } while (0)
#define EXPECT_ERROR_EXACT(args, env, text)                           \
  do {                                                                \
    orthod_server_config_t c_;                                        \
    CU_ASSERT_EQUAL(load_with(&c_, (args), (env), NULL), ORTHOD_CONFIG_ERROR); \
    CHECK_STR(err, (text));                                           \
  } while (0)
#define EXPECT_RUN(c, args, env)                                                         \
  do {                                                                                   \
    orthod_config_result_t r_ = load_with((c), (args), (env), NULL);                     \
    if (r_ != ORTHOD_CONFIG_RUN)                                                         \
      fprintf(stderr, "\n  %s:%d: error: %s\n", __FILE__, __LINE__, err);                 \
    CU_ASSERT_EQUAL(r_, ORTHOD_CONFIG_RUN);                                              \
  } while (0)

/* Temporary files, removed at exit. */
static char tmp_paths[32][64];
static int n_tmp;
static const char *write_tmp(const char *content) {
  CU_ASSERT_FATAL(n_tmp < 32);
  char *path = tmp_paths[n_tmp++];
  snprintf(path, 64, "/tmp/orthod-test-config-XXXXXX");
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  size_t len = strlen(content);
  CU_ASSERT_FATAL(write(fd, content, len) == (ssize_t)len);
  close(fd);
  return path;
}
static void remove_tmp(void) {
  for (int i = 0; i < n_tmp; i++) unlink(tmp_paths[i]);
}

/* Read a whole file (malloc'd, NUL-terminated) or NULL. */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  size_t r;
  while (buf != NULL && (r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
    n += r;
    if (cap - n - 1 == 0) {
      char *nb = realloc(buf, cap *= 2);
      if (nb == NULL) free(buf);
      buf = nb;
    }
  }
  fclose(f);
  if (buf != NULL) buf[n] = '\0';
  return buf;
}

/* Capture what a function prints to a FILE. */
typedef void (*printer_fn)(FILE *out);
static char *capture(printer_fn fn) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  CU_ASSERT_FATAL(f != NULL);
  fn(f);
  fclose(f);
  return buf;
}

/* The source tree, from this file's path (CMake compiles sources by absolute path). */
static bool source_path(const char *rel, char *out, size_t outlen) {
  const char *me = __FILE__;
  const char *tail = strstr(me, "tests/unit/server/test_config.c");
  if (me[0] != '/' || tail == NULL) return false;
  snprintf(out, outlen, "%.*s%s", (int)(tail - me), me, rel);
  return true;
}

/* ---- defaults, version, help ---------------------------------------------------------------- */

static void test_defaults(void) {
  orthod_server_config_t c;
  EXPECT_RUN(&c, NOARGS, NULL);
  CHECK_STR(c.listen, "127.0.0.1:50051");
  CU_ASSERT_FALSE(c.allow_insecure_remote);
  CHECK_U(c.max_message_bytes, 16u << 20);
  CHECK_U(c.chunk_bytes, 1u << 20);
  CHECK_U(c.keepalive_time_ms, 60000);
  CHECK_U(c.keepalive_timeout_ms, 20000);
  CHECK_U(c.keepalive_permit_ms, 10000);
  CHECK_STR(c.backend, "auto");
  CHECK_U(c.device, 0);
  CHECK_U(c.threads, 0);
  CHECK_U(c.memory_limit, 0);
  CHECK_U(c.max_tensor_elements, 1ull << 31);
  CHECK_U(c.max_params, 100000);
  CHECK_U(c.nonfinite, ORTHOD_NONFINITE_REJECT);
  CHECK_U(c.sync_timeout_ms, 30000);
  CHECK_U(c.drain_timeout_ms, 3000);
  CHECK_STR(c.state_dir, "./orthod-data");
  CHECK_STR(c.config_file, "");
  CHECK_STR(c.metrics_listen, "");
  CHECK_U(c.restore, true);
  CHECK_U(c.checkpoint_interval_s, 300);
  CHECK_U(c.checkpoint_keep, 3);
  CHECK_U(c.checkpoint_on_shutdown, true);
  CHECK_U(c.log_level, ORTHOD_LOG_INFO);
  CHECK_U(c.log_format, ORTHOD_LOG_FORMAT_TEXT);
  size_t n = 0;
  for (; orthod_server_config_key_name(n) != NULL; n++)
    CHECK_STR(orthod_server_config_source(&c, orthod_server_config_key_name(n)), "default");
  CHECK_U(n, 29);
  CU_ASSERT_PTR_NULL(orthod_server_config_source(&c, "no-such-key"));
  CU_ASSERT_PTR_NULL(orthod_server_config_source(&c, NULL));

  /* orthod_server_config_defaults alone gives the same. */
  orthod_server_config_t d;
  orthod_server_config_defaults(&d);
  CU_ASSERT_EQUAL(memcmp(&c, &d, sizeof c), 0);
}

static void test_version(void) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  orthod_server_config_t c;
  CU_ASSERT_EQUAL(load_with(&c, ARGS("--threads=2", "--version"), NULL, f), ORTHOD_CONFIG_EXIT);
  fclose(f);
  CHECK_STR(buf, "orthod 0.1.0 (protocol 1)\n");
  free(buf);
}

static void test_help(void) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  orthod_server_config_t c;
  CU_ASSERT_EQUAL(load_with(&c, ARGS("--help"), NULL, f), ORTHOD_CONFIG_EXIT);
  fclose(f);
  CHECK_HAS(buf, "Usage: orthod");
  for (size_t i = 0; orthod_server_config_key_name(i) != NULL; i++) {
    const char *k = orthod_server_config_key_name(i);
    char flag[96], env[96];
    snprintf(flag, sizeof flag, "--%s", k);
    size_t n = (size_t)snprintf(env, sizeof env, "ORTHOD_");
    for (const char *p = k; *p; p++) env[n++] = *p == '-' ? '_' : (char)(*p - 'a' + 'A');
    env[n] = '\0';
    CHECK_HAS(buf, flag);
    CHECK_HAS(buf, env);
  }
  CHECK_HAS(buf, "--no-allow-insecure-remote");
  CHECK_HAS(buf, "[default: 16M;");
  CHECK_HAS(buf, "64K..2G;");
  CHECK_HAS(buf, "--version");
  /* Lines stay within 100 columns. */
  for (char *line = buf; *line != '\0';) {
    size_t l = strcspn(line, "\n");
    if (l > 100) fprintf(stderr, "\n  help line too long: %.*s\n", (int)l, line);
    CU_ASSERT(l <= 100);
    line += l + (line[l] == '\n');
  }
  free(buf);

  /* -h too, and the same text as orthod_server_config_help. */
  buf = NULL;
  f = open_memstream(&buf, &len);
  CU_ASSERT_EQUAL(load_with(&c, ARGS("-h"), NULL, f), ORTHOD_CONFIG_EXIT);
  fclose(f);
  char *direct = capture(orthod_server_config_help);
  CHECK_STR(buf, direct);
  free(direct);
  free(buf);

  /* An unknown option before --help is still an error (flags are read in order). */
  EXPECT_ERROR(ARGS("--bogus", "--help"), NULL, "unknown option --bogus");
}

/* ---- sources and precedence ----------------------------------------------------------------- */

static void test_precedence(void) {
  const char *file = write_tmp("listen = 127.0.0.1:7000\n"
                               "max-params = 11\n"
                               "threads = 3\n"
                               "sync-timeout-ms = 100\n");
  char conf[128];
  snprintf(conf, sizeof conf, "ORTHOD_CONFIG=%s", file);
  orthod_server_config_t c;
  EXPECT_RUN(&c, ARGS("--threads", "5"),
             ARGS(conf, "ORTHOD_MAX_PARAMS=22", "ORTHOD_THREADS=4", "PATH=/bin"));
  CHECK_STR(c.listen, "127.0.0.1:7000");
  CHECK_U(c.max_params, 22);
  CHECK_U(c.threads, 5);
  CHECK_U(c.sync_timeout_ms, 100);
  CHECK_STR(c.config_file, file);
  CHECK_STR(orthod_server_config_source(&c, "listen"), "file");
  CHECK_STR(orthod_server_config_source(&c, "sync-timeout-ms"), "file");
  CHECK_STR(orthod_server_config_source(&c, "max-params"), "env");
  CHECK_STR(orthod_server_config_source(&c, "threads"), "flag");
  CHECK_STR(orthod_server_config_source(&c, "config"), "env");
  CHECK_STR(orthod_server_config_source(&c, "backend"), "default");

  /* --config beats ORTHOD_CONFIG; the environment's file is not read at all. */
  const char *other = write_tmp("max-params = 33\n");
  EXPECT_RUN(&c, ARGS("--config", other), ARGS(conf));
  CHECK_U(c.max_params, 33);
  CHECK_U(c.threads, 0);
  CHECK_STR(c.config_file, other);
  CHECK_STR(orthod_server_config_source(&c, "config"), "flag");

  /* An empty ORTHOD_CONFIG means no file; unrelated ORTHOD_* variables are ignored. */
  EXPECT_RUN(&c, NOARGS, ARGS("ORTHOD_CONFIG=", "ORTHOD_TEST_BACKEND=cpu", "ORTHOD_ADDRESS=x"));
  CHECK_U(c.max_params, 100000);
}

static void test_flag_forms(void) {
  orthod_server_config_t c;
  EXPECT_RUN(&c, ARGS("--listen=[::1]:0", "--backend", "cpu", "--allow-insecure-remote",
                      "--max-params=7", "--max-params", "8", "--log-level=DEBUG",
                      "--log-format", "json", "--nonfinite=skip"),
             NULL);
  CHECK_STR(c.listen, "[::1]:0");
  CHECK_STR(c.backend, "cpu");
  CU_ASSERT_TRUE(c.allow_insecure_remote);
  CHECK_U(c.max_params, 8); /* the last one wins */
  CHECK_U(c.log_level, ORTHOD_LOG_DEBUG);
  CHECK_U(c.log_format, ORTHOD_LOG_FORMAT_JSON);
  CHECK_U(c.nonfinite, ORTHOD_NONFINITE_SKIP);

  EXPECT_RUN(&c, ARGS("--allow-insecure-remote", "--no-allow-insecure-remote"), NULL);
  CU_ASSERT_FALSE(c.allow_insecure_remote);
  CHECK_STR(orthod_server_config_source(&c, "allow-insecure-remote"), "flag");
  static const char *const yes[] = {"true", "YES", "on", "1"};
  static const char *const no[] = {"false", "no", "Off", "0"};
  for (size_t i = 0; i < 4; i++) {
    char a[64];
    snprintf(a, sizeof a, "--allow-insecure-remote=%s", yes[i]);
    EXPECT_RUN(&c, ARGS(a), NULL);
    CU_ASSERT_TRUE(c.allow_insecure_remote);
    snprintf(a, sizeof a, "ORTHOD_ALLOW_INSECURE_REMOTE=%s", no[i]);
    EXPECT_RUN(&c, ARGS("--listen=127.0.0.2:1"), ARGS(a));
    CU_ASSERT_FALSE(c.allow_insecure_remote);
  }
  /* A bool flag does not take the next argument as its value. */
  EXPECT_ERROR_EXACT(ARGS("--allow-insecure-remote", "false"), NULL,
                     "unexpected argument 'false'; see --help");
}

static void test_flag_errors(void) {
  EXPECT_ERROR_EXACT(ARGS("--chunk-byte=5"), NULL,
                     "unknown option --chunk-byte (did you mean --chunk-bytes?); see --help");
  EXPECT_ERROR_EXACT(ARGS("--frobnicate"), NULL, "unknown option --frobnicate; see --help");
  EXPECT_ERROR_EXACT(ARGS("serve"), NULL, "unexpected argument 'serve'; see --help");
  EXPECT_ERROR_EXACT(ARGS("-v"), NULL, "unexpected argument '-v'; see --help");
  EXPECT_ERROR_EXACT(ARGS("--"), NULL, "unexpected argument '--'; see --help");
  EXPECT_ERROR_EXACT(ARGS("--listen"), NULL, "--listen needs a value (HOST:PORT); see --help");
  EXPECT_ERROR_EXACT(ARGS("--listen", "--backend", "cpu"), NULL,
                     "--listen needs a value (HOST:PORT); see --help");
  EXPECT_ERROR_EXACT(ARGS("--no-listen"), NULL,
                     "--no-listen: --listen is not a boolean option; see --help");
  EXPECT_ERROR_EXACT(ARGS("--no-allow-insecure-remote=1"), NULL,
                     "--no-allow-insecure-remote takes no value");
  EXPECT_ERROR_EXACT(ARGS("--no-such"), NULL, "unknown option --no-such; see --help");
  EXPECT_ERROR_EXACT(ARGS("--allow-insecure-remote=maybe"), NULL,
                     "--allow-insecure-remote (command line): 'maybe' is not a boolean "
                     "(true/false, yes/no, on/off, 1/0)");
}

/* ---- values --------------------------------------------------------------------------------- */

static void test_sizes(void) {
  static const struct {
    const char *text;
    uint64_t want;
  } ok[] = {
      {"0", 0},
      {"1000", 1000},
      {"1K", 1024},
      {"1k", 1024},
      {"2KiB", 2048},
      {"3M", 3ull << 20},
      {"5mib", 5ull << 20},
      {"2G", 2ull << 30},
      {"7T", 7ull << 40},
      {"16777215T", 16777215ull << 40},
      {"18446744073709551615", UINT64_MAX},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    orthod_server_config_t c;
    char a[64];
    snprintf(a, sizeof a, "--memory-limit=%s", ok[i].text);
    EXPECT_RUN(&c, ARGS(a), NULL);
    if (c.memory_limit != ok[i].want) fprintf(stderr, "\n  %s\n", a);
    CHECK_U(c.memory_limit, ok[i].want);
  }
  EXPECT_ERROR_EXACT(ARGS("--memory-limit=16777216T"), NULL,
                     "--memory-limit (command line): '16777216T' overflows 64 bits");
  EXPECT_ERROR_EXACT(ARGS("--memory-limit=18446744073709551616"), NULL,
                     "--memory-limit (command line): '18446744073709551616' overflows 64 bits");
  static const char *const bad[] = {"12x", "", "1.5G", "1KB", "K", "1 K", "+1", "1P", "0x10"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char a[64], want[256];
    snprintf(a, sizeof a, "ORTHOD_CHUNK_BYTES=%s", bad[i]);
    snprintf(want, sizeof want,
             "--chunk-bytes (environment ORTHOD_CHUNK_BYTES): '%s' is not a size (bytes, or "
             "with a K, M, G or T suffix)",
             bad[i]);
    EXPECT_ERROR_EXACT(NOARGS, ARGS(a), want);
  }
  /* A size used with its suffix shows the bytes behind it. */
  EXPECT_ERROR_EXACT(ARGS("--max-message-bytes=3G"), NULL,
                     "--max-message-bytes (command line): 3G (3221225472) is above the maximum "
                     "2G");
  EXPECT_ERROR_EXACT(ARGS("--chunk-bytes=1023"), NULL,
                     "--chunk-bytes (command line): 1023 is below the minimum 1K");
}

static void test_numbers_and_ranges(void) {
  orthod_server_config_t c;
  EXPECT_RUN(&c, ARGS("--threads=1024", "--device=3", "--drain-timeout-ms=0",
                      "--sync-timeout-ms=86400000", "--keepalive-time-ms=1000",
                      "--max-tensor-elements=1099511627776", "--max-params=1"),
             NULL);
  CHECK_U(c.threads, 1024);
  CHECK_U(c.device, 3);
  CHECK_U(c.drain_timeout_ms, 0);
  CHECK_U(c.sync_timeout_ms, 86400000);
  CHECK_U(c.keepalive_time_ms, 1000);
  CHECK_U(c.max_tensor_elements, 1ull << 40);
  CHECK_U(c.max_params, 1);

  EXPECT_ERROR_EXACT(ARGS("--threads=1025"), NULL,
                     "--threads (command line): 1025 is above the maximum 1024");
  EXPECT_ERROR_EXACT(ARGS("--threads=-1"), NULL,
                     "--threads (command line): -1 is below the minimum 0");
  EXPECT_ERROR_EXACT(ARGS("--threads=two"), NULL,
                     "--threads (command line): 'two' is not a number");
  EXPECT_ERROR_EXACT(ARGS("--threads=2K"), NULL,
                     "--threads (command line): '2K' is not a number");
  EXPECT_ERROR_EXACT(ARGS("--sync-timeout-ms=0"), NULL,
                     "--sync-timeout-ms (command line): 0 is below the minimum 1");
  EXPECT_ERROR_EXACT(ARGS("--drain-timeout-ms=60001"), NULL,
                     "--drain-timeout-ms (command line): 60001 is above the maximum 60000");
  EXPECT_ERROR_EXACT(ARGS("--keepalive-permit-ms=999"), NULL,
                     "--keepalive-permit-ms (command line): 999 is below the minimum 1000");
  EXPECT_ERROR_EXACT(NOARGS, ARGS("ORTHOD_KEEPALIVE_TIMEOUT_MS=4294967296"),
                     "--keepalive-timeout-ms (environment ORTHOD_KEEPALIVE_TIMEOUT_MS): "
                     "4294967296 is above the maximum 86400000");
  EXPECT_ERROR_EXACT(ARGS("--max-params=0"), NULL,
                     "--max-params (command line): 0 is below the minimum 1");
  EXPECT_ERROR_EXACT(ARGS("--max-tensor-elements=99999999999999999999"), NULL,
                     "--max-tensor-elements (command line): '99999999999999999999' overflows 64 "
                     "bits");
  EXPECT_ERROR_EXACT(ARGS("--device=256"), NULL,
                     "--device (command line): 256 is above the maximum 255");
}

static void test_enums_and_paths(void) {
  EXPECT_ERROR_EXACT(ARGS("--backend=gpu"), NULL,
                     "--backend (command line): 'gpu' is not one of auto, cpu, cuda");
  EXPECT_ERROR_EXACT(ARGS("--nonfinite=ignore"), NULL,
                     "--nonfinite (command line): 'ignore' is not one of reject, skip");
  EXPECT_ERROR_EXACT(NOARGS, ARGS("ORTHOD_LOG_LEVEL=trace"),
                     "--log-level (environment ORTHOD_LOG_LEVEL): 'trace' is not one of error, "
                     "warn, info, debug");
  EXPECT_ERROR_EXACT(ARGS("--log-format=xml"), NULL,
                     "--log-format (command line): 'xml' is not one of text, json");
  orthod_server_config_t c;
  EXPECT_RUN(&c, ARGS("--backend=CUDA", "--log-level=warn", "--state-dir", "/var/lib/orthod"),
             NULL);
  CHECK_STR(c.backend, "cuda"); /* stored as the canonical name */
  CHECK_U(c.log_level, ORTHOD_LOG_WARN);
  CHECK_STR(c.state_dir, "/var/lib/orthod");
  EXPECT_ERROR_EXACT(ARGS("--state-dir="), NULL, "--state-dir (command line): the value is empty");
  char longpath[1100];
  memset(longpath, 'a', sizeof longpath);
  memcpy(longpath, "--state-dir=", 12);
  longpath[sizeof longpath - 1] = '\0';
  EXPECT_ERROR_EXACT(ARGS(longpath), NULL,
                     "--state-dir (command line): the value is longer than 1023 bytes");
}

static void test_listen(void) {
  static const char *const good[] = {"127.0.0.1:0", "127.0.0.1:65535", "localhost:50051",
                                     "[::1]:0", "127.9.8.7:1", "LocalHost:1"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    orthod_server_config_t c;
    char a[64];
    snprintf(a, sizeof a, "--listen=%s", good[i]);
    EXPECT_RUN(&c, ARGS(a), NULL);
    CHECK_STR(c.listen, good[i]);
  }
  static const struct {
    const char *value, *reason;
  } bad[] = {
      {"localhost", "'localhost' is not HOST:PORT"},
      {"::1:50051", "'::1:50051': IPv6 addresses need brackets, as in [::1]:50051"},
      {"[::1:50051", "'[::1:50051' lacks the closing ']'"},
      {"[::1]50051", "'[::1]50051' is not [IPV6]:PORT"},
      {"[::g]:1", "'::g' is not an IPv6 address"},
      {":50051", "':50051' has no host (0.0.0.0:PORT means every interface)"},
      {"127.0.0.1:65536", "port '65536' is not a number in 0..65535"},
      {"127.0.0.1:", "port '' is not a number in 0..65535"},
      {"127.0.0.1:http", "port 'http' is not a number in 0..65535"},
      {"a b:1", "'a b' is not a host name or IPv4 address"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char a[64], want[256];
    snprintf(a, sizeof a, "--listen=%s", bad[i].value);
    snprintf(want, sizeof want, "--listen (command line): %s", bad[i].reason);
    EXPECT_ERROR_EXACT(ARGS(a), NULL, want);
  }
}

static void test_combined_checks(void) {
  orthod_server_config_t c;
  /* chunk-bytes must leave 1K of a message for framing. */
  EXPECT_RUN(&c, ARGS("--max-message-bytes=64K", "--chunk-bytes=63K"), NULL);
  EXPECT_ERROR_EXACT(ARGS("--max-message-bytes=64K", "--chunk-bytes=64K"), NULL,
                     "--chunk-bytes (command line): 64K is above the maximum 63K "
                     "(max-message-bytes 64K, flag, less 1K for framing)");
  /* When chunk-bytes is the default, the operator changed max-message-bytes: blame that. */
  EXPECT_ERROR_EXACT(ARGS("--max-message-bytes=1M"), NULL,
                     "--max-message-bytes (command line): 1M leaves no room for chunk-bytes 1M "
                     "(default); it must be at least chunk-bytes + 1K");
  const char *file = write_tmp("chunk-bytes = 2M\n");
  char conf[128];
  snprintf(conf, sizeof conf, "--config=%s", file);
  EXPECT_ERROR(ARGS(conf, "--max-message-bytes=2M"), NULL,
               "--max-message-bytes (command line): 2M leaves no room for chunk-bytes 2M (file)");

  /* TLS keys go together; beyond loopback with TLS needs no --allow-insecure-remote. */
  EXPECT_ERROR_EXACT(ARGS("--tls-cert=/c.pem"), NULL,
                     "--tls-cert (command line): tls-cert and tls-key go together (the "
                     "certificate chain and its key)");
  EXPECT_ERROR_EXACT(ARGS("--tls-key=/k.pem"), NULL,
                     "--tls-key (command line): tls-cert and tls-key go together (the "
                     "certificate chain and its key)");
  EXPECT_ERROR_EXACT(NOARGS, ARGS("ORTHOD_TLS_CLIENT_CA=/ca.pem"),
                     "--tls-client-ca (environment ORTHOD_TLS_CLIENT_CA): tls-client-ca (mutual "
                     "TLS) needs tls-cert and tls-key");
  {
    orthod_server_config_t t;
    EXPECT_RUN(&t, ARGS("--listen=0.0.0.0:0", "--tls-cert=/c.pem", "--tls-key=/k.pem",
                        "--tls-client-ca=/ca.pem", "--auth-tokens=/t"), NULL);
    CHECK_STR(t.tls_client_ca, "/ca.pem");
    CHECK_STR(t.auth_tokens, "/t");
  }
  /* Beyond loopback only with --allow-insecure-remote (or TLS). */
  EXPECT_ERROR_EXACT(ARGS("--listen=0.0.0.0:50051"), NULL,
                     "--listen (command line): 0.0.0.0:50051 is not a loopback address; serving "
                     "beyond loopback without TLS needs --allow-insecure-remote");
  EXPECT_ERROR(NOARGS, ARGS("ORTHOD_LISTEN=[::]:1"),
               "--listen (environment ORTHOD_LISTEN): [::]:1 is not a loopback address");
  EXPECT_RUN(&c, ARGS("--listen=0.0.0.0:50051", "--allow-insecure-remote"), NULL);
  EXPECT_RUN(&c, ARGS("--listen=[::]:0"), ARGS("ORTHOD_ALLOW_INSECURE_REMOTE=yes"));
}

/* ---- the config file ------------------------------------------------------------------------ */

static void test_file_format(void) {
  const char *file = write_tmp("# a comment\n"
                               "\n"
                               "   \t\n"
                               "  listen=127.0.0.1:1\n"
                               "state-dir = \"/data/with space # not a comment\"  # comment\n"
                               "backend = 'cpu'\n"
                               "max_params = 12   # underscores read as dashes\n"
                               "log-level = debug#still-the-value\r\n"
                               "threads = 2\r\n"
                               "allow-insecure-remote = off\n"
                               "memory-limit = 1G");
  char conf[128];
  snprintf(conf, sizeof conf, "--config=%s", file);
  orthod_server_config_t c;
  /* "debug#still-the-value" is not a log level: a '#' inside a bare value is kept. */
  char want[512];
  snprintf(want, sizeof want,
           "log-level (file %s:8): 'debug#still-the-value' is not one of error, warn, info, "
           "debug",
           file);
  EXPECT_ERROR_EXACT(ARGS(conf), NULL, want);

  file = write_tmp("# a comment\n"
                   "\n"
                   "   \t\n"
                   "  listen=127.0.0.1:1\n"
                   "state-dir = \"/data/with space # not a comment\"  # comment\n"
                   "backend = 'cpu'\n"
                   "max_params = 12   # underscores read as dashes\n"
                   "log-level = debug # a comment\r\n"
                   "threads = 2\r\n"
                   "allow-insecure-remote = off\n"
                   "memory-limit = 1G");
  snprintf(conf, sizeof conf, "--config=%s", file);
  EXPECT_RUN(&c, ARGS(conf), NULL);
  CHECK_STR(c.listen, "127.0.0.1:1");
  CHECK_STR(c.state_dir, "/data/with space # not a comment");
  CHECK_STR(c.backend, "cpu");
  CHECK_U(c.max_params, 12);
  CHECK_U(c.log_level, ORTHOD_LOG_DEBUG);
  CHECK_U(c.threads, 2);
  CHECK_U(c.memory_limit, 1ull << 30);
  CHECK_STR(orthod_server_config_source(&c, "memory-limit"), "file");

  /* An empty file is fine. */
  file = write_tmp("");
  snprintf(conf, sizeof conf, "--config=%s", file);
  EXPECT_RUN(&c, ARGS(conf), NULL);
}

static void test_file_errors(void) {
  static const struct {
    const char *content, *message; /* %s: the path */
  } cases[] = {
      {"listen = 127.0.0.1:1\n\n\n\n\n\nmax-message-bytes = 1\n",
       "max-message-bytes (file %s:7): 1 is below the minimum 64K"},
      {"# x\nchunk-byte = 1M\n", "%s:2: unknown key 'chunk-byte' (did you mean chunk-bytes?)"},
      {"frobnicate = 1\n", "%s:1: unknown key 'frobnicate'"},
      {"listen 127.0.0.1:1\n", "%s:1: expected 'key = value', got 'listen 127.0.0.1:1'"},
      {"threads = 1\nthreads = 2\n", "%s:2: threads is already set on line 1"},
      {"config = /etc/other.conf\n", "%s:1: config cannot be set in a config file"},
      {"state-dir = \"/x\n", "%s:1: state-dir: missing closing \""},
      {"state-dir = '/x' y\n", "%s:1: state-dir: unexpected 'y' after the quoted value"},
      {"threads =\n", "threads (file %s:1): '' is not a number"},
      {"state-dir = \"\"\n", "state-dir (file %s:1): the value is empty"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *file = write_tmp(cases[i].content);
    char conf[128], want[512];
    snprintf(conf, sizeof conf, "--config=%s", file);
    const char *at = strstr(cases[i].message, "%s"); /* the path goes there */
    snprintf(want, sizeof want, "%.*s%s%s", (int)(at - cases[i].message), cases[i].message, file,
             at + 2);
    EXPECT_ERROR_EXACT(ARGS(conf), NULL, want);
  }
  EXPECT_ERROR_EXACT(ARGS("--config", "/nonexistent/orthod.conf"), NULL,
                     "--config (command line): cannot open '/nonexistent/orthod.conf': No such "
                     "file or directory");
  EXPECT_ERROR_EXACT(NOARGS, ARGS("ORTHOD_CONFIG=/nonexistent/o.conf"),
                     "--config (environment ORTHOD_CONFIG): cannot open '/nonexistent/o.conf': "
                     "No such file or directory");
  EXPECT_ERROR_EXACT(ARGS("--config", "/tmp"), NULL,
                     "--config (command line): cannot read '/tmp': Is a directory");
}

/* ---- generated outputs ---------------------------------------------------------------------- */

static void test_sample_file(void) {
  char *sample = capture(orthod_server_config_write_sample);
  /* Every key but config appears as `key = default` (commented out where the default is
   * empty), and the sample loads to the defaults. */
  static const char *const empty_default[] = {"tls-cert", "tls-key", "tls-client-ca",
                                              "auth-tokens", "metrics-listen"};
  for (size_t i = 0; orthod_server_config_key_name(i) != NULL; i++) {
    const char *k = orthod_server_config_key_name(i);
    char line[128];
    bool empty = false;
    for (size_t e = 0; e < sizeof empty_default / sizeof *empty_default; e++)
      empty = empty || strcmp(k, empty_default[e]) == 0;
    snprintf(line, sizeof line, empty ? "\n# %s = " : "\n%s = ", k);
    if (strcmp(k, "config") == 0) {
      CU_ASSERT_PTR_NULL(strstr(sample, line));
    } else {
      CHECK_HAS(sample, line);
    }
  }
  const char *file = write_tmp(sample);
  char conf[128];
  snprintf(conf, sizeof conf, "--config=%s", file);
  orthod_server_config_t c, d;
  EXPECT_RUN(&c, ARGS(conf), NULL);
  orthod_server_config_defaults(&d);
  memset(c.config_file, 0, sizeof c.config_file);
  memset(c.source_, 0, sizeof c.source_);
  CU_ASSERT_EQUAL(memcmp(&c, &d, sizeof c), 0);

  /* deploy/orthod.conf is this text (regenerate: server_test_config --print-sample). */
  char path[1024];
  if (source_path("deploy/orthod.conf", path, sizeof path)) {
    char *shipped = slurp(path);
    CU_ASSERT_PTR_NOT_NULL(shipped);
    if (shipped != NULL && strcmp(shipped, sample) != 0)
      fprintf(stderr, "\n  %s differs from the table; regenerate it with "
                      "server_test_config --print-sample > %s\n", path, path);
    CU_ASSERT(shipped != NULL && strcmp(shipped, sample) == 0);
    free(shipped);
  }
  free(sample);
}

static void test_markdown_table(void) {
  char *md = capture(orthod_server_config_write_markdown);
  CHECK_HAS(md, "| key | flag / environment | default | allowed | meaning |\n");
  CHECK_HAS(md, "| `chunk-bytes` | `--chunk-bytes`, `ORTHOD_CHUNK_BYTES` | `1M` | 1K..2097151K |");
  CHECK_HAS(md, "one of auto, cpu, cuda");
  size_t rows = 0;
  for (const char *p = md; (p = strstr(p, "\n| `")) != NULL; p++) rows++;
  CHECK_U(rows, 29);
  char path[1024];
  if (source_path("docs/OPERATIONS.md", path, sizeof path)) {
    char *doc = slurp(path);
    CU_ASSERT_PTR_NOT_NULL(doc);
    if (doc != NULL && strstr(doc, md) == NULL)
      fprintf(stderr, "\n  the key table in %s differs from the table in server/config.c; "
                      "regenerate it with server_test_config --print-markdown\n", path);
    CU_ASSERT(doc != NULL && strstr(doc, md) != NULL);
    free(doc);
  }
  free(md);
}

/* ---- logs ----------------------------------------------------------------------------------- */

static char logged[64][256];
static int n_logged;
static void capture_sink(orthod_log_level_t level, const char *msg, void *user) {
  (void)user;
  if (level == ORTHOD_LOG_INFO && n_logged < 64) snprintf(logged[n_logged++], 256, "%s", msg);
}

static void test_config_log(void) {
  orthod_server_config_t c;
  const char *file = write_tmp("threads = 2\n");
  char conf[128];
  snprintf(conf, sizeof conf, "--config=%s", file);
  EXPECT_RUN(&c, ARGS(conf, "--max-params=5"), ARGS("ORTHOD_BACKEND=cpu"));
  n_logged = 0;
  orthod_log_set_sink(capture_sink, NULL, ORTHOD_LOG_INFO);
  orthod_server_config_log(&c);
  orthod_log_set_sink(NULL, NULL, ORTHOD_LOG_WARN);
  CHECK_U(n_logged, 29);
  CHECK_STR(logged[0], "config listen = 127.0.0.1:50051 (default)");
  CHECK_STR(logged[2], "config tls-cert = none (default)");
  CHECK_STR(logged[6], "config max-message-bytes = 16M (default)");
  CHECK_STR(logged[11], "config metrics-listen = none (default)");
  CHECK_STR(logged[12], "config backend = cpu (env)");
  CHECK_STR(logged[14], "config threads = 2 (file)");
  CHECK_STR(logged[17], "config max-params = 5 (flag)");
  char want[256];
  snprintf(want, sizeof want, "config config = %s (flag)", file);
  CHECK_STR(logged[22], "config restore = true (default)");
  CHECK_STR(logged[23], "config checkpoint-interval-s = 300 (default)");
  CHECK_STR(logged[26], want);
  orthod_server_config_defaults(&c);
  n_logged = 0;
  orthod_log_set_sink(capture_sink, NULL, ORTHOD_LOG_INFO);
  orthod_server_config_log(&c);
  orthod_log_set_sink(NULL, NULL, ORTHOD_LOG_WARN);
  CHECK_STR(logged[26], "config config = none (default)");
}

/* Run fn with stderr redirected to a file; return what it wrote. */
static char *capture_stderr(void (*fn)(void)) {
  char path[] = "/tmp/orthod-test-log-XXXXXX";
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  fn();
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  char *text = slurp(path);
  unlink(path);
  return text;
}

static bool is_timestamp(const char *s) {
  /* 2026-11-25T08:38:38.123Z */
  static const char pattern[] = "dddd-dd-ddTdd:dd:dd.dddZ";
  for (size_t i = 0; i < sizeof pattern - 1; i++) {
    if (pattern[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != pattern[i]) return false;
  }
  return true;
}

static void log_text_lines(void) {
  orthod_server_log_install(ORTHOD_LOG_INFO, ORTHOD_LOG_FORMAT_TEXT);
  ORTHOD_LOG(ORTHOD_LOG_INFO, "hello %d", 42);
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "not shown");
  ORTHOD_LOG(ORTHOD_LOG_ERROR, "two\nlines\tand \"quotes\" \x01 \xff\xc3(");
}
static void log_json_lines(void) {
  orthod_server_log_install(ORTHOD_LOG_DEBUG, ORTHOD_LOG_FORMAT_JSON);
  ORTHOD_LOG(ORTHOD_LOG_DEBUG, "q\"b\\n\nt\tc\x01\x1f/é");
  ORTHOD_LOG(ORTHOD_LOG_WARN, "plain");
  /* Not UTF-8: a lone continuation byte, a truncated sequence, an overlong '/', a surrogate. */
  ORTHOD_LOG(ORTHOD_LOG_WARN, "a\x80" "b\xe2\x82" "c\xc0\xaf" "d\xed\xa0\x80" "e\xf0\x9f\x98\x80");
}

static void test_log_sink_formats(void) {
  char *text = capture_stderr(log_text_lines);
  orthod_log_set_sink(NULL, NULL, ORTHOD_LOG_WARN);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  /* "<ts> info  hello 42\n<ts> error two\\nlines\\tand \"quotes\" \\x01\n" */
  char *second = strchr(text, '\n');
  CU_ASSERT_PTR_NOT_NULL_FATAL(second);
  second++;
  CU_ASSERT_TRUE(is_timestamp(text));
  CU_ASSERT_EQUAL(strncmp(text + 24, " info  hello 42\n", 16), 0);
  CU_ASSERT_TRUE(is_timestamp(second));
  CHECK_STR(second + 24, " error two\\nlines\\tand \"quotes\" \\x01 \\xff\\xc3(\n");
  free(text);

  text = capture_stderr(log_json_lines);
  orthod_log_set_sink(NULL, NULL, ORTHOD_LOG_WARN);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  CU_ASSERT_EQUAL(strncmp(text, "{\"ts\":\"", 7), 0);
  CU_ASSERT_TRUE(is_timestamp(text + 7));
  CHECK_HAS(text, "Z\",\"level\":\"debug\",\"msg\":\"q\\\"b\\\\n\\nt\\tc\\u0001\\u001f/é\"}\n");
  CHECK_HAS(text, "\"level\":\"warn\",\"msg\":\"plain\"}\n");
  CHECK_HAS(text, "\"msg\":\"a\\ufffdb\\ufffd\\ufffdc\\ufffd\\ufffdd\\ufffd\\ufffd\\ufffde"
                  "\xf0\x9f\x98\x80\"}\n");
  free(text);
}

enum { LOG_THREADS = 4, LOG_LINES = 300 };
static void *log_worker(void *arg) {
  int id = (int)(intptr_t)arg;
  /* Long lines (well past a pipe's atomic write size would not matter here, but long enough to be
   * split if the sink wrote in pieces). */
  char pad[600];
  memset(pad, 'a' + id, sizeof pad - 1);
  pad[sizeof pad - 1] = '\0';
  for (int i = 0; i < LOG_LINES; i++) ORTHOD_LOG(ORTHOD_LOG_INFO, "t%d %d %s end", id, i, pad);
  return NULL;
}
static void log_from_threads(void) {
  orthod_server_log_install(ORTHOD_LOG_INFO, ORTHOD_LOG_FORMAT_JSON);
  pthread_t t[LOG_THREADS];
  for (int i = 0; i < LOG_THREADS; i++)
    pthread_create(&t[i], NULL, log_worker, (void *)(intptr_t)i);
  for (int i = 0; i < LOG_THREADS; i++) pthread_join(t[i], NULL);
}

static void test_log_sink_threads(void) {
  char *text = capture_stderr(log_from_threads);
  orthod_log_set_sink(NULL, NULL, ORTHOD_LOG_WARN);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  int lines = 0, bad = 0;
  int seen[LOG_THREADS] = {0};
  for (char *line = text; *line != '\0';) {
    size_t l = strcspn(line, "\n");
    int id = -1, i = -1;
    char *msg = strstr(line, "\"msg\":\"t");
    bool ok = l > 0 && strncmp(line, "{\"ts\":\"", 7) == 0 && msg != NULL &&
              sscanf(msg, "\"msg\":\"t%d %d", &id, &i) == 2 && id >= 0 && id < LOG_THREADS &&
              strncmp(line + l - 6, " end\"}", 6) == 0;
    if (ok) {
      /* The padding is one thread's letter only. */
      const char *pad = strchr(msg + 8, ' ');
      pad = pad != NULL ? strchr(pad + 1, ' ') : NULL;
      for (int j = 1; ok && pad != NULL && j < 600; j++) ok = pad[j] == 'a' + id;
      ok = ok && pad != NULL && i == seen[id]++;
    }
    if (!ok && bad++ == 0) fprintf(stderr, "\n  malformed line: %.*s\n", (int)l, line);
    lines++;
    line += l + (line[l] == '\n');
  }
  CHECK_U(lines, LOG_THREADS * LOG_LINES);
  CHECK_U(bad, 0);
  free(text);
}

static void test_loopback(void) {
  static const char *const yes[] = {"127.0.0.1:50051", "127.255.0.1:1", "localhost:0",
                                    "LOCALHOST:1",     "localhost.:1",  "[::1]:5",
                                    "[::ffff:127.0.0.1]:5", "127.0.0.1", "::1", "localhost"};
  static const char *const no[] = {"0.0.0.0:1", "[::]:1",   "10.0.0.1:1",  "example.com:1",
                                   "128.0.0.1:1", "",       "[::1",        "[]:1",
                                   "127.1:1",   "[::2]:1",  "[::ffff:10.0.0.1]:1", "localhost2:1"};
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (!orthod_listen_is_loopback(yes[i])) fprintf(stderr, "\n  %s: not loopback?\n", yes[i]);
    CU_ASSERT_TRUE(orthod_listen_is_loopback(yes[i]));
  }
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    if (orthod_listen_is_loopback(no[i])) fprintf(stderr, "\n  %s: loopback?\n", no[i]);
    CU_ASSERT_FALSE(orthod_listen_is_loopback(no[i]));
  }
  CU_ASSERT_FALSE(orthod_listen_is_loopback(NULL));
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--print-sample") == 0) {
    orthod_server_config_write_sample(stdout);
    return 0;
  }
  if (argc == 2 && strcmp(argv[1], "--print-markdown") == 0) {
    orthod_server_config_write_markdown(stdout);
    return 0;
  }
  static const tu_test_t tests[] = {
      {"defaults", test_defaults},
      {"version", test_version},
      {"help", test_help},
      {"precedence", test_precedence},
      {"flag_forms", test_flag_forms},
      {"flag_errors", test_flag_errors},
      {"sizes", test_sizes},
      {"numbers_and_ranges", test_numbers_and_ranges},
      {"enums_and_paths", test_enums_and_paths},
      {"listen", test_listen},
      {"combined_checks", test_combined_checks},
      {"file_format", test_file_format},
      {"file_errors", test_file_errors},
      {"sample_file", test_sample_file},
      {"markdown_table", test_markdown_table},
      {"config_log", test_config_log},
      {"log_sink_formats", test_log_sink_formats},
      {"log_sink_threads", test_log_sink_threads},
      {"loopback", test_loopback},
      {NULL, NULL},
  };
  int rc = tu_run_suite("server_config", tests);
  remove_tmp();
  return rc;
}
