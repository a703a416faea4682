/* checkpoint.c — store snapshots (format in orthod/checkpoint.h). Buffers are streamed through a
 * fixed host block, so a checkpoint needs no more host memory than that block however large the
 * parameters are; the CRC of a record is computed while it is written or read. */
#define _POSIX_C_SOURCE 200809L
#include "orthod/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orthod/optimizer.h"
#include "orthod_internal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes floats as they are in memory: little-endian hosts only"
#endif

#define MAGIC "ORTHODCK"
#define RECORD_MAGIC 0x43455250u /* "PREC" */
#define HEADER_BYTES 32
#define BLOCK_FLOATS ((size_t)1 << 18) /* 1 MiB staging block */
#define TEXT_MAX ((uint32_t)1 << 20)
#define MAX_BUFFERS 16
#define PREFIX "checkpoint-"
#define SUFFIX ".ock"

/* ---- CRC32C ------------------------------------------------------------------------------- */

static uint32_t crc_table[8][256];
static bool crc_ready;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
  crc_ready = true;
}

uint32_t orthod_crc32c(uint32_t crc, const void *data, size_t n) {
  /* The table is the same whoever builds it; a race only builds it twice. */
  if (!crc_ready) crc_init();
  const uint8_t *p = data;
  crc = ~crc;
  while (n >= 8) { /* slicing-by-8: a checkpoint of GiBs must not be CRC-bound */
    uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                         (uint32_t)p[3] << 24);
    crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
          crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^
          crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct {
  FILE *f;
  const char *path;
  uint32_t crc; /* of the current record's payload */
  bool failed;
  int err;      /* errno of the first failure */
} out_t;

static void put(out_t *o, const void *data, size_t n) {
  if (o->failed || n == 0) return;
  o->crc = orthod_crc32c(o->crc, data, n);
  if (fwrite(data, 1, n, o->f) != n) {
    o->failed = true;
    o->err = errno ? errno : EIO;
  }
}

static void put_u8(out_t *o, uint8_t v) { put(o, &v, 1); }
static void put_u16(out_t *o, uint16_t v) { put(o, &v, 2); }
static void put_u32(out_t *o, uint32_t v) { put(o, &v, 4); }
static void put_u64(out_t *o, uint64_t v) { put(o, &v, 8); }

/* "key=value\n" for every key of the configuration table, algo first (setting algo resets the
 * others on load). Caller frees. */
static char *config_text(const orthod_optim_config_t *cfg) {
  size_t cap = 4096, used = 0;
  char *text = malloc(cap);
  if (text == NULL) return NULL;
  text[0] = '\0';
  char value[1024];
  const char *help;
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; orthod_optim_config_key(i, &help) != NULL; i++) {
      const char *key = orthod_optim_config_key(i, &help);
      if ((strcmp(key, "algo") == 0) != (pass == 0)) continue;
      if (orthod_optim_config_get(cfg, key, value, sizeof value) != ORTHOD_OK) continue;
      size_t need = strlen(key) + strlen(value) + 3;
      if (used + need > cap) {
        cap = (used + need) * 2;
        char *grown = realloc(text, cap);
        if (grown == NULL) {
          free(text);
          return NULL;
        }
        text = grown;
      }
      used += (size_t)snprintf(text + used, cap - used, "%s=%s\n", key, value);
    }
  }
  return text;
}

typedef struct {
  const char *name;
  float *data;
  size_t n;
} buffer_t;

/* Weights and the optimizer's state buffers of p. */
static int buffers_of(orthod_param_t *p, buffer_t *b) {
  int n = 0;
  b[n++] = (buffer_t){"weights", orthod_param_weights(p),
                      (size_t)orthod_shape_numel(orthod_param_shape(p))};
  for (int i = 0; n < MAX_BUFFERS; i++) {
    const char *name;
    float *data;
    size_t len;
    if (!orthod_optim_buffer(orthod_param_optim(p), i, &name, &data, &len)) break;
    b[n++] = (buffer_t){name, data, len};
  }
  return n;
}

