/* server/auth.c — the token table of auth.h. */
#include "auth.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "orthod/log.h"

#define TOKEN_MIN 16
#define TOKEN_MAX 256
#define FIELD_MAX 4096
#define MAX_PREFIXES 64

struct orthod_token {
  char name[64];
  char token[TOKEN_MAX + 1];
  size_t token_len;
  orthod_access_t access;
  char prefix_text[FIELD_MAX]; /* as written: comma-separated prefixes, or "*" */
  bool every_name;             /* "*", no list, or admin */
};

struct orthod_auth {
  orthod_token_t *tokens;
  size_t n;
};

void orthod_auth_destroy(orthod_auth_t *auth) {
  if (auth == NULL) return;
  free(auth->tokens);
  free(auth);
}

size_t orthod_auth_count(const orthod_auth_t *auth) { return auth ? auth->n : 0; }

static int line_error(char *err, size_t errlen, const char *path, int line, const char *what) {
  snprintf(err, errlen, "%s:%d: %s", path, line, what);
  return -1;
}

static int parse_prefixes(orthod_token_t *t, const char *text) {
  snprintf(t->prefix_text, sizeof t->prefix_text, "%s", text[0] ? text : "*");
  t->every_name = t->access == ORTHOD_ACCESS_ADMIN || text[0] == '\0';
  size_t count = 1;
  for (const char *p = text; *p; p++) count += *p == ',';
  for (const char *p = text; *p;) { /* "*" among others still means everything */
    size_t len = strcspn(p, ",");
    if (len == 1 && *p == '*') t->every_name = true;
    p += len + (p[len] == ',');
  }
  return count > MAX_PREFIXES ? -1 : 0;
}

int orthod_auth_parse(const char *text, const char *path, orthod_auth_t **out, char *err,
                      size_t errlen) {
  *out = NULL;
  orthod_auth_t *a = calloc(1, sizeof *a);
  if (a == NULL) return snprintf(err, errlen, "out of memory"), -1;
  size_t cap = 0;
  int lineno = 0;
  const char *p = text;
  while (*p) {
    lineno++;
    const char *end = strchr(p, '\n');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char line[FIELD_MAX * 2];
    if (len >= sizeof line) {
      orthod_auth_destroy(a);
      return line_error(err, errlen, path, lineno, "line too long");
    }
    memcpy(line, p, len);
    line[len] = '\0';
    p = end ? end + 1 : p + len;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char f[5][FIELD_MAX];
    int n = sscanf(line, "%63s %4095s %4095s %4095s %4095s", f[0], f[1], f[2], f[3], f[4]);
    if (n <= 0) continue;
    const char *why = NULL;
    orthod_access_t access = 0;
    if (n < 3) why = "expected NAME TOKEN ACCESS [PREFIX,...]";
    else if (n > 4) why = "too many fields (prefixes are separated by commas, without spaces)";
    else if (strcmp(f[2], "read") == 0) access = ORTHOD_ACCESS_READ;
    else if (strcmp(f[2], "write") == 0) access = ORTHOD_ACCESS_WRITE;
    else if (strcmp(f[2], "admin") == 0) access = ORTHOD_ACCESS_ADMIN;
    else why = "ACCESS must be read, write or admin";
    size_t tlen = n >= 2 ? strlen(f[1]) : 0;
    if (why == NULL && (tlen < TOKEN_MIN || tlen > TOKEN_MAX))
      why = "the token must be 16 to 256 characters";
    for (size_t i = 0; why == NULL && i < tlen; i++)
      if (f[1][i] < 0x21 || f[1][i] > 0x7e) why = "the token has a character that is not printable";
    for (size_t i = 0; why == NULL && i < a->n; i++) {
      if (strcmp(a->tokens[i].name, f[0]) == 0) why = "this NAME is used by an earlier line";
      else if (strcmp(a->tokens[i].token, f[1]) == 0) why = "this token is on an earlier line";
    }
    if (why != NULL) {
      orthod_auth_destroy(a);
      return line_error(err, errlen, path, lineno, why);
    }
    if (a->n == cap) {
      cap = cap ? cap * 2 : 8;
      orthod_token_t *grown = realloc(a->tokens, cap * sizeof *grown);
      if (grown == NULL) {
        orthod_auth_destroy(a);
        return snprintf(err, errlen, "out of memory"), -1;
      }
      a->tokens = grown;
    }
    orthod_token_t *t = &a->tokens[a->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%.63s", f[0]); /* sscanf read at most 63 */
    memcpy(t->token, f[1], tlen + 1);
    t->token_len = tlen;
    t->access = access;
    if (parse_prefixes(t, n == 4 ? f[3] : "") != 0) {
      orthod_auth_destroy(a);
      return line_error(err, errlen, path, lineno, "more than 64 prefixes");
    }
    a->n++;
  }
  if (a->n == 0) {
    orthod_auth_destroy(a);
    return snprintf(err, errlen, "%s: no tokens (every call would be refused)", path), -1;
  }
  *out = a;
  return 0;
}

/* Equal in time independent of where they differ (lengths are not secret: all are >= 16). */
static bool same(const char *a, size_t la, const char *b, size_t lb) {
  unsigned char diff = (unsigned char)(la != lb);
  size_t n = la < lb ? la : lb;
  for (size_t i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
  return diff == 0;
}

const orthod_token_t *orthod_auth_check(const orthod_auth_t *auth, const char *authorization) {
  if (auth == NULL || authorization == NULL || strncasecmp(authorization, "bearer ", 7) != 0)
    return NULL;
  const char *tok = authorization + 7;
  while (*tok == ' ') tok++;
  size_t len = strlen(tok);
  const orthod_token_t *found = NULL;
  for (size_t i = 0; i < auth->n; i++) /* no early exit */
    if (same(auth->tokens[i].token, auth->tokens[i].token_len, tok, len) && found == NULL)
      found = &auth->tokens[i];
  return found;
}

const char *orthod_token_name(const orthod_token_t *t) { return t->name; }
orthod_access_t orthod_token_access(const orthod_token_t *t) { return t->access; }
const char *orthod_token_prefixes(const orthod_token_t *t) {
  return t->access == ORTHOD_ACCESS_ADMIN ? "*" : t->prefix_text;
}

bool orthod_token_allows(const orthod_token_t *t, const char *name, orthod_access_t need) {
  if (t == NULL || t->access < need) return false;
  if (t->every_name) return true;
  for (const char *p = t->prefix_text; *p;) {
    size_t len = strcspn(p, ",");
    /* an empty prefix (",," or a trailing comma) matches nothing rather than everything */
    if (len > 0 && strncmp(name, p, len) == 0) return true;
    p += len + (p[len] == ',');
  }
  return false;
}
