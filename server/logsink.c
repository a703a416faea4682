/* server/logsink.c — the daemon's log sink: every message becomes one line on stderr, as text
 * ("2026-11-25T08:38:38.123Z info  message") or as a JSON object per line, written with a single
 * write() under a mutex so that lines from the loop, the completion-queue thread and the device
 * thread never interleave. Control characters are escaped, so one message is always one line. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"

static pthread_mutex_t sink_lock = PTHREAD_MUTEX_INITIALIZER;

/* "2026-11-25T08:38:38.123Z" (ISO 8601, UTC, milliseconds). out holds at least 32 bytes. */
static size_t format_time(char *out, size_t outlen) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                   tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   (long)(ts.tv_nsec / 1000000));
  return n > 0 && (size_t)n < outlen ? (size_t)n : 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there are not one. */
static size_t utf8_len(const unsigned char *p) {
  size_t n;
  unsigned cp;
  if (p[0] < 0x80) return 1;
  if (p[0] >= 0xc2 && p[0] <= 0xdf) n = 2, cp = p[0] & 0x1fu;
  else if (p[0] >= 0xe0 && p[0] <= 0xef) n = 3, cp = p[0] & 0x0fu;
  else if (p[0] >= 0xf0 && p[0] <= 0xf4) n = 4, cp = p[0] & 0x07u;
  else return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0; /* also stops at the terminating NUL */
    cp = (cp << 6) | (p[i] & 0x3fu);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0; /* overlong, out of range, or a surrogate */
  return n;
}

/* Append s to buf[*n..cap) escaped for a JSON string (json) or for one text line: quotes and
 * backslashes (JSON only) and every control character become escapes, and bytes that are not
 * UTF-8 become U+FFFD (JSON) or \xNN (text), so a line is always valid for its format. Stops
 * before overflowing, always leaving room for the caller's closing bytes (reserve). */
static void append_escaped(char *buf, size_t *n, size_t cap, const char *s, int json,
                           size_t reserve) {
  static const char hex[] = "0123456789abcdef";
  size_t i = *n;
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    char esc[8];
    size_t el = 0;
    size_t u = *p >= 0x80 ? utf8_len(p) : 1;
    if (u > 1) {
      if (i + u + reserve > cap) break;
      memcpy(buf + i, p, u);
      i += u;
      p += u - 1;
      continue;
    }
    if (u == 0 && json) {
      memcpy(esc, "\\ufffd", 6);
      el = 6;
    } else if (u == 0) {
      esc[0] = '\\', esc[1] = 'x', esc[2] = hex[*p >> 4], esc[3] = hex[*p & 15], el = 4;
    } else if (*p == '\n') {
      esc[0] = '\\', esc[1] = 'n', el = 2;
    } else if (*p == '\t') {
      esc[0] = '\\', esc[1] = 't', el = 2;
    } else if (*p == '\r') {
      esc[0] = '\\', esc[1] = 'r', el = 2;
    } else if (json && (*p == '"' || *p == '\\')) {
      esc[0] = '\\', esc[1] = (char)*p, el = 2;
    } else if (*p < 0x20 || *p == 0x7f) {
      if (json) {
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[*p >> 4], esc[5] = hex[*p & 15], el = 6;
      } else {
        esc[0] = '\\', esc[1] = 'x', esc[2] = hex[*p >> 4], esc[3] = hex[*p & 15], el = 4;
      }
    } else {
      esc[0] = (char)*p, el = 1;
    }
    if (i + el + reserve > cap) break;
    memcpy(buf + i, esc, el);
    i += el;
  }
  *n = i;
}

static void write_all(const char *buf, size_t len) {
  while (len > 0) {
    ssize_t w = write(STDERR_FILENO, buf, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return; /* nowhere left to report it */
    }
    buf += w;
    len -= (size_t)w;
  }
}

static void sink(orthod_log_level_t level, const char *msg, void *user) {
  int json = (int)(intptr_t)user == ORTHOD_LOG_FORMAT_JSON;
  /* core formats messages into 1 KiB; escaped, that is at most 6 KiB. */
  char line[8192];
  char ts[96];
  size_t n;
  format_time(ts, sizeof ts);
  const char *lv = orthod_log_level_name(level);
  if (json) {
    n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, lv);
    append_escaped(line, &n, sizeof line, msg, 1, 3);
    memcpy(line + n, "\"}\n", 3);
    n += 3;
  } else {
    n = (size_t)snprintf(line, sizeof line, "%s %-5s ", ts, lv);
    append_escaped(line, &n, sizeof line, msg, 0, 1);
    line[n++] = '\n';
  }
  pthread_mutex_lock(&sink_lock);
  write_all(line, n);
  pthread_mutex_unlock(&sink_lock);
}

void orthod_server_log_install(orthod_log_level_t level, orthod_log_format_t format) {
  orthod_log_set_sink(sink, (void *)(intptr_t)format, level);
}
