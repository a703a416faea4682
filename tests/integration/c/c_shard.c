/* c_shard.c — the sharded client of liborthod-client (orthod/shard.h), driven by
 * tests/integration/test_c_shard.py.
 *
 * usage: c_shard vectors FILE.json
 *   Placement: for every name of tests/integration/shard_vectors.json ({"addresses": [...],
 *   "names": {name: shard index}}), orthod_shard_placement and orthod_sharded_shard_of must give
 *   the index in the file. Also FNV-1a, fmix64 and ring hash known answers, the consistent-hash
 *   property (a 4th address only takes names, never moves them between the first 3), the
 *   evenness of the shares over 3 local addresses, argument errors.
 *
 * usage: c_shard cluster DIR SINGLE A0 A1 ...
 *   Against real daemons: A0.. are the shards, SINGLE one more daemon. DIR/cases.txt:
 *     steps N
 *     param NAME ALGO SHAPE SHARD [KEY=VALUE ...]   (SHARD: the index placement gives)
 *     lrs NAME LR0,LR1,...                          (optional, one per step)
 *   The k-th param line's data is DIR/pK.w0.f32 and DIR/pK.grads.f32 (N gradients); the final
 *   weights go to DIR/pK.out.f32. Every parameter is registered and uploaded through the sharded
 *   client and, identically, on SINGLE; each shard's own List must hold exactly the parameters
 *   placement gives it, and so must each shard's checkpoint (orthod_sharded_checkpoint); List in
 *   pages (options.list_page_size 1, 2, 3, all, more; a prefix; sharded) equals one reply; N steps
 *   run through orthod_sharded_step (all parameters in one call, or
 *   in two calls) and on one Step stream of SINGLE, and the weights must be bit-identical after
 *   every step (the math is per parameter, so where it runs cannot change a bit). Then routed
 *   calls, errors from one shard and from several (code, shard index and address in the text),
 *   argument errors that reach no shard, an unreachable shard, recovery of a failed stream.
 *
 * Exit 0 when every check passed, 1 otherwise (each failure printed). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctest_util.h"
#include "orthod/client.h"
#include "orthod/shard.h"

#define MAX_PARAMS 32
#define MAX_OPTS 8
#define MAX_STEPS 32
#define MAX_SHARDS 8
#define DEAD_ADDRESS "127.0.0.1:1" /* nothing listens there: connections are refused */

/* ---- a JSON reader for the vectors file (objects, arrays, strings, integers) ----------------- */

typedef struct {
  const char *p, *end;
  bool bad;
} json_t;

static void ws(json_t *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

static bool eat(json_t *j, char c) {
  ws(j);
  if (j->p < j->end && *j->p == c) {
    j->p++;
    return true;
  }
  return false;
}

static void put_utf8(char *out, size_t *n, uint32_t cp) {
  if (cp < 0x80) {
    out[(*n)++] = (char)cp;
  } else if (cp < 0x800) {
    out[(*n)++] = (char)(0xC0 | (cp >> 6));
    out[(*n)++] = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out[(*n)++] = (char)(0xE0 | (cp >> 12));
    out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*n)++] = (char)(0x80 | (cp & 0x3F));
  } else {
    out[(*n)++] = (char)(0xF0 | (cp >> 18));
    out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*n)++] = (char)(0x80 | (cp & 0x3F));
  }
}

static bool hex4(json_t *j, uint32_t *v) {
  *v = 0;
  for (int i = 0; i < 4; i++) {
    if (j->p >= j->end) return false;
    char c = *j->p++;
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return false;
    *v = *v << 4 | (uint32_t)d;
  }
  return true;
}