static orthod_err_t write_record(out_t *o, orthod_backend_t *be, orthod_param_t *p,
                                 const char *meta, float *block) {
  const char *name = orthod_param_name(p);
  const orthod_shape_t *shape = orthod_param_shape(p);
  char *cfg = config_text(orthod_param_config(p));
  if (cfg == NULL) return orthod__fail(ORTHOD_E_NOMEM, "checkpoint: out of host memory");
  buffer_t bufs[MAX_BUFFERS];
  int nb = buffers_of(p, bufs);
  size_t name_len = strlen(name), cfg_len = strlen(cfg), meta_len = strlen(meta);
  if (cfg_len >= TEXT_MAX || meta_len >= TEXT_MAX) {
    free(cfg);
    return orthod__fail(ORTHOD_E_INVAL, "checkpoint: the texts of '%s' are too long", name);
  }
  uint64_t len = 2 + name_len + 1 + 8 * (uint64_t)shape->ndim + 8 + 4 + cfg_len + 4 + meta_len + 4;
  for (int i = 0; i < nb; i++) len += 2 + strlen(bufs[i].name) + 8 + 4 * (uint64_t)bufs[i].n;

  put_u32(o, RECORD_MAGIC);
  put_u64(o, len);
  o->crc = 0;
  put_u16(o, (uint16_t)name_len);
  put(o, name, name_len);
  put_u8(o, (uint8_t)shape->ndim);
  for (int d = 0; d < shape->ndim; d++) put_u64(o, (uint64_t)shape->dims[d]);
  put_u64(o, (uint64_t)orthod_param_step(p));
  put_u32(o, (uint32_t)cfg_len);
  put(o, cfg, cfg_len);
  put_u32(o, (uint32_t)meta_len);
  put(o, meta, meta_len);
  free(cfg);
  put_u32(o, (uint32_t)nb);
  for (int i = 0; i < nb && !o->failed; i++) {
    put_u16(o, (uint16_t)strlen(bufs[i].name));
    put(o, bufs[i].name, strlen(bufs[i].name));
    put_u64(o, bufs[i].n);
    for (size_t at = 0; at < bufs[i].n && !o->failed; at += BLOCK_FLOATS) {
      size_t k = bufs[i].n - at < BLOCK_FLOATS ? bufs[i].n - at : BLOCK_FLOATS;
      ORTHOD_TRY(orthod_backend_read(be, block, bufs[i].data + at, k));
      put(o, block, k * sizeof(float));
    }
  }
  uint32_t crc = o->crc;
  put_u32(o, crc);
  return ORTHOD_OK;
}

static void fill_info(orthod_checkpoint_info_t *info, const char *path, uint64_t sequence,
                      uint32_t records, long size) {
  if (info == NULL) return;
  snprintf(info->path, sizeof info->path, "%s", path);
  info->sequence = sequence;
  info->parameters = records;
  info->bytes = size > 0 ? (uint64_t)size : 0;
}

static void file_name(char *buf, size_t len, const char *dir, uint64_t seq, bool tmp) {
  snprintf(buf, len, "%s/%s" PREFIX "%020" PRIu64 "%s", dir, tmp ? "." : "", seq,
           tmp ? SUFFIX ".tmp" : SUFFIX);
}

static orthod_err_t io_fail(const char *what, const char *path, int err) {
  return orthod__fail(ORTHOD_E_IO, "checkpoint: cannot %s %s: %s", what, path, strerror(err));
}

static orthod_err_t fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return io_fail("open directory", dir, errno);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  return rc == 0 ? ORTHOD_OK : io_fail("fsync directory", dir, err);
}

/* Parse "checkpoint-<20 digits>.ock"; false for any other name. */
static bool parse_name(const char *name, uint64_t *seq) {
  size_t plen = strlen(PREFIX), slen = strlen(SUFFIX), len = strlen(name);
  if (len != plen + 20 + slen || strncmp(name, PREFIX, plen) != 0 ||
      strcmp(name + plen + 20, SUFFIX) != 0)
    return false;
  uint64_t v = 0;
  for (size_t i = plen; i < plen + 20; i++) {
    if (name[i] < '0' || name[i] > '9') return false;
    v = v * 10 + (uint64_t)(name[i] - '0');
  }
  *seq = v;
  return true;
}

