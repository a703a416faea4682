/* test_checkpoint.c — store snapshots: CRC32C against its published check value; a round trip
 * of parameters of several algorithms (every state buffer, step counter, configuration and the
 * caller's metadata bit-exact) after which further steps continue bit-identically; the newest-K
 * directory rule and leftovers of interrupted writes; and every kind of damage refused with
 * E_CORRUPT (the store left empty), a store too small with E_NOMEM, an unwritable directory
 * with E_IO and no partial file. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orthod/checkpoint.h"
#include "orthod/store.h"
#include "testutil.h"

static char dir[256];

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/orthod-test-ckpt-XXXXXX");
  if (mkdtemp(dir) == NULL) abort();
}

static void remove_dir(void) {
  DIR *d = opendir(dir);
  if (d == NULL) return;
  struct dirent *e;
  char path[600];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

static int count_files(void) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) n += e->d_name[0] != '.' || strlen(e->d_name) > 2;
  if (d) closedir(d);
  return n;
}

static void test_crc32c(void) {
  /* The CRC-32C check value of RFC 3720 / iSCSI: "123456789" -> 0xE3069283. */
  CU_ASSERT_EQUAL(orthod_crc32c(0, "123456789", 9), 0xE3069283u);
  /* Incremental over uneven pieces (the slicing-by-8 path and the byte tail). */
  uint8_t data[1000];
  for (int i = 0; i < 1000; i++) data[i] = (uint8_t)(i * 37 + 11);
  uint32_t whole = orthod_crc32c(0, data, 1000);
  uint32_t parts = orthod_crc32c(orthod_crc32c(orthod_crc32c(0, data, 3), data + 3, 500), data + 503, 497);
  CU_ASSERT_EQUAL(whole, parts);
  data[777] ^= 1;
  CU_ASSERT_NOT_EQUAL(orthod_crc32c(0, data, 1000), whole);
}

/* ---- a store with parameters of several algorithms, stepped a few times ---------------------- */

typedef struct {
  const char *name;
  int ndim;
  int64_t dims[3];
  const char *opts[4][2];
} spec_t;

static const spec_t specs[] = {
    {"attn.qkv", 2, {12, 8}, {{"algo", "muon"}, {"split_rows", "4,4,4"}, {"nesterov", "true"}}},
    {"conv.w", 3, {6, 2, 4}, {{"algo", "muon"}, {"lr", "0.02"}, {"precision", "highest"}}},
    {"ln.bias", 1, {10}, {{"algo", "adamw"}, {"amsgrad", "true"}, {"lr", "0.003"}}},
    {"mlp.adamuon", 2, {8, 6}, {{"algo", "adaptive_muon"}, {"moment2_method", "adamuon"}}},
    {"mlp.normuon", 2, {6, 8}, {{"algo", "adaptive_muon"}, {"moment2_method", "normuon"}}},
};
#define N_SPECS (sizeof specs / sizeof specs[0])

static orthod_store_t *filled_store(size_t limit) {
  orthod_store_t *st = NULL;
  TU_OK(orthod_store_create(tu_backend(), limit, &st));
  tu_rng_t r;
  tu_rng_seed(&r, 0xC4EC4B01);
  for (size_t i = 0; i < N_SPECS; i++) {
    orthod_shape_t shape;
    TU_OK(orthod_shape_init(&shape, specs[i].ndim, specs[i].dims));
    orthod_optim_config_t cfg;
    for (int k = 0; k < 4 && specs[i].opts[k][0]; k++)
      TU_OK(orthod_optim_config_set(&cfg, specs[i].opts[k][0], specs[i].opts[k][1]));
    orthod_param_t *p = NULL;
    TU_OK(orthod_store_register(st, specs[i].name, &shape, &cfg, &p));
    if (p == NULL) continue;
    size_t n = (size_t)orthod_shape_numel(&shape);
    float w[256], g[256];
    tu_fill_normal(&r, w, n);
    TU_OK(orthod_param_write(p, 0, w, ORTHOD_DTYPE_F32, n));
    for (int s = 0; s < 3; s++) {
      tu_fill_normal(&r, g, n);
      TU_OK(orthod_param_step_host(p, g, ORTHOD_DTYPE_F32, -1.0));
    }
  }
  return st;
}

static const char *meta_of(void *arg, const char *name) {
  (void)arg;
  return strcmp(name, "ln.bias") == 0 ? "workers=2\nsync=SYNC\n" : NULL;
}

