/* c_health.c — grpc.health.v1 through liborthod-client for test_c_client.py: Check, and Watch
 * (orthod_health_watch_*) across a daemon shutdown.
 *   before: argument errors; Check of "" and of an unknown name (NOT_FOUND); watches of "",
 *           "orthod.v1.Optimizer" and an unknown name see SERVING, SERVING and SERVICE_UNKNOWN
 *           at once; a short wait times out (ORTHOD_HEALTH_WATCH_TIMEOUT, the watch stays open);
 *           a watch with a 300 ms deadline ends with DEADLINE_EXCEEDED (and keeps saying so);
 *           watches closed while open (read or not); a watch of an unreachable daemon ends with
 *           UNAVAILABLE. Then it prints `ready` and waits.
 *   after:  the driver sends SIGTERM to the daemon: both watches of known names see NOT_SERVING,
 *           then the stream ends with UNAVAILABLE ("orthod is shutting down"), which later calls
 *           repeat; the watch of the unknown name ends the same way without NOT_SERVING.
 *
 * usage: c_health ADDR   exit 0 when every check passed. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctest_util.h"
#include "orthod/client.h"

#define UNAVAILABLE 14
#define DEADLINE_EXCEEDED 4
#define NOT_FOUND 5
#define INVALID_ARGUMENT 3
/* Longest wait for something the daemon sends at once or right after the signal (generous:
 * the program may run under valgrind on a loaded machine). */
#define WAIT_MS 60000

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* The next status of a watch that must deliver one. */
static void expect_status(orthod_health_watch_t *w, const char *what, int want) {
  int st = -1;
  int rc = orthod_health_watch_next(w, WAIT_MS, &st);
  CHECK(rc == 0 && st == want, "%s: next -> rc %d (%s) status %s, expected %s", what, rc,
        orthod_health_watch_last_error(w), orthod_health_status_name(st),
        orthod_health_status_name(want));
}