/* ".checkpoint-<digits>.ock.tmp": a write that did not finish. */
static bool is_tmp_name(const char *name) {
  size_t len = strlen(name), tl = strlen(SUFFIX ".tmp");
  return name[0] == '.' && strncmp(name + 1, PREFIX, strlen(PREFIX)) == 0 && len > tl &&
         strcmp(name + len - tl, SUFFIX ".tmp") == 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* Sequences of the checkpoints in dir, ascending (caller frees); remove_tmp deletes leftovers of
 * interrupted writes. */
static orthod_err_t list_dir(const char *dir, bool remove_tmp, uint64_t **seqs, size_t *n) {
  *seqs = NULL;
  *n = 0;
  DIR *d = opendir(dir);
  if (d == NULL) return errno == ENOENT ? ORTHOD_OK : io_fail("read directory", dir, errno);
  size_t cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    uint64_t seq;
    if (is_tmp_name(e->d_name)) {
      char path[ORTHOD_CHECKPOINT_PATH_MAX];
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      if (remove_tmp && unlink(path) == 0)
        ORTHOD_LOG(ORTHOD_LOG_WARN, "checkpoint: removed %s, left by an interrupted write", path);
      continue;
    }
    if (!parse_name(e->d_name, &seq)) continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      uint64_t *grown = realloc(*seqs, cap * sizeof *grown);
      if (grown == NULL) {
        closedir(d);
        free(*seqs);
        *seqs = NULL;
        return orthod__fail(ORTHOD_E_NOMEM, "checkpoint: out of host memory");
      }
      *seqs = grown;
    }
    (*seqs)[(*n)++] = seq;
  }
  closedir(d);
  if (*n > 1) qsort(*seqs, *n, sizeof **seqs, cmp_u64);
  return ORTHOD_OK;
}

orthod_err_t orthod_checkpoint_latest(const char *dir, char *path, size_t len, uint64_t *sequence) {
  if (dir == NULL || path == NULL || sequence == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "checkpoint_latest: NULL argument");
  uint64_t *seqs;
  size_t n;
  ORTHOD_TRY(list_dir(dir, true, &seqs, &n));
  if (n == 0) return orthod__fail(ORTHOD_E_NOTFOUND, "no checkpoint in %s", dir);
  *sequence = seqs[n - 1];
  free(seqs);
  file_name(path, len, dir, *sequence, false);
  return ORTHOD_OK;
}

/* Keep the newest `keep` checkpoints; a failure to delete is only logged (the new checkpoint is
 * already durable). */
static void prune(const char *dir, int keep) {
  uint64_t *seqs;
  size_t n;
  if (list_dir(dir, false, &seqs, &n) != ORTHOD_OK) return;
  for (size_t i = 0; i + (size_t)keep < n; i++) {
    char path[ORTHOD_CHECKPOINT_PATH_MAX];
    file_name(path, sizeof path, dir, seqs[i], false);
    if (unlink(path) != 0)
      ORTHOD_LOG(ORTHOD_LOG_WARN, "checkpoint: cannot remove %s: %s", path, strerror(errno));
  }
  free(seqs);
}