/* A string into a new allocation (UTF-8, escapes decoded), NULL (and j->bad) if malformed. */
static char *json_string(json_t *j) {
  if (!eat(j, '"')) {
    j->bad = true;
    return NULL;
  }
  char *out = malloc((size_t)(j->end - j->p) + 1); /* decoding never makes a string longer */
  size_t n = 0;
  while (out != NULL && j->p < j->end && *j->p != '"') {
    char c = *j->p++;
    if (c != '\\') {
      out[n++] = c;
      continue;
    }
    if (j->p >= j->end) break;
    c = *j->p++;
    uint32_t cp, lo;
    switch (c) {
      case '"': case '\\': case '/': out[n++] = c; break;
      case 'b': out[n++] = '\b'; break;
      case 'f': out[n++] = '\f'; break;
      case 'n': out[n++] = '\n'; break;
      case 'r': out[n++] = '\r'; break;
      case 't': out[n++] = '\t'; break;
      case 'u':
        if (!hex4(j, &cp)) goto bad;
        if (cp >= 0xD800 && cp < 0xDC00) { /* a surrogate pair: \uD83D\uDE80 */
          if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u') goto bad;
          j->p += 2;
          if (!hex4(j, &lo) || lo < 0xDC00 || lo >= 0xE000) goto bad;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        put_utf8(out, &n, cp);
        break;
      default: goto bad;
    }
  }
  if (out == NULL || j->p >= j->end) goto bad;
  j->p++; /* the closing quote */
  out[n] = '\0';
  return out;
bad:
  free(out);
  j->bad = true;
  return NULL;
}

static long json_int(json_t *j) {
  ws(j);
  char *e;
  long v = strtol(j->p, &e, 10);
  if (e == j->p || e > j->end) j->bad = true;
  j->p = e;
  return v;
}

typedef struct {
  char *addresses[MAX_SHARDS];
  size_t n_addresses;
  char **names;
  long *shards;
  size_t n, cap;
} vectors_t;

static void vectors_free(vectors_t *v) {
  for (size_t i = 0; i < v->n_addresses; i++) free(v->addresses[i]);
  for (size_t i = 0; i < v->n; i++) free(v->names[i]);
  free(v->names);
  free(v->shards);
}

static int read_vectors(const char *path, vectors_t *v) {
  memset(v, 0, sizeof *v);
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -1;
  char *text = NULL;
  size_t len = 0;
  if (fseek(f, 0, SEEK_END) == 0) {
    long size = ftell(f);
    if (size > 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size)) != NULL)
      len = fread(text, 1, (size_t)size, f);
  }
  fclose(f);
  if (text == NULL) return -1;
  json_t j = {.p = text, .end = text + len};
  if (!eat(&j, '{')) j.bad = true;
  while (!j.bad && !eat(&j, '}')) {
    if (v->n_addresses + v->n > 0 && !eat(&j, ',')) {
      j.bad = true;
      break;
    }
    char *key = json_string(&j);
    if (key == NULL || !eat(&j, ':')) {
      free(key);
      j.bad = true;
      break;
    }
    if (strcmp(key, "addresses") == 0 && eat(&j, '[')) {
      while (!j.bad && !eat(&j, ']')) {
        if (v->n_addresses > 0 && !eat(&j, ',')) j.bad = true;
        char *a = j.bad ? NULL : json_string(&j);
        if (a != NULL && v->n_addresses < MAX_SHARDS) v->addresses[v->n_addresses++] = a;
        else {
          free(a);
          j.bad = true;
        }
      }
    } else if (strcmp(key, "names") == 0 && eat(&j, '{')) {
      bool first = true;
      while (!j.bad && !eat(&j, '}')) {
        if (!first && !eat(&j, ',')) {
          j.bad = true;
          break;
        }
        first = false;
        char *name = json_string(&j);
        if (name == NULL || !eat(&j, ':')) {
          free(name);
          j.bad = true;
          break;
        }
        long shard = json_int(&j);
        if (v->n == v->cap) {
          size_t cap = v->cap ? 2 * v->cap : 64;
          char **nn = realloc(v->names, cap * sizeof *nn);
          if (nn != NULL) v->names = nn;
          long *ns = realloc(v->shards, cap * sizeof *ns);
          if (ns != NULL) v->shards = ns;
          if (nn == NULL || ns == NULL) {
            free(name);
            j.bad = true;
            break;
          }
          v->cap = cap;
        }
        v->names[v->n] = name;
        v->shards[v->n++] = shard;
      }
    } else {
      j.bad = true;
    }
    free(key);
  }
  free(text);
  return j.bad || v->n_addresses == 0 || v->n == 0 ? -1 : 0;
}

/* ---- vectors ------------------------------------------------------------------------------- */

/* Every shard's share of 3000 transformer-style names over 3 local addresses lies in
 * [20%, 47%]. The rule gives 35.6%, 31.1% and 33.3%; FNV-1a alone (no finalizer) clusters the
 * points of each address and gives 27.8%, 8.8% and 63.4%, which fails on two shards. */
static int check_evenness(void) {
  const char *local[] = {"127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"};
  orthod_sharded_client_t *sc = NULL;
  if (orthod_sharded_create(local, 3, NULL, &sc) != 0) return 1;
  size_t count[3] = {0}, total = 0;
  char name[64];
  for (int i = 0; i < 1500; i++) {
    for (int form = 0; form < 2; form++) {
      snprintf(name, sizeof name, form == 0 ? "layers.%d.mlp.weight" : "h.%d.attn.c_attn.weight",
               i);
      size_t k = orthod_sharded_shard_of(sc, name);
      if (k < 3) count[k]++;
      total++;
    }
  }
  orthod_sharded_destroy(sc);
  int bad = 0;
  printf("evenness: %zu names over 3 local addresses:", total);
  for (size_t k = 0; k < 3; k++) {
    double share = (double)count[k] / (double)total;
    printf(" %.1f%%", 100.0 * share);
    bad += share < 0.20 || share > 0.47;
  }
  printf("\n");
  return bad;
}