typedef struct {
  int calls;
  char seen[N_SPECS][64];
} restored_t;

static orthod_err_t on_restore(void *arg, orthod_param_t *p, const char *meta) {
  restored_t *r = arg;
  if (r->calls < (int)N_SPECS)
    snprintf(r->seen[r->calls], sizeof r->seen[0], "%s|%s", orthod_param_name(p), meta);
  r->calls++;
  return ORTHOD_OK;
}

/* Every buffer of a and b bit-equal, same step, shape and configuration text. */
static void expect_same(orthod_param_t *a, orthod_param_t *b) {
  CU_ASSERT_STRING_EQUAL(orthod_param_name(a), orthod_param_name(b));
  CU_ASSERT_TRUE(orthod_shape_equal(orthod_param_shape(a), orthod_param_shape(b)));
  CU_ASSERT_EQUAL(orthod_param_step(a), orthod_param_step(b));
  const char *help;
  char va[512], vb[512];
  for (int k = 0; orthod_optim_config_key(k, &help) != NULL; k++) {
    const char *key = orthod_optim_config_key(k, &help);
    TU_OK(orthod_optim_config_get(orthod_param_config(a), key, va, sizeof va));
    TU_OK(orthod_optim_config_get(orthod_param_config(b), key, vb, sizeof vb));
    if (strcmp(va, vb) != 0) fprintf(stderr, "\n  %s: %s=%s vs %s\n", orthod_param_name(a), key, va, vb);
    CU_ASSERT_STRING_EQUAL(va, vb);
  }
  size_t n = (size_t)orthod_shape_numel(orthod_param_shape(a));
  float x[256], y[256];
  tu_to_host(x, orthod_param_weights(a), n);
  tu_to_host(y, orthod_param_weights(b), n);
  CU_ASSERT_TRUE(tu_bitequal("weights", x, y, n));
  int count = 0;
  for (int i = 0;; i++) {
    const char *na, *nb;
    float *da, *db;
    size_t la, lb;
    bool ha = orthod_optim_buffer(orthod_param_optim(a), i, &na, &da, &la);
    bool hb = orthod_optim_buffer(orthod_param_optim(b), i, &nb, &db, &lb);
    CU_ASSERT_EQUAL(ha, hb);
    if (!ha || !hb) break;
    CU_ASSERT_STRING_EQUAL(na, nb);
    CU_ASSERT_EQUAL(la, lb);
    if (la != lb || la > 256) continue;
    tu_to_host(x, da, la);
    tu_to_host(y, db, lb);
    CU_ASSERT_TRUE(tu_bitequal(na, x, y, la));
    count++;
  }
  CU_ASSERT_TRUE(count >= 1); /* every parameter here has optimizer state */
}

static void test_round_trip_and_continue(void) {
  make_dir();
  orthod_store_t *a = filled_store(0), *b = NULL;
  orthod_checkpoint_info_t info;
  TU_OK(orthod_checkpoint_save(a, dir, 7, 3, meta_of, NULL, &info));
  CU_ASSERT_EQUAL(info.sequence, 7);
  CU_ASSERT_EQUAL(info.parameters, N_SPECS);
  struct stat stt;
  CU_ASSERT_EQUAL(stat(info.path, &stt), 0);
  CU_ASSERT_EQUAL((uint64_t)stt.st_size, info.bytes);
  CU_ASSERT_PTR_NOT_NULL(strstr(info.path, "checkpoint-00000000000000000007.ock"));

  char latest[4096];
  uint64_t seq = 0;
  TU_OK(orthod_checkpoint_latest(dir, latest, sizeof latest, &seq));
  CU_ASSERT_EQUAL(seq, 7);
  CU_ASSERT_STRING_EQUAL(latest, info.path);

  TU_OK(orthod_store_create(tu_backend(), 0, &b));
  restored_t seen = {0};
  orthod_checkpoint_info_t got;
  TU_OK(orthod_checkpoint_load(b, latest, on_restore, &seen, &got));
  CU_ASSERT_EQUAL(got.sequence, 7);
  CU_ASSERT_EQUAL(got.parameters, N_SPECS);
  CU_ASSERT_EQUAL(got.bytes, info.bytes);
  CU_ASSERT_EQUAL(seen.calls, (int)N_SPECS);
  CU_ASSERT_STRING_EQUAL(seen.seen[2], "ln.bias|workers=2\nsync=SYNC\n");
  CU_ASSERT_STRING_EQUAL(seen.seen[0], "attn.qkv|");
  CU_ASSERT_EQUAL(orthod_store_count(b), N_SPECS);
  CU_ASSERT_EQUAL(orthod_store_memory_used(b), orthod_store_memory_used(a));
  for (size_t i = 0; i < N_SPECS && i < orthod_store_count(b); i++) {
    CU_ASSERT_EQUAL(orthod_param_step(orthod_store_at(b, i)), 3);
    expect_same(orthod_store_at(a, i), orthod_store_at(b, i));
  }
  /* The trajectory goes on as if nothing happened: two more steps on both, bit-identical. */
  tu_rng_t r;
  tu_rng_seed(&r, 99);
  for (int s = 0; s < 2; s++) {
    for (size_t i = 0; i < N_SPECS; i++) {
      orthod_param_t *pa = orthod_store_at(a, i), *pb = orthod_store_at(b, i);
      size_t n = (size_t)orthod_shape_numel(orthod_param_shape(pa));
      float g[256];
      tu_fill_normal(&r, g, n);
      TU_OK(orthod_param_step_host(pa, g, ORTHOD_DTYPE_F32, -1.0));
      TU_OK(orthod_param_step_host(pb, g, ORTHOD_DTYPE_F32, -1.0));
    }
  }
  for (size_t i = 0; i < N_SPECS; i++) expect_same(orthod_store_at(a, i), orthod_store_at(b, i));

  /* Loading needs an empty store. */
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_checkpoint_load(b, latest, NULL, NULL, NULL));
  orthod_store_destroy(a);
  orthod_store_destroy(b);
  remove_dir();
}