orthod_err_t orthod_checkpoint_save(orthod_store_t *store, const char *dir, uint64_t sequence,
                                    int keep, orthod_checkpoint_meta_fn meta, void *arg,
                                    orthod_checkpoint_info_t *info) {
  if (store == NULL || dir == NULL || keep < 1)
    return orthod__fail(ORTHOD_E_INVAL, "checkpoint_save: NULL argument or keep < 1");
  char tmp[ORTHOD_CHECKPOINT_PATH_MAX], path[ORTHOD_CHECKPOINT_PATH_MAX];
  file_name(tmp, sizeof tmp, dir, sequence, true);
  file_name(path, sizeof path, dir, sequence, false);
  if (strlen(path) + 1 >= sizeof path)
    return orthod__fail(ORTHOD_E_INVAL, "checkpoint: directory name too long: %s", dir);
  float *block = malloc(BLOCK_FLOATS * sizeof(float));
  if (block == NULL) return orthod__fail(ORTHOD_E_NOMEM, "checkpoint: out of host memory");
  out_t o = {.f = fopen(tmp, "wb"), .path = tmp};
  if (o.f == NULL) {
    free(block);
    return io_fail("create", tmp, errno);
  }
  orthod_backend_t *be = orthod_store_backend(store);
  size_t count = orthod_store_count(store);
  uint8_t header[HEADER_BYTES];
  uint32_t version = ORTHOD_CHECKPOINT_VERSION, flags = 0, records = (uint32_t)count;
  memcpy(header, MAGIC, 8);
  memcpy(header + 8, &version, 4);
  memcpy(header + 12, &flags, 4);
  memcpy(header + 16, &sequence, 8);
  memcpy(header + 24, &records, 4);
  uint32_t hcrc = orthod_crc32c(0, header, 28);
  memcpy(header + 28, &hcrc, 4);
  put(&o, header, HEADER_BYTES);
  orthod_err_t err = ORTHOD_OK;
  for (size_t i = 0; i < count && err == ORTHOD_OK && !o.failed; i++) {
    orthod_param_t *p = orthod_store_at(store, i);
    const char *text = meta ? meta(arg, orthod_param_name(p)) : NULL;
    err = write_record(&o, be, p, text ? text : "", block);
  }
  free(block);
  if (err == ORTHOD_OK && !o.failed && fflush(o.f) != 0) {
    o.failed = true;
    o.err = errno;
  }
  if (err == ORTHOD_OK && !o.failed && fsync(fileno(o.f)) != 0) {
    o.failed = true;
    o.err = errno;
  }
  long size = ftell(o.f);
  if (fclose(o.f) != 0 && !o.failed) {
    o.failed = true;
    o.err = errno;
  }
  if (err == ORTHOD_OK && o.failed) err = io_fail("write", tmp, o.err);
  if (err == ORTHOD_OK && rename(tmp, path) != 0) err = io_fail("rename to", path, errno);
  if (err != ORTHOD_OK) {
    unlink(tmp);
    return err;
  }
  ORTHOD_TRY(fsync_dir(dir));
  prune(dir, keep);
  fill_info(info, path, sequence, records, size);
  return ORTHOD_OK;
}

/* ---- reading ------------------------------------------------------------------------------ */

typedef struct {
  FILE *f;
  const char *path;
  uint32_t crc;
  uint64_t left;    /* payload bytes not yet read */
  uint32_t record;  /* 1-based, for messages */
  orthod_err_t err; /* first failure (detail recorded) */
} in_t;

static orthod_err_t corrupt(in_t *in, const char *what) {
  if (in->err == ORTHOD_OK)
    in->err = in->record == 0
                  ? orthod__fail(ORTHOD_E_CORRUPT, "checkpoint %s: %s", in->path, what)
                  : orthod__fail(ORTHOD_E_CORRUPT, "checkpoint %s, record %u: %s", in->path,
                                 in->record, what);
  return in->err;
}

/* Read n bytes of the current payload (or of the file outside records when payload is false). */
static bool get(in_t *in, void *dst, size_t n, bool payload) {
  if (in->err != ORTHOD_OK) return false;
  if (payload && n > in->left) {
    corrupt(in, "a field runs past the end of its record");
    return false;
  }
  if (fread(dst, 1, n, in->f) != n) {
    if (ferror(in->f)) in->err = io_fail("read", in->path, errno ? errno : EIO);
    else corrupt(in, "the file ends early (truncated)");
    return false;
  }
  if (payload) {
    in->crc = orthod_crc32c(in->crc, dst, n);
    in->left -= n;
  }
  return true;
}

static uint64_t get_uint(in_t *in, size_t bytes) {
  uint64_t v = 0;
  uint8_t b[8];
  if (!get(in, b, bytes, true)) return 0;
  for (size_t i = 0; i < bytes; i++) v |= (uint64_t)b[i] << (8 * i);
  return v;
}

/* A length-prefixed text of the payload, NUL-terminated (caller frees); NULL on failure. */
static char *get_text(in_t *in, size_t prefix, uint64_t max) {
  uint64_t len = get_uint(in, prefix);
  if (in->err != ORTHOD_OK) return NULL;
  if (len > max || len > in->left) {
    corrupt(in, "a text is longer than its record");
    return NULL;
  }
  char *s = malloc((size_t)len + 1);
  if (s == NULL) {
    in->err = orthod__fail(ORTHOD_E_NOMEM, "checkpoint: out of host memory");
    return NULL;
  }
  if (!get(in, s, (size_t)len, true)) {
    free(s);
    return NULL;
  }
  s[len] = '\0';
  if (strlen(s) != len) {
    free(s);
    corrupt(in, "a text has a NUL byte");
    return NULL;
  }
  return s;
}