static int run_vectors(const char *path) {
  vectors_t v;
  if (read_vectors(path, &v) != 0) {
    fprintf(stderr, "cannot read the vectors in %s\n", path);
    vectors_free(&v);
    return 1;
  }
  const char *const *addrs = (const char *const *)v.addresses;
  size_t na = v.n_addresses;

  /* FNV-1a 64 known answers (the FNV reference test suite) */
  CHECK(orthod_fnv1a64("", 0) == UINT64_C(0xcbf29ce484222325), "fnv1a64('')");
  CHECK(orthod_fnv1a64("a", 1) == UINT64_C(0xaf63dc4c8601ec8c), "fnv1a64('a')");
  CHECK(orthod_fnv1a64("foobar", 6) == UINT64_C(0x85944171f73967e8), "fnv1a64('foobar')");
  /* fmix64 and the ring hash fmix64(fnv1a64(s)): values from an independent Python
   * implementation of the rule */
  CHECK(orthod_fmix64(0) == 0, "fmix64(0)");
  CHECK(orthod_fmix64(1) == UINT64_C(0xb456bcfc34c2cb2c), "fmix64(1)");
  CHECK(orthod_fmix64(UINT64_MAX) == UINT64_C(0x64b5720b4b825f21), "fmix64(2^64 - 1)");
  CHECK(orthod_shard_hash("") == UINT64_C(0xefd01f60ba992926), "shard_hash('')");
  CHECK(orthod_shard_hash(NULL) == orthod_shard_hash(""), "shard_hash(NULL)");
  CHECK(orthod_shard_hash("a") == UINT64_C(0x82a2a958a9bece5b), "shard_hash('a')");
  CHECK(orthod_shard_hash("foobar") == UINT64_C(0x2c22194922d1672b), "shard_hash('foobar')");
  CHECK(orthod_shard_hash("127.0.0.1:50051#0") == UINT64_C(0x6f0e0a797aedee10),
        "shard_hash('127.0.0.1:50051#0')");

  orthod_sharded_client_t *sc = NULL;
  int rc = orthod_sharded_create(addrs, na, NULL, &sc);
  CHECK(rc == 0 && sc != NULL, "create over the vector addresses: %d", rc);
  if (sc == NULL) {
    vectors_free(&v);
    return 1;
  }
  const char *extra[MAX_SHARDS + 1];
  for (size_t i = 0; i < na; i++) extra[i] = addrs[i];
  extra[na] = "10.0.0.9:50051";
  size_t bad = 0, count[MAX_SHARDS + 1] = {0}, moved = 0;
  for (size_t k = 0; k < v.n; k++) {
    size_t want = (size_t)v.shards[k];
    size_t scan = orthod_shard_placement(addrs, na, v.names[k]);
    size_t ring = orthod_sharded_shard_of(sc, v.names[k]);
    if (scan != want || ring != want) {
      if (bad++ < 10)
        fprintf(stderr, "FAIL: '%s': placement %zu, shard_of %zu, the vectors say %zu\n",
                v.names[k], scan, ring, want);
    }
    /* consistent hashing: with one more address a name stays or goes to the new shard */
    size_t p4 = orthod_shard_placement(extra, na + 1, v.names[k]);
    CHECK(p4 == want || p4 == na, "'%s' moved from shard %zu to %zu when a shard was added",
          v.names[k], want, p4);
    if (p4 < MAX_SHARDS + 1) count[p4]++;
    moved += p4 == na;
  }
  failures += (int)bad;
  printf("vectors: %zu names, %zu mismatches; with a 4th address %zu moved to it\n", v.n, bad,
         moved);
  CHECK(moved > 0 && moved < v.n, "a 4th address took %zu of %zu names", moved, v.n);

  CHECK(check_evenness() == 0, "evenness");

  /* the accessors and the errors that need no daemon */
  CHECK(orthod_sharded_count(sc) == na, "count %zu", orthod_sharded_count(sc));
  for (size_t i = 0; i < na; i++) {
    const char *a = orthod_sharded_address(sc, i);
    CHECK(a != NULL && strcmp(a, addrs[i]) == 0, "address %zu", i);
    CHECK(orthod_sharded_shard(sc, i) != NULL, "shard client %zu", i);
  }
  CHECK(orthod_sharded_address(sc, na) == NULL && orthod_sharded_shard(sc, na) == NULL,
        "out-of-range shard");
  CHECK(orthod_sharded_shard_of(sc, NULL) == SIZE_MAX, "shard_of(NULL)");
  CHECK(orthod_shard_placement(addrs, 0, "x") == SIZE_MAX, "placement over no addresses");
  CHECK(orthod_shard_placement(NULL, 3, "x") == SIZE_MAX, "placement(NULL addresses)");
  CHECK(orthod_shard_placement(addrs, na, NULL) == SIZE_MAX, "placement(NULL name)");
  const char *one[] = {"localhost:1"};
  CHECK(orthod_shard_placement(one, 1, "anything") == 0, "one shard owns everything");
  orthod_param_info_t info;
  CHECK(orthod_sharded_describe(sc, "", &info) == 3 &&
            orthod_sharded_error_shard(sc) == SIZE_MAX &&
            strncmp(orthod_sharded_last_error(sc), "INVALID_ARGUMENT: ", 18) == 0,
        "describe(''): %s", orthod_sharded_last_error(sc));
  CHECK(orthod_sharded_step(sc, 0, NULL, 0) == 3, "step with no items");
  orthod_sharded_destroy(sc);
  orthod_sharded_destroy(NULL);

  orthod_sharded_client_t *none = (void *)&failures; /* any non-NULL value: must be reset */
  const char *dup[] = {"a:1", "b:2", "a:1"};
  CHECK(orthod_sharded_create(dup, 3, NULL, &none) == 3 && none == NULL, "duplicate address");
  none = (void *)&failures;
  CHECK(orthod_sharded_create(dup, 0, NULL, &none) == 3 && none == NULL, "no addresses");
  none = (void *)&failures;
  const char *empty[] = {"a:1", ""};
  CHECK(orthod_sharded_create(empty, 2, NULL, &none) == 3 && none == NULL, "empty address");
  vectors_free(&v);
  return failures ? 1 : 0;
}

/* ---- cluster ------------------------------------------------------------------------------- */

typedef struct {
  char name[256], algo[32];
  size_t shard; /* expected */
  orthod_param_spec_t spec;
  orthod_option_t opts[MAX_OPTS];
  char opt_text[MAX_OPTS][64];
  size_t n;                        /* elements */
  float *w0, *grads, *w_sh, *w_one;
  double lrs[MAX_STEPS];
  bool has_lrs;
} param_t;

static param_t ps[MAX_PARAMS];
static size_t np;
static int steps;