/* The end of a watch: status `code` with `text` in the message, twice (it is sticky). */
static void expect_end(orthod_health_watch_t *w, const char *what, int code, const char *text) {
  for (int k = 0; k < 2; k++) {
    int st = -1;
    int rc = orthod_health_watch_next(w, WAIT_MS, &st);
    const char *err = orthod_health_watch_last_error(w);
    CHECK(rc == code && strncmp(err, orthod_client_status_name(code),
                                strlen(orthod_client_status_name(code))) == 0 &&
              strstr(err, text) != NULL,
          "%s: end (call %d) -> rc %d '%s' status %d, expected %s with '%s'", what, k + 1, rc, err,
          st, orthod_client_status_name(code), text);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: c_health ADDR\n");
    return 2;
  }
  orthod_client_t *c = NULL, *dead = NULL;
  orthod_health_watch_t *all = NULL, *svc = NULL, *unknown = NULL, *w = NULL;
  if (orthod_client_create(argv[1], NULL, &c) != 0) {
    fprintf(stderr, "c_health: cannot create a client\n");
    return 1;
  }

  /* argument errors */
  CHECK(orthod_health_watch_open(NULL, "", 0, &w) == INVALID_ARGUMENT && w == NULL,
        "open without a client");
  CHECK(orthod_health_watch_open(c, "", -1, &w) == INVALID_ARGUMENT && w == NULL &&
            strncmp(orthod_client_last_error(c), "INVALID_ARGUMENT: ", 18) == 0,
        "open with a negative deadline: '%s'", orthod_client_last_error(c));
  CHECK(orthod_health_watch_open(c, "", 0, NULL) == INVALID_ARGUMENT, "open without out");
  int st = -1;
  CHECK(orthod_health_watch_next(NULL, 0, &st) == INVALID_ARGUMENT, "next without a watch");
  orthod_health_watch_close(NULL);
  CHECK(strcmp(orthod_health_status_name(ORTHOD_HEALTH_SERVICE_UNKNOWN), "SERVICE_UNKNOWN") == 0 &&
            strcmp(orthod_health_status_name(7), "UNKNOWN") == 0,
        "orthod_health_status_name");

  /* Check */
  CHECK(orthod_health_check(c, NULL, &st) == 0 && st == ORTHOD_HEALTH_SERVING,
        "check '': rc/status %d '%s'", st, orthod_client_last_error(c));
  CHECK(orthod_health_check(c, "orthod.v1.Optimizer", &st) == 0 && st == ORTHOD_HEALTH_SERVING,
        "check orthod.v1.Optimizer: %d '%s'", st, orthod_client_last_error(c));
  CHECK(orthod_health_check(c, "no.such.Service", &st) == NOT_FOUND &&
            strstr(orthod_client_last_error(c), "no.such.Service") != NULL,
        "check of an unknown service: '%s'", orthod_client_last_error(c));

  /* the three watches that live until the shutdown */
  CHECK(orthod_health_watch_open(c, NULL, 0, &all) == 0 &&
            orthod_health_watch_open(c, "orthod.v1.Optimizer", 0, &svc) == 0 &&
            orthod_health_watch_open(c, "no.such.Service", 0, &unknown) == 0,
        "open: '%s'", orthod_client_last_error(c));
  if (all == NULL || svc == NULL || unknown == NULL) goto out;
  CHECK(orthod_client_last_error(c)[0] == '\0', "open leaves an error: '%s'",
        orthod_client_last_error(c));
  expect_status(all, "watch ''", ORTHOD_HEALTH_SERVING);
  expect_status(svc, "watch orthod.v1.Optimizer", ORTHOD_HEALTH_SERVING);
  expect_status(unknown, "watch no.such.Service", ORTHOD_HEALTH_SERVICE_UNKNOWN);

  /* nothing changes: a short wait times out and the watch stays usable */
  double t0 = now_ms();
  int rc = orthod_health_watch_next(all, 150, &st);
  double took = now_ms() - t0;
  CHECK(rc == ORTHOD_HEALTH_WATCH_TIMEOUT && orthod_health_watch_last_error(all)[0] == '\0',
        "a quiet watch: rc %d '%s'", rc, orthod_health_watch_last_error(all));
  CHECK(took >= 140 && took < 20000, "a 150 ms wait took %.0f ms", took);
  CHECK(orthod_health_watch_next(all, 0, &st) == ORTHOD_HEALTH_WATCH_TIMEOUT, "a 0 ms wait");
  CHECK(orthod_health_watch_next(all, 0, NULL) == INVALID_ARGUMENT, "next without status");

  /* a deadline on the call: the stream ends with DEADLINE_EXCEEDED (not before the deadline) */
  t0 = now_ms();
  if (orthod_health_watch_open(c, "", 300, &w) == 0) {
    rc = orthod_health_watch_next(w, WAIT_MS, &st);
    /* the first status normally comes at once; under valgrind the deadline may pass first */
    CHECK(rc == DEADLINE_EXCEEDED || (rc == 0 && st == ORTHOD_HEALTH_SERVING),
          "deadline watch, first: rc %d status %d '%s'", rc, st, orthod_health_watch_last_error(w));
    if (rc == 0) expect_end(w, "deadline watch", DEADLINE_EXCEEDED, "");
    took = now_ms() - t0;
    CHECK(took >= 250, "a 300 ms deadline ended the watch after %.0f ms", took);
    orthod_health_watch_close(w);
    w = NULL;
  } else {
    CHECK(0, "open with a deadline: '%s'", orthod_client_last_error(c));
  }

  /* closing open watches: right after open, and after a status */
  CHECK(orthod_health_watch_open(c, "", 0, &w) == 0, "open (close unread)");
  orthod_health_watch_close(w);
  w = NULL;
  CHECK(orthod_health_watch_open(c, "", 0, &w) == 0, "open (close after a status)");
  if (w != NULL) expect_status(w, "watch closed after a status", ORTHOD_HEALTH_SERVING);
  orthod_health_watch_close(w);
  w = NULL;

  /* a daemon that cannot be reached: the stream ends with UNAVAILABLE */
  if (orthod_client_create("127.0.0.1:1", NULL, &dead) == 0 &&
      orthod_health_watch_open(dead, "", 0, &w) == 0) {
    expect_end(w, "watch of an unreachable daemon", UNAVAILABLE, "");
    orthod_health_watch_close(w);
    w = NULL;
  } else {
    CHECK(0, "client or watch for 127.0.0.1:1");
  }

  /* the other watches kept their place */
  CHECK(orthod_health_watch_next(svc, 0, &st) == ORTHOD_HEALTH_WATCH_TIMEOUT,
        "watch orthod.v1.Optimizer has something new: status %d", st);

  printf("before shutdown: %d failure(s)\nready\n", failures);
  fflush(stdout);

  /* the driver sends SIGTERM now */
  expect_status(all, "watch '' at shutdown", ORTHOD_HEALTH_NOT_SERVING);
  expect_end(all, "watch '' at shutdown", UNAVAILABLE, "orthod is shutting down");
  expect_status(svc, "watch orthod.v1.Optimizer at shutdown", ORTHOD_HEALTH_NOT_SERVING);
  expect_end(svc, "watch orthod.v1.Optimizer at shutdown", UNAVAILABLE, "orthod is shutting down");
  expect_end(unknown, "watch no.such.Service at shutdown", UNAVAILABLE, "orthod is shutting down");
  printf("after shutdown: %d failure(s) in all\n", failures);

out:
  orthod_health_watch_close(all);
  orthod_health_watch_close(svc);
  orthod_health_watch_close(unknown);
  orthod_client_destroy(dead);
  orthod_client_destroy(c);
  return failures ? 1 : 0;
}