static void test_directory_rules(void) {
  make_dir();
  char latest[4096];
  uint64_t seq = 0;
  TU_EXPECT_ERR(ORTHOD_E_NOTFOUND, orthod_checkpoint_latest(dir, latest, sizeof latest, &seq));
  TU_EXPECT_ERR(ORTHOD_E_NOTFOUND,
                orthod_checkpoint_latest("/nonexistent/orthod", latest, sizeof latest, &seq));
  orthod_store_t *a = filled_store(0);
  for (uint64_t s = 1; s <= 4; s++) TU_OK(orthod_checkpoint_save(a, dir, s, 2, NULL, NULL, NULL));
  CU_ASSERT_EQUAL(count_files(), 2); /* 3 and 4 */
  /* a write that was interrupted leaves a temporary file: ignored, then removed */
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s/.checkpoint-00000000000000000005.ock.tmp", dir);
  FILE *f = fopen(tmp, "wb");
  CU_ASSERT_PTR_NOT_NULL(f);
  if (f) fclose(f);
  /* unrelated files stay */
  char other[600];
  snprintf(other, sizeof other, "%s/notes.txt", dir);
  f = fopen(other, "wb");
  if (f) fclose(f);
  TU_OK(orthod_checkpoint_latest(dir, latest, sizeof latest, &seq));
  CU_ASSERT_EQUAL(seq, 4);
  CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);
  CU_ASSERT_EQUAL(access(other, F_OK), 0);
  CU_ASSERT_EQUAL(count_files(), 3);
  /* an unwritable place: E_IO naming the file, nothing left behind */
  TU_EXPECT_ERR(ORTHOD_E_IO, orthod_checkpoint_save(a, "/nonexistent/orthod", 1, 1, NULL, NULL, NULL));
  TU_EXPECT_DETAIL("/nonexistent/orthod/.checkpoint-00000000000000000001.ock.tmp");
  TU_EXPECT_ERR(ORTHOD_E_INVAL, orthod_checkpoint_save(a, dir, 9, 0, NULL, NULL, NULL));
  orthod_store_destroy(a);
  remove_dir();
}

/* ---- damage ---------------------------------------------------------------------------------- */

static unsigned char *slurp(const char *path, long *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) abort();
  fseek(f, 0, SEEK_END);
  *len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)*len + 16);
  if (buf == NULL || fread(buf, 1, (size_t)*len, f) != (size_t)*len) abort();
  fclose(f);
  return buf;
}

static void spit(const char *path, const unsigned char *buf, long len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(buf, 1, (size_t)len, f) != (size_t)len) abort();
  fclose(f);
}