static int parse_cases(const char *dir) {
  char path[1024], line[4096];
  snprintf(path, sizeof path, "%s/cases.txt", dir);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  int err = 0;
  while (fgets(line, sizeof line, f) != NULL && err == 0) {
    char *save = NULL, *tok = strtok_r(line, CASES_DELIM, &save);
    if (tok == NULL) continue;
    if (strcmp(tok, "steps") == 0) {
      char *v = strtok_r(NULL, CASES_DELIM, &save);
      steps = v ? atoi(v) : 0;
    } else if (strcmp(tok, "param") == 0 && np < MAX_PARAMS) {
      param_t *p = &ps[np++];
      char *name = strtok_r(NULL, CASES_DELIM, &save), *algo = strtok_r(NULL, CASES_DELIM, &save);
      char *shape = strtok_r(NULL, CASES_DELIM, &save);
      char *shard = strtok_r(NULL, CASES_DELIM, &save);
      if (name == NULL || algo == NULL || shape == NULL || shard == NULL) {
        err = -1;
        break;
      }
      snprintf(p->name, sizeof p->name, "%s", name);
      snprintf(p->algo, sizeof p->algo, "%s", algo);
      p->shard = (size_t)atoi(shard);
      p->spec.name = p->name;
      p->spec.algorithm = p->algo;
      p->n = parse_shape(shape, &p->spec);
      err = parse_options(&save, &p->spec, p->opts, (char *)p->opt_text, sizeof p->opt_text[0],
                          MAX_OPTS);
    } else if (strcmp(tok, "lrs") == 0) {
      char *name = strtok_r(NULL, CASES_DELIM, &save), *list = strtok_r(NULL, CASES_DELIM, &save);
      for (size_t i = 0; name != NULL && list != NULL && i < np; i++) {
        if (strcmp(ps[i].name, name) != 0) continue;
        ps[i].has_lrs = true;
        parse_lrs(list, ps[i].lrs, MAX_STEPS);
      }
    }
  }
  fclose(f);
  if (err != 0 || np == 0 || steps <= 0 || steps > MAX_STEPS) return -1;
  for (size_t k = 0; k < np; k++) {
    ps[k].w0 = read_f32(ps[k].n, "%s/p%zu.w0.f32", dir, k);
    ps[k].grads = read_f32((size_t)steps * ps[k].n, "%s/p%zu.grads.f32", dir, k);
    ps[k].w_sh = calloc(ps[k].n, sizeof(float));
    ps[k].w_one = calloc(ps[k].n, sizeof(float));
    if (!ps[k].w0 || !ps[k].grads || !ps[k].w_sh || !ps[k].w_one) return -1;
  }
  return 0;
}

static void free_params(void) {
  for (size_t k = 0; k < np; k++) {
    free(ps[k].w0);
    free(ps[k].grads);
    free(ps[k].w_sh);
    free(ps[k].w_one);
  }
}

static orthod_step_item_t item_of(size_t k, int s, float *weights) {
  return (orthod_step_item_t){.name = ps[k].name, .step = (uint64_t)s,
                              .grad = ps[k].grads + (size_t)s * ps[k].n,
                              .grad_dtype = ORTHOD_CLIENT_F32, .elements = ps[k].n,
                              .has_lr = ps[k].has_lrs, .lr = ps[k].has_lrs ? ps[k].lrs[s] : 0.0,
                              .weights = weights, .weights_dtype = ORTHOD_CLIENT_F32};
}

/* `name` appears in `list` (and how often). */
static int listed(const orthod_param_list_t *list, const char *name) {
  int c = 0;
  for (size_t i = 0; i < list->n; i++) c += strcmp(list->params[i].name, name) == 0;
  return c;
}

/* Two lists hold the same infos in the same order (what the daemon reports, option by option). */
static bool same_list(const orthod_param_list_t *a, const orthod_param_list_t *b) {
  if (a->n != b->n || a->device_bytes_used != b->device_bytes_used ||
      a->device_bytes_limit != b->device_bytes_limit)
    return false;
  for (size_t i = 0; i < a->n; i++) {
    const orthod_param_info_t *x = &a->params[i], *y = &b->params[i];
    if (strcmp(x->name, y->name) != 0 || strcmp(x->algorithm, y->algorithm) != 0 ||
        x->ndim != y->ndim || x->step != y->step || x->elements != y->elements ||
        x->device_bytes != y->device_bytes || x->n_options != y->n_options)
      return false;
    for (int d = 0; d < x->ndim; d++)
      if (x->shape[d] != y->shape[d]) return false;
    for (size_t k = 0; k < x->n_options; k++)
      if (strcmp(x->options[k].key, y->options[k].key) != 0 ||
          strcmp(x->options[k].value, y->options[k].value) != 0)
        return false;
  }
  return true;
}

/* orthod_list on a client whose options.list_page_size is `page_size`. */
static int list_paged(const char *address, const orthod_client_options_t *base, unsigned page_size,
                      const char *prefix, orthod_param_list_t *list) {
  orthod_client_options_t o = *base;
  o.list_page_size = page_size;
  orthod_client_t *c = NULL;
  int rc = orthod_client_create(address, &o, &c);
  if (rc == 0) rc = orthod_list(c, prefix, list);
  CHECK(rc == 0, "list in pages of %u: %s", page_size,
        c ? orthod_client_last_error(c) : orthod_client_create_error());
  orthod_client_destroy(c);
  return rc;
}

/* Paging is invisible: orthod_list in pages of any size (1, 2, 3, all of them, more) gives what
 * one reply (list_page_size 0) gives, with a prefix too; so does orthod_sharded_list in pages of
 * 2 on every shard. */