/* Apply "key=value\n" lines over the defaults of the algo on the first line. */
static orthod_err_t parse_config(in_t *in, char *text, orthod_optim_config_t *cfg) {
  char *save = NULL, msg[512];
  bool first = true;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *eq = strchr(line, '=');
    if (eq == NULL) return corrupt(in, "a configuration line has no '='");
    *eq = '\0';
    if (first) {
      orthod_algo_t algo;
      if (strcmp(line, "algo") != 0 || orthod_algo_from_name(eq + 1, &algo) != ORTHOD_OK ||
          orthod_optim_config_default(cfg, algo) != ORTHOD_OK)
        return corrupt(in, "the configuration does not start with a known algo");
      first = false;
      continue;
    }
    if (orthod_optim_config_set(cfg, line, eq + 1) != ORTHOD_OK) {
      snprintf(msg, sizeof msg, "configuration key %.100s=%.200s: %.150s", line, eq + 1,
               orthod_error_detail());
      return corrupt(in, msg);
    }
  }
  return first ? corrupt(in, "empty configuration") : ORTHOD_OK;
}

static orthod_err_t read_record(in_t *in, orthod_store_t *store, float *block,
                                orthod_checkpoint_restore_fn restore, void *arg) {
  uint32_t magic = 0;
  uint64_t len = 0;
  if (!get(in, &magic, 4, false) || !get(in, &len, 8, false)) return in->err;
  if (magic != RECORD_MAGIC) return corrupt(in, "bad record marker");
  in->crc = 0;
  in->left = len;
  char msg[512];
  char *name = get_text(in, 2, ORTHOD_NAME_MAX - 1);
  if (name == NULL) return in->err;
  orthod_shape_t shape;
  memset(&shape, 0, sizeof shape);
  shape.ndim = (int)get_uint(in, 1);
  if (in->err == ORTHOD_OK && (shape.ndim < 1 || shape.ndim > ORTHOD_MAX_DIMS)) {
    free(name);
    return corrupt(in, "bad number of dimensions");
  }
  for (int d = 0; d < shape.ndim; d++) shape.dims[d] = (int64_t)get_uint(in, 8);
  int64_t step = (int64_t)get_uint(in, 8);
  char *cfg_text = get_text(in, 4, TEXT_MAX);
  char *meta = cfg_text ? get_text(in, 4, TEXT_MAX) : NULL;
  orthod_optim_config_t cfg;
  orthod_err_t err = in->err;
  if (err == ORTHOD_OK) err = parse_config(in, cfg_text, &cfg);
  free(cfg_text);
  orthod_param_t *p = NULL;
  if (err == ORTHOD_OK && step < 0) err = corrupt(in, "negative step counter");
  if (err == ORTHOD_OK && orthod_store_get(store, name, &p) == ORTHOD_OK) {
    p = NULL;
    err = corrupt(in, "a parameter appears twice");
  }
  if (err == ORTHOD_OK) {
    orthod_error_clear();
    err = orthod_store_register(store, name, &shape, &cfg, &p);
    if (err != ORTHOD_OK) {
      snprintf(msg, sizeof msg, "%.400s", orthod_error_detail());
      err = orthod__fail(err, "checkpoint %s: %s", in->path, msg);
    }
  }
  buffer_t bufs[MAX_BUFFERS];
  int nb = p ? buffers_of(p, bufs) : 0;
  uint32_t stored = err == ORTHOD_OK ? (uint32_t)get_uint(in, 4) : 0;
  err = err != ORTHOD_OK ? err : in->err;
  if (err == ORTHOD_OK && stored != (uint32_t)nb) {
    snprintf(msg, sizeof msg, "'%.256s' has %u buffers, its configuration needs %d", name, stored,
             nb);
    err = corrupt(in, msg);
  }
  orthod_backend_t *be = orthod_store_backend(store);
  for (int i = 0; i < nb && err == ORTHOD_OK; i++) {
    char *bname = get_text(in, 2, 64);
    uint64_t n = bname ? get_uint(in, 8) : 0;
    err = in->err;
    if (err == ORTHOD_OK && (strcmp(bname, bufs[i].name) != 0 || n != bufs[i].n)) {
      snprintf(msg, sizeof msg, "'%.256s': buffer %d is %.64s of %" PRIu64
               " floats, its configuration needs %s of %zu", name, i, bname, n, bufs[i].name,
               bufs[i].n);
      err = corrupt(in, msg);
    }
    free(bname);
    for (size_t at = 0; at < n && err == ORTHOD_OK; at += BLOCK_FLOATS) {
      size_t k = n - at < BLOCK_FLOATS ? (size_t)(n - at) : BLOCK_FLOATS;
      if (!get(in, block, k * sizeof(float), true)) err = in->err;
      else err = orthod_backend_upload(be, bufs[i].data + at, block, ORTHOD_DTYPE_F32, k);
      if (err == ORTHOD_OK) err = orthod_backend_sync(be);
    }
  }
  uint32_t want = in->crc, crc = 0;
  if (err == ORTHOD_OK && in->left != 0) err = corrupt(in, "unused bytes at the end of the record");
  if (err == ORTHOD_OK && get(in, &crc, 4, false) && crc != want)
    err = corrupt(in, "CRC32C mismatch (the record is damaged)");
  if (err == ORTHOD_OK) err = in->err;
  if (err == ORTHOD_OK) {
    orthod_optim_set_step_count(orthod_param_optim(p), step);
    if (restore) err = restore(arg, p, meta);
  }
  free(meta);
  free(name);
  return err;
}