/* Load a damaged copy: the error, a detail substring, and an empty store afterwards. */
static void expect_refused(const unsigned char *buf, long len, orthod_err_t want, const char *detail) {
  char path[600];
  snprintf(path, sizeof path, "%s/damaged.ock", dir);
  spit(path, buf, len);
  orthod_store_t *b = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &b));
  TU_EXPECT_ERR(want, orthod_checkpoint_load(b, path, NULL, NULL, NULL));
  TU_EXPECT_DETAIL(detail);
  CU_ASSERT_EQUAL(orthod_store_count(b), 0);
  CU_ASSERT_EQUAL(orthod_store_memory_used(b), 0);
  orthod_store_destroy(b);
}

static void test_damage_refused(void) {
  make_dir();
  orthod_store_t *a = filled_store(0);
  orthod_checkpoint_info_t info;
  TU_OK(orthod_checkpoint_save(a, dir, 1, 1, meta_of, NULL, &info));
  long len = 0;
  unsigned char *good = slurp(info.path, &len);
  unsigned char *buf = malloc((size_t)len + 16);
  if (buf == NULL) abort();

  /* one flipped bit in the last record's data (the last float of its last buffer) */
  memcpy(buf, good, (size_t)len);
  buf[len - 6] ^= 0x10;
  expect_refused(buf, len, ORTHOD_E_CORRUPT, "CRC32C mismatch (the record is damaged)");
  /* a flipped bit in the first record's name */
  memcpy(buf, good, (size_t)len);
  buf[32 + 4 + 8 + 2] ^= 0x01;
  expect_refused(buf, len, ORTHOD_E_CORRUPT, "record 1: CRC32C mismatch");
  /* truncated: in the middle of a record, and just after the header */
  expect_refused(good, len - 100, ORTHOD_E_CORRUPT, "truncated");
  expect_refused(good, 32, ORTHOD_E_CORRUPT, "truncated");
  expect_refused(good, 10, ORTHOD_E_CORRUPT, "truncated");
  /* bytes after the last record */
  memcpy(buf, good, (size_t)len);
  memcpy(buf + len, "garbage!", 8);
  expect_refused(buf, len + 8, ORTHOD_E_CORRUPT, "data after the last record");
  /* not a checkpoint at all */
  memcpy(buf, good, (size_t)len);
  memcpy(buf, "PK\x03\x04....", 8);
  expect_refused(buf, len, ORTHOD_E_CORRUPT, "bad magic");
  /* header damage */
  memcpy(buf, good, (size_t)len);
  buf[20] ^= 0x01;
  expect_refused(buf, len, ORTHOD_E_CORRUPT, "CRC32C mismatch in the header");
  /* a future format version (with a valid header CRC) */
  memcpy(buf, good, (size_t)len);
  uint32_t v = 2, crc;
  memcpy(buf + 8, &v, 4);
  crc = orthod_crc32c(0, buf, 28);
  memcpy(buf + 28, &crc, 4);
  expect_refused(buf, len, ORTHOD_E_CORRUPT, "format version 2; this build reads version 1");
  /* a record marker overwritten */
  memcpy(buf, good, (size_t)len);
  buf[32] = 'X';
  expect_refused(buf, len, ORTHOD_E_CORRUPT, "record 1: bad record marker");
  /* a missing file */
  orthod_store_t *b = NULL;
  TU_OK(orthod_store_create(tu_backend(), 0, &b));
  TU_EXPECT_ERR(ORTHOD_E_IO, orthod_checkpoint_load(b, "/nonexistent/x.ock", NULL, NULL, NULL));
  TU_EXPECT_DETAIL("/nonexistent/x.ock");
  orthod_store_destroy(b);

  /* a store whose memory limit is now too small: E_NOMEM, nothing kept */
  TU_OK(orthod_store_create(tu_backend(), orthod_store_memory_used(a) - 1, &b));
  TU_EXPECT_ERR(ORTHOD_E_NOMEM, orthod_checkpoint_load(b, info.path, NULL, NULL, NULL));
  TU_EXPECT_DETAIL(info.path);
  CU_ASSERT_EQUAL(orthod_store_count(b), 0);
  CU_ASSERT_EQUAL(orthod_store_memory_used(b), 0);
  orthod_store_destroy(b);

  free(buf);
  free(good);
  orthod_store_destroy(a);
  remove_dir();
}

int main(void) {
  static const tu_test_t tests[] = {
      {"crc32c", test_crc32c},
      {"round trip, then the trajectory continues", test_round_trip_and_continue},
      {"directory: newest K, interrupted writes, errors", test_directory_rules},
      {"damage is refused", test_damage_refused},
      {NULL, NULL},
  };
  return tu_run_suite("checkpoint", tests);
}
