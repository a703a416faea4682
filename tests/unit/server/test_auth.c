/* test_auth.c — the token file (server/auth.h): parsing with line-numbered errors, the bearer
 * scheme, access levels and name prefixes. */
#include <CUnit/Basic.h>
#include <string.h>

#include "auth.h"
#include "testutil.h"

static const char *const good =
    "# name   token                      access  prefixes\n"
    "trainer  0123456789abcdef-trainer   write   gpt.,bert.\n"
    "\n"
    "viewer   0123456789abcdef-viewer    read    # every name\n"
    "ops      0123456789abcdef-ops       admin   gpt.\n"
    "wild     0123456789abcdef-wild      write   x.,*\n"
    "empty    0123456789abcdef-empty     write   ,,\n";

static void test_parse_and_check(void) {
  orthod_auth_t *a = NULL;
  char err[256] = "";
  CU_ASSERT_EQUAL_FATAL(orthod_auth_parse(good, "t.txt", &a, err, sizeof err), 0);
  CU_ASSERT_EQUAL(orthod_auth_count(a), 5);
  const orthod_token_t *t = orthod_auth_check(a, "Bearer 0123456789abcdef-trainer");
  CU_ASSERT_PTR_NOT_NULL_FATAL(t);
  CU_ASSERT_STRING_EQUAL(orthod_token_name(t), "trainer");
  CU_ASSERT_STRING_EQUAL(orthod_token_prefixes(t), "gpt.,bert.");
  CU_ASSERT_TRUE(orthod_token_allows(t, "gpt.h.0.w", ORTHOD_ACCESS_WRITE));
  CU_ASSERT_TRUE(orthod_token_allows(t, "bert.x", ORTHOD_ACCESS_READ));
  CU_ASSERT_FALSE(orthod_token_allows(t, "gp", ORTHOD_ACCESS_READ));
  CU_ASSERT_FALSE(orthod_token_allows(t, "other", ORTHOD_ACCESS_READ));
  CU_ASSERT_FALSE(orthod_token_allows(t, "gpt.w", ORTHOD_ACCESS_ADMIN));
  /* the scheme in any case, extra spaces; other schemes and near-misses are unknown */
  CU_ASSERT_PTR_EQUAL(orthod_auth_check(a, "bearer   0123456789abcdef-trainer"), t);
  CU_ASSERT_PTR_NULL(orthod_auth_check(a, "Basic 0123456789abcdef-trainer"));
  CU_ASSERT_PTR_NULL(orthod_auth_check(a, "Bearer 0123456789abcdef-traine"));
  CU_ASSERT_PTR_NULL(orthod_auth_check(a, "Bearer 0123456789abcdef-trainerX"));
  CU_ASSERT_PTR_NULL(orthod_auth_check(a, "Bearer "));
  CU_ASSERT_PTR_NULL(orthod_auth_check(a, NULL));
  CU_ASSERT_PTR_NULL(orthod_auth_check(NULL, "Bearer 0123456789abcdef-trainer"));

  const orthod_token_t *v = orthod_auth_check(a, "Bearer 0123456789abcdef-viewer");
  CU_ASSERT_PTR_NOT_NULL_FATAL(v);
  CU_ASSERT_TRUE(orthod_token_allows(v, "anything", ORTHOD_ACCESS_READ));
  CU_ASSERT_FALSE(orthod_token_allows(v, "anything", ORTHOD_ACCESS_WRITE));
  CU_ASSERT_STRING_EQUAL(orthod_token_prefixes(v), "*");
  const orthod_token_t *o = orthod_auth_check(a, "Bearer 0123456789abcdef-ops");
  CU_ASSERT_PTR_NOT_NULL_FATAL(o);
  CU_ASSERT_TRUE(orthod_token_allows(o, "not.gpt", ORTHOD_ACCESS_WRITE)); /* admin: every name */
  CU_ASSERT_EQUAL(orthod_token_access(o), ORTHOD_ACCESS_ADMIN);
  const orthod_token_t *w = orthod_auth_check(a, "Bearer 0123456789abcdef-wild");
  CU_ASSERT_TRUE(orthod_token_allows(w, "zzz", ORTHOD_ACCESS_WRITE)); /* "*" among others */
  const orthod_token_t *e = orthod_auth_check(a, "Bearer 0123456789abcdef-empty");
  CU_ASSERT_FALSE(orthod_token_allows(e, "zzz", ORTHOD_ACCESS_READ)); /* empty prefixes: none */
  CU_ASSERT_FALSE(orthod_token_allows(NULL, "zzz", ORTHOD_ACCESS_READ));
  orthod_auth_destroy(a);
}

static void expect_error(const char *text, const char *want) {
  orthod_auth_t *a = NULL;
  char err[256] = "";
  CU_ASSERT_EQUAL(orthod_auth_parse(text, "t.txt", &a, err, sizeof err), -1);
  CU_ASSERT_PTR_NULL(a);
  if (strcmp(err, want) != 0) fprintf(stderr, "\n  got '%s'\n  want '%s'\n", err, want);
  CU_ASSERT_STRING_EQUAL(err, want);
}

static void test_errors(void) {
  expect_error("# nothing\n\n", "t.txt: no tokens (every call would be refused)");
  expect_error("a 0123456789abcdef\n", "t.txt:1: expected NAME TOKEN ACCESS [PREFIX,...]");
  expect_error("\na 0123456789abcdef root\n", "t.txt:2: ACCESS must be read, write or admin");
  expect_error("a short write\n", "t.txt:1: the token must be 16 to 256 characters");
  expect_error("a 0123456789abcdef write x, y\n",
               "t.txt:1: too many fields (prefixes are separated by commas, without spaces)");
  expect_error("a 0123456789abcdef write\na 0123456789abcdeg read\n",
               "t.txt:2: this NAME is used by an earlier line");
  expect_error("a 0123456789abcdef write\nb 0123456789abcdef read\n",
               "t.txt:2: this token is on an earlier line");
}

int main(void) {
  static const tu_test_t tests[] = {
      {"parse and check", test_parse_and_check},
      {"errors", test_errors},
      {NULL, NULL},
  };
  return tu_run_suite("server_auth", tests);
}