static void empty_store(orthod_store_t *store) {
  while (orthod_store_count(store) > 0)
    orthod_store_drop(store, orthod_param_name(orthod_store_at(store, 0)));
}

orthod_err_t orthod_checkpoint_load(orthod_store_t *store, const char *path,
                                    orthod_checkpoint_restore_fn restore, void *arg,
                                    orthod_checkpoint_info_t *info) {
  if (store == NULL || path == NULL)
    return orthod__fail(ORTHOD_E_INVAL, "checkpoint_load: NULL argument");
  if (orthod_store_count(store) != 0)
    return orthod__fail(ORTHOD_E_INVAL, "checkpoint_load: the store is not empty");
  in_t in = {.f = fopen(path, "rb"), .path = path};
  if (in.f == NULL) return io_fail("open", path, errno);
  float *block = malloc(BLOCK_FLOATS * sizeof(float));
  if (block == NULL) {
    fclose(in.f);
    return orthod__fail(ORTHOD_E_NOMEM, "checkpoint: out of host memory");
  }
  uint8_t header[HEADER_BYTES];
  uint32_t version = 0, records = 0, hcrc = 0;
  uint64_t sequence = 0;
  orthod_err_t err = ORTHOD_OK;
  if (!get(&in, header, HEADER_BYTES, false)) {
    err = in.err;
  } else {
    memcpy(&version, header + 8, 4);
    memcpy(&sequence, header + 16, 8);
    memcpy(&records, header + 24, 4);
    memcpy(&hcrc, header + 28, 4);
    char msg[128];
    if (memcmp(header, MAGIC, 8) != 0) {
      err = corrupt(&in, "not an orthod checkpoint (bad magic)");
    } else if (hcrc != orthod_crc32c(0, header, 28)) {
      err = corrupt(&in, "CRC32C mismatch in the header");
    } else if (version != ORTHOD_CHECKPOINT_VERSION) {
      snprintf(msg, sizeof msg, "format version %u; this build reads version %d", version,
               ORTHOD_CHECKPOINT_VERSION);
      err = corrupt(&in, msg);
    }
  }
  for (uint32_t r = 0; r < records && err == ORTHOD_OK; r++) {
    in.record = r + 1;
    err = read_record(&in, store, block, restore, arg);
  }
  in.record = 0;
  if (err == ORTHOD_OK && fgetc(in.f) != EOF) err = corrupt(&in, "data after the last record");
  long size = ftell(in.f);
  fclose(in.f);
  free(block);
  if (err != ORTHOD_OK) {
    char detail[1024];
    snprintf(detail, sizeof detail, "%s", orthod_error_detail());
    empty_store(store);
    return orthod__fail(err, "%s", detail);
  }
  fill_info(info, path, sequence, records, size);
  return ORTHOD_OK;
}