static void check_list_paging(const char *single, orthod_sharded_client_t *sc,
                              const char *const *addrs, size_t n,
                              const orthod_client_options_t *base) {
  orthod_param_list_t whole, paged;
  if (list_paged(single, base, 0, "", &whole) != 0) return;
  CHECK(whole.n == np, "one reply lists %zu parameters, expected %zu", whole.n, np);
  const unsigned sizes[] = {1, 2, 3, (unsigned)np, (unsigned)np + 1};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    if (list_paged(single, base, sizes[k], "", &paged) != 0) continue;
    CHECK(same_list(&whole, &paged), "pages of %u: %zu parameters differ from one reply's %zu",
          sizes[k], paged.n, whole.n);
    orthod_param_list_clear(&paged);
  }
  /* a prefix: the part of ps[0]'s name up to its second '.' ("layers.3.") */
  char prefix[ORTHOD_CLIENT_NAME_MAX + 1];
  snprintf(prefix, sizeof prefix, "%s", ps[0].name);
  char *dot = strchr(prefix, '.');
  dot = dot ? strchr(dot + 1, '.') : NULL;
  if (dot != NULL) dot[1] = '\0';
  size_t want = 0;
  for (size_t k = 0; k < np; k++) want += strncmp(ps[k].name, prefix, strlen(prefix)) == 0;
  orthod_param_list_t part;
  if (list_paged(single, base, 0, prefix, &part) == 0) {
    CHECK(part.n == want && want >= 1, "prefix '%s': %zu parameters, expected %zu", prefix,
          part.n, want);
    if (list_paged(single, base, 1, prefix, &paged) == 0) {
      CHECK(same_list(&part, &paged), "prefix '%s' in pages of 1: %zu parameters, expected %zu",
            prefix, paged.n, part.n);
      orthod_param_list_clear(&paged);
    }
    orthod_param_list_clear(&part);
  }
  orthod_param_list_clear(&whole);

  /* the sharded list pages on every shard */
  orthod_client_options_t o = *base;
  o.list_page_size = 2;
  orthod_sharded_client_t *sc2 = NULL;
  int rc = orthod_sharded_create(addrs, n, &o, &sc2);
  CHECK(rc == 0, "sharded create: %s", orthod_client_create_error());
  if (rc == 0 && orthod_sharded_list(sc, NULL, &whole) == 0) {
    rc = orthod_sharded_list(sc2, NULL, &paged);
    CHECK(rc == 0, "sharded list in pages of 2: %s", orthod_sharded_last_error(sc2));
    CHECK(rc != 0 || same_list(&whole, &paged), "sharded list in pages of 2: %zu parameters, "
          "in pages of %u: %zu", paged.n, base->list_page_size, whole.n);
    orthod_param_list_clear(&paged);
    orthod_param_list_clear(&whole);
  }
  orthod_sharded_destroy(sc2);
}

/* A name that is registered nowhere and that placement puts on `shard`. */
static void ghost_on(orthod_sharded_client_t *sc, size_t shard, char *buf, size_t len) {
  for (unsigned i = 0;; i++) {
    snprintf(buf, len, "ghost.%u", i);
    if (orthod_sharded_shard_of(sc, buf) == shard) return;
  }
}

/* The sharded client's error says: code, "shard i (address)". */
static void check_shard_error(orthod_sharded_client_t *sc, int rc, int want, size_t shard,
                              const char *what) {
  const char *e = orthod_sharded_last_error(sc);
  char head[512];
  snprintf(head, sizeof head, "%s: shard %zu (%s): ", orthod_client_status_name(want), shard,
           orthod_sharded_address(sc, shard));
  CHECK(rc == want, "%s: status %d (%s), expected %d", what, rc, e, want);
  CHECK(strncmp(e, head, strlen(head)) == 0, "%s: error text '%s' does not start with '%s'", what,
        e, head);
  CHECK(orthod_sharded_error_shard(sc) == shard, "%s: error_shard %zu, expected %zu", what,
        orthod_sharded_error_shard(sc), shard);
}

static void unreachable_shard(const char *live) {
  const char *addrs[] = {live, DEAD_ADDRESS};
  orthod_client_options_t o;
  orthod_client_options_init(&o);
  o.deadline_ms = 5000;
  orthod_sharded_client_t *sc = NULL;
  if (orthod_sharded_create(addrs, 2, &o, &sc) != 0) {
    CHECK(false, "create with an unreachable shard");
    return;
  }
  int serving[2] = {-1, -1};
  int rc = orthod_sharded_health(sc, NULL, serving);
  check_shard_error(sc, rc, 14, 1, "health with shard 1 down");
  CHECK(serving[0] == 1 && serving[1] == 0, "serving %d %d", serving[0], serving[1]);
  orthod_param_list_t list;
  rc = orthod_sharded_list(sc, NULL, &list);
  check_shard_error(sc, rc, 14, 1, "list with shard 1 down");
  CHECK(list.n == 0 && list.params == NULL, "failed list is empty");
  orthod_client_checkpoint_info_t ck[2];
  rc = orthod_sharded_checkpoint(sc, ck);
  check_shard_error(sc, rc, 14, 1, "checkpoint with shard 1 down");
  CHECK(ck[0].sequence >= 1 && ck[1].sequence == 0 && ck[1].path[0] == '\0',
        "checkpoint infos with shard 1 down: %" PRIu64 " %" PRIu64, ck[0].sequence,
        ck[1].sequence);
  char name[64];
  ghost_on(sc, 1, name, sizeof name);
  orthod_param_info_t info;
  rc = orthod_sharded_describe(sc, name, &info);
  check_shard_error(sc, rc, 14, 1, "describe on the down shard");
  ghost_on(sc, 0, name, sizeof name);
  rc = orthod_sharded_describe(sc, name, &info);
  check_shard_error(sc, rc, 5, 0, "describe on the live shard"); /* NOT_FOUND from a daemon */
  orthod_sharded_destroy(sc);
}

