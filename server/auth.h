/* server/auth.h — bearer tokens and what each may do (--auth-tokens FILE).
 *
 * The file has one token per line, blank lines and '#' comments aside:
 *     NAME  TOKEN  ACCESS  [PREFIX,PREFIX,...]
 * NAME labels the token in logs and messages (the token itself never appears there). ACCESS is
 * `read` (Describe, List, Pull), `write` (read, and Register, Upload, Step, Drop, SetConfig) or
 * `admin` (write on every name, and Checkpoint). PREFIXes limit read and write to the parameter
 * names that start with one of them; `*` or no prefix list means every name (admin always has
 * every name). Tokens are 16 to 256 printable characters without spaces; names and tokens are
 * unique in a file.
 *
 * Calls carry `authorization: Bearer TOKEN`. The comparison takes the same time whichever byte
 * differs, and every token is compared, so timing tells nothing about the tokens. */
#ifndef ORTHOD_SERVER_AUTH_H
#define ORTHOD_SERVER_AUTH_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { ORTHOD_ACCESS_READ = 1, ORTHOD_ACCESS_WRITE = 2, ORTHOD_ACCESS_ADMIN = 3 } orthod_access_t;

typedef struct orthod_auth orthod_auth_t;
typedef struct orthod_token orthod_token_t;

/* Parse the text of a token file (path: for messages). Returns 0, or -1 with err naming the line
 * ("tokens.txt:3: ACCESS must be read, write or admin"). */
int orthod_auth_parse(const char *text, const char *path, orthod_auth_t **out, char *err,
                      size_t errlen);

void orthod_auth_destroy(orthod_auth_t *auth);
size_t orthod_auth_count(const orthod_auth_t *auth);

/* The token of an `authorization` metadata value ("Bearer TOKEN", the scheme in any case), or
 * NULL (missing, another scheme, unknown token). */
const orthod_token_t *orthod_auth_check(const orthod_auth_t *auth, const char *authorization);

const char *orthod_token_name(const orthod_token_t *t);
orthod_access_t orthod_token_access(const orthod_token_t *t);
/* May t use `name` with `need` (READ or WRITE; ADMIN only for admin tokens)? */
bool orthod_token_allows(const orthod_token_t *t, const char *name, orthod_access_t need);
/* "gpt.,bert." or "*", for messages. */
const char *orthod_token_prefixes(const orthod_token_t *t);

#endif