static int run_cluster(const char *dir, const char *single, const char *const *addrs, size_t n) {
  if (parse_cases(dir) != 0) {
    fprintf(stderr, "cannot read %s/cases.txt and its data\n", dir);
    free_params();
    return 1;
  }
  orthod_client_options_t o;
  orthod_client_options_init(&o);
  o.deadline_ms = 60000;
  o.chunk_bytes = 1024; /* every tensor here travels in several chunks */
  orthod_sharded_client_t *sc = NULL;
  orthod_client_t *one = NULL, *own[MAX_SHARDS] = {0};
  orthod_step_stream_t *stream = NULL;
  int rc = orthod_sharded_create(addrs, n, &o, &sc);
  CHECK(rc == 0, "sharded create: %d", rc);
  rc = rc ? rc : orthod_client_create(single, &o, &one);
  for (size_t i = 0; rc == 0 && i < n; i++) rc = orthod_client_create(addrs[i], &o, &own[i]);
  rc = rc ? rc : orthod_step_open(one, &stream);
  CHECK(rc == 0, "clients: %d", rc);
  if (rc != 0) goto done;

  /* placement: as the driver computed it (an independent Python implementation) */
  size_t per_shard[MAX_SHARDS] = {0};
  for (size_t k = 0; k < np; k++) {
    CHECK(orthod_sharded_shard_of(sc, ps[k].name) == ps[k].shard &&
              orthod_shard_placement(addrs, n, ps[k].name) == ps[k].shard,
          "'%s': shard_of %zu, expected %zu", ps[k].name, orthod_sharded_shard_of(sc, ps[k].name),
          ps[k].shard);
    per_shard[ps[k].shard < n ? ps[k].shard : 0]++;
  }

  int serving[MAX_SHARDS];
  rc = orthod_sharded_health(sc, "", serving);
  CHECK(rc == 0, "health: %s", orthod_sharded_last_error(sc));
  for (size_t i = 0; i < n; i++) CHECK(serving[i] == 1, "shard %zu serving %d", i, serving[i]);

  /* register: through the sharded client, the same spec on the single daemon */
  for (size_t k = 0; k < np; k++) {
    orthod_param_info_t info;
    bool created = false;
    rc = orthod_sharded_register(sc, &ps[k].spec, &info, &created);
    CHECK(rc == 0 && created, "register '%s': %s", ps[k].name, orthod_sharded_last_error(sc));
    CHECK(rc != 0 || (strcmp(info.name, ps[k].name) == 0 && info.elements == ps[k].n),
          "register '%s': info", ps[k].name);
    orthod_param_info_clear(&info);
    rc = orthod_sharded_register(sc, &ps[k].spec, NULL, &created);
    CHECK(rc == 0 && !created, "re-register '%s' (idempotent): %s", ps[k].name,
          orthod_sharded_last_error(sc));
    rc = orthod_register(one, &ps[k].spec, NULL, NULL);
    CHECK(rc == 0, "register '%s' on the single daemon: %s", ps[k].name,
          orthod_client_last_error(one));
  }

  /* upload: one call, every shard in parallel; infos come back in the tensors' order */
  orthod_tensor_t up[MAX_PARAMS];
  orthod_param_info_t infos[MAX_PARAMS];
  for (size_t k = 0; k < np; k++)
    up[k] = (orthod_tensor_t){.name = ps[k].name, .data = ps[k].w0, .dtype = ORTHOD_CLIENT_F32,
                              .elements = ps[k].n};
  size_t n_infos = 0;
  rc = orthod_sharded_upload(sc, up, np, ORTHOD_CLIENT_DEFAULT, infos, &n_infos);
  CHECK(rc == 0 && n_infos == np, "sharded upload: %s (%zu infos)", orthod_sharded_last_error(sc),
        n_infos);
  for (size_t k = 0; k < np; k++) {
    CHECK(rc != 0 || (infos[k].name && strcmp(infos[k].name, ps[k].name) == 0),
          "upload info %zu is '%s', expected '%s'", k, infos[k].name ? infos[k].name : "(none)",
          ps[k].name);
    orthod_param_info_clear(&infos[k]);
  }
  rc = orthod_upload(one, up, np, ORTHOD_CLIENT_DEFAULT, NULL, NULL);
  CHECK(rc == 0, "single upload: %s", orthod_client_last_error(one));

  /* every daemon's own List holds exactly the parameters placement gives it */
  uint64_t used = 0;
  for (size_t i = 0; i < n; i++) {
    orthod_param_list_t list;
    rc = orthod_list(own[i], "", &list);
    CHECK(rc == 0, "list on shard %zu: %s", i, orthod_client_last_error(own[i]));
    CHECK(list.n == per_shard[i], "shard %zu lists %zu parameters, placement gives it %zu", i,
          list.n, per_shard[i]);
    for (size_t k = 0; k < np; k++)
      CHECK(listed(&list, ps[k].name) == (ps[k].shard == i),
            "'%s' %s on shard %zu (placement: shard %zu)", ps[k].name,
            listed(&list, ps[k].name) ? "is" : "is not", i, ps[k].shard);
    used += list.device_bytes_used;
    orthod_param_list_clear(&list);
  }
  printf("cluster: %zu parameters over %zu shards:", np, n);
  for (size_t i = 0; i < n; i++) printf(" %zu", per_shard[i]);
  printf("\n");

  /* the merged list */
  orthod_param_list_t all;
  rc = orthod_sharded_list(sc, NULL, &all);
  CHECK(rc == 0 && all.n == np, "sharded list: %s (%zu)", orthod_sharded_last_error(sc), all.n);
  for (size_t i = 1; rc == 0 && i < all.n; i++)
    CHECK(strcmp(all.params[i - 1].name, all.params[i].name) < 0, "merged list order at %zu", i);
  for (size_t k = 0; rc == 0 && k < np; k++) CHECK(listed(&all, ps[k].name) == 1, "merged list");
  CHECK(all.device_bytes_used == used, "merged device bytes %" PRIu64 " != %" PRIu64,
        all.device_bytes_used, used);
  orthod_param_list_clear(&all);
  check_list_paging(single, sc, addrs, n, &o);

  /* a checkpoint on every shard: each holds exactly the parameters placed on it */
  orthod_client_checkpoint_info_t ck[MAX_SHARDS];
  rc = orthod_sharded_checkpoint(sc, ck);
  CHECK(rc == 0, "sharded checkpoint: %s", orthod_sharded_last_error(sc));
  for (size_t i = 0; rc == 0 && i < n; i++)
    CHECK(ck[i].parameters == per_shard[i] && ck[i].sequence >= 1 && ck[i].bytes > 0 &&
              strstr(ck[i].path, "/checkpoint-") != NULL,
          "checkpoint of shard %zu: %" PRIu32 " parameters (placed: %zu), sequence %" PRIu64
          ", %" PRIu64 " bytes, '%s'", i, ck[i].parameters, per_shard[i], ck[i].sequence,
          ck[i].bytes, ck[i].path);
  CHECK(orthod_sharded_checkpoint(sc, NULL) == 0, "sharded checkpoint without infos: %s",
        orthod_sharded_last_error(sc));

  /* the steps: sharded (odd steps split into two calls) vs one Step stream on SINGLE */
  orthod_step_item_t items[MAX_PARAMS], ref[MAX_PARAMS];
  for (int s = 0; s < steps; s++) {
    for (size_t k = 0; k < np; k++) {
      items[k] = item_of(k, s, ps[k].w_sh);
      ref[k] = item_of(k, s, ps[k].w_one);
    }
    if (s % 2 == 0) {
      rc = orthod_sharded_step(sc, 0, items, np);
      CHECK(rc == 0, "sharded step %d: %s", s, orthod_sharded_last_error(sc));
    } else {
      size_t half = np / 2;
      rc = orthod_sharded_step(sc, 0, items, half);
      CHECK(rc == 0, "sharded step %d (first half): %s", s, orthod_sharded_last_error(sc));
      rc = orthod_sharded_step(sc, 0, items + half, np - half);
      CHECK(rc == 0, "sharded step %d (second half): %s", s, orthod_sharded_last_error(sc));
    }
    rc = orthod_step(stream, 0, ref, np);
    CHECK(rc == 0, "single step %d: %s", s, orthod_step_last_error(stream));
    for (size_t k = 0; k < np; k++) {
      CHECK(items[k].new_step == (uint64_t)s + 1 && ref[k].new_step == (uint64_t)s + 1,
            "step %d '%s': new_step %" PRIu64 " / %" PRIu64, s, ps[k].name, items[k].new_step,
            ref[k].new_step);
      CHECK(memcmp(ps[k].w_sh, ps[k].w_one, ps[k].n * sizeof(float)) == 0,
            "step %d '%s': sharded weights differ from the single daemon's", s, ps[k].name);
    }
  }

  /* pull through the sharded client: the weights the steps returned, the counters */
  orthod_tensor_t pulled[MAX_PARAMS];
  float *buf[MAX_PARAMS] = {0};
  for (size_t k = 0; k < np; k++) {
    buf[k] = calloc(ps[k].n, sizeof(float));
    pulled[k] = (orthod_tensor_t){.name = ps[k].name, .data = buf[k], .dtype = ORTHOD_CLIENT_F32,
                                  .elements = ps[k].n};
  }
  rc = orthod_sharded_pull(sc, pulled, np, ORTHOD_CLIENT_DEFAULT);
  CHECK(rc == 0, "sharded pull: %s", orthod_sharded_last_error(sc));
  for (size_t k = 0; k < np; k++) {
    CHECK(rc != 0 || (pulled[k].step == (uint64_t)steps && buf[k] != NULL &&
                      memcmp(buf[k], ps[k].w_sh, ps[k].n * sizeof(float)) == 0),
          "pull '%s': step %" PRIu64 " or weights differ", ps[k].name, pulled[k].step);
    CHECK(write_f32(ps[k].w_sh, ps[k].n, "%s/p%zu.out.f32", dir, k) == 0, "write p%zu.out.f32",
          k);
    printf("%s shard=%zu step=%" PRIu64 "\n", ps[k].name, ps[k].shard, items[k].new_step);
  }
  for (size_t k = 0; k < np; k++) free(buf[k]);

  /* routed calls: set_config and describe land on the owner */
  {
    orthod_option_t lr = {"lr", "0.0125"};
    orthod_param_info_t info;
    rc = orthod_sharded_set_config(sc, ps[0].name, &lr, 1, &info);
    CHECK(rc == 0, "set_config: %s", orthod_sharded_last_error(sc));
    CHECK(rc != 0 || strtod(orthod_param_info_option(&info, "lr"), NULL) == 0.0125,
          "set_config result lr");
    orthod_param_info_clear(&info);
    rc = orthod_describe(own[ps[0].shard], ps[0].name, &info);
    const char *v = rc == 0 ? orthod_param_info_option(&info, "lr") : NULL;
    CHECK(v != NULL && strtod(v, NULL) == 0.0125, "lr on the owning daemon: %s", v ? v : "none");
    orthod_param_info_clear(&info);
    rc = orthod_sharded_describe(sc, ps[1].name, &info);
    CHECK(rc == 0 && info.step == (uint64_t)steps, "describe '%s': %s", ps[1].name,
          orthod_sharded_last_error(sc));
    orthod_param_info_clear(&info);
  }

  /* errors from one shard name it, with the daemon's code and message */
  {
    char ghost[64];
    ghost_on(sc, n - 1, ghost, sizeof ghost);
    orthod_param_info_t info;
    rc = orthod_sharded_describe(sc, ghost, &info);
    check_shard_error(sc, rc, 5, n - 1, "describe unknown");
    CHECK(strstr(orthod_sharded_last_error(sc), ghost) != NULL, "the message names '%s': %s",
          ghost, orthod_sharded_last_error(sc));
    orthod_param_spec_t other = ps[0].spec;
    other.shape[0] += 1;
    rc = orthod_sharded_register(sc, &other, NULL, NULL);
    check_shard_error(sc, rc, 6, ps[0].shard, "conflicting register");
    rc = orthod_sharded_drop(sc, ghost, NULL);
    check_shard_error(sc, rc, 5, n - 1, "drop unknown");

    /* argument errors reach no shard: nothing steps */
    for (size_t k = 0; k < np; k++) {
      items[k] = item_of(k, 0, ps[k].w_sh);
      items[k].step = (uint64_t)steps; /* the current counters; any gradient will do */
    }
    items[np - 1].name = items[0].name;
    rc = orthod_sharded_step(sc, 0, items, np);
    CHECK(rc == 3 && orthod_sharded_error_shard(sc) == SIZE_MAX &&
              strstr(orthod_sharded_last_error(sc), "twice") != NULL,
          "duplicate item: %d %s", rc, orthod_sharded_last_error(sc));
    for (size_t k = 0; k < np; k++) CHECK(items[k].new_step == 0, "duplicate item: stepped");
    for (size_t i = 0; i < n; i++) {
      orthod_param_list_t list;
      rc = orthod_list(own[i], "", &list);
      for (size_t x = 0; rc == 0 && x < list.n; x++)
        CHECK(list.params[x].step == (uint64_t)steps, "'%s' stepped by a rejected call",
              list.params[x].name);
      orthod_param_list_clear(&list);
    }

    /* an unknown parameter in a multi-shard step: that shard fails, the others step */
    size_t g = ps[0].shard;
    ghost_on(sc, g, ghost, sizeof ghost);
    items[np - 1].name = ps[np - 1].name;
    orthod_step_item_t with_ghost[MAX_PARAMS + 1];
    memcpy(with_ghost, items, np * sizeof *items);
    with_ghost[np] = items[0];
    with_ghost[np].name = ghost;
    rc = orthod_sharded_step(sc, 0, with_ghost, np + 1);
    check_shard_error(sc, rc, 5, g, "step with an unknown parameter");
    CHECK(strchr(orthod_sharded_last_error(sc), ';') == NULL, "one shard failed: '%s'",
          orthod_sharded_last_error(sc));
    printf("one shard fails: %s\n", orthod_sharded_last_error(sc));
    for (size_t k = 0; k < np; k++) {
      if (ps[k].shard != g)
        CHECK(with_ghost[k].new_step == (uint64_t)steps + 1, "'%s' on shard %zu: new_step %" PRIu64,
              ps[k].name, ps[k].shard, with_ghost[k].new_step);
    }
    CHECK(with_ghost[np].new_step == 0, "ghost new_step");

    /* the failed shard's stream is reopened by the next step: step everything once more */
    for (size_t k = 0; k < np; k++) {
      orthod_param_info_t d;
      rc = orthod_sharded_describe(sc, ps[k].name, &d);
      CHECK(rc == 0, "describe '%s': %s", ps[k].name, orthod_sharded_last_error(sc));
      items[k].step = d.step;
      orthod_param_info_clear(&d);
    }
    rc = orthod_sharded_step(sc, 0, items, np);
    CHECK(rc == 0, "step after a failure: %s", orthod_sharded_last_error(sc));
    for (size_t k = 0; k < np; k++)
      CHECK(items[k].new_step == items[k].step + 1,
            "'%s' after the failure: %" PRIu64 " -> %" PRIu64, ps[k].name, items[k].step,
            items[k].new_step);

    /* two shards fail: the lowest index is the status, the other is appended */
    if (n >= 2) {
      char g0[64], g1[64];
      ghost_on(sc, 0, g0, sizeof g0);
      ghost_on(sc, n - 1, g1, sizeof g1);
      orthod_step_item_t two[2] = {items[0], items[0]};
      two[0].name = g1; /* order of the items does not matter */
      two[1].name = g0;
      rc = orthod_sharded_step(sc, 0, two, 2);
      check_shard_error(sc, rc, 5, 0, "two shards fail");
      char also[512];
      snprintf(also, sizeof also, "; shard %zu (%s): NOT_FOUND: ", n - 1, addrs[n - 1]);
      CHECK(strstr(orthod_sharded_last_error(sc), also) != NULL, "'%s' lacks '%s'",
            orthod_sharded_last_error(sc), also);
      printf("two shards fail: %s\n", orthod_sharded_last_error(sc));
    }
  }

  /* drop: routed; the merged list shrinks */
  {
    uint64_t at = 0;
    rc = orthod_sharded_drop(sc, ps[np - 1].name, &at);
    CHECK(rc == 0 && at == items[np - 1].new_step,
          "drop: %s (step %" PRIu64 ", expected %" PRIu64 ")", orthod_sharded_last_error(sc), at,
          items[np - 1].new_step);
    orthod_param_list_t list;
    rc = orthod_sharded_list(sc, NULL, &list);
    CHECK(rc == 0 && list.n == np - 1 && listed(&list, ps[np - 1].name) == 0, "list after drop");
    orthod_param_list_clear(&list);
  }

  rc = orthod_sharded_step_finish(sc);
  CHECK(rc == 0, "step_finish: %s", orthod_sharded_last_error(sc));
  rc = orthod_step_finish(stream);
  CHECK(rc == 0, "single step_finish: %s", orthod_step_last_error(stream));

  unreachable_shard(addrs[0]);

done:
  orthod_step_destroy(stream);
  orthod_client_destroy(one);
  for (size_t i = 0; i < n; i++) orthod_client_destroy(own[i]);
  orthod_sharded_destroy(sc);
  free_params();
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "vectors") == 0) return run_vectors(argv[2]);
  if (argc >= 5 && argc - 4 <= MAX_SHARDS && strcmp(argv[1], "cluster") == 0)
    return run_cluster(argv[2], argv[3], (const char *const *)(argv + 4), (size_t)argc - 4);
  fprintf(stderr, "usage: c_shard vectors FILE.json | c_shard cluster DIR SINGLE A0 A1 ...\n");
  return 2;
}
