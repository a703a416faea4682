/* orthod/checkpoint.h — versioned binary snapshots of a parameter store, and the directory of
 * them that a daemon keeps.
 *
 * File (all integers little-endian):
 *   header   "ORTHODCK" | u32 version (1) | u32 flags (0) | u64 sequence | u32 records |
 *            u32 CRC32C of the 28 bytes before it
 *   records  u32 "PREC" | u64 payload length | payload | u32 CRC32C of the payload
 *   payload  u16 name length, name | u8 ndim, i64 dims[ndim] | i64 step |
 *            u32 length, configuration text ("key=value\n" for every key of the engine's table,
 *            algo first) | u32 length, caller's metadata text |
 *            u32 buffers | per buffer: u16 name length, name ("weights", then the optimizer's
 *            state buffers in orthod_optim_buffer order) | u64 floats | f32 data
 * and nothing after the last record. A file is written under a temporary name, fsync'd, renamed
 * to checkpoint-<20-digit sequence>.ock and the directory fsync'd, so a crash at any point leaves
 * either the previous checkpoints or the new one complete. */
#ifndef ORTHOD_CHECKPOINT_H
#define ORTHOD_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "orthod/error.h"
#include "orthod/export.h"
#include "orthod/store.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ORTHOD_CHECKPOINT_VERSION 1
#define ORTHOD_CHECKPOINT_PATH_MAX 4096

typedef struct {
  char path[ORTHOD_CHECKPOINT_PATH_MAX]; /* the file written or read */
  uint64_t sequence;
  uint32_t parameters;
  uint64_t bytes;                        /* file size */
} orthod_checkpoint_info_t;

/* The caller's text stored with parameter `name` (the daemon's workers, sync mode, ...); NULL
 * stores "". Called once per parameter while the checkpoint is written. */
typedef const char *(*orthod_checkpoint_meta_fn)(void *arg, const char *name);

/* Called for each parameter as it is restored (weights, state and step counter in place) with
 * the metadata text saved with it. A non-OK return stops the load with that error. */
typedef orthod_err_t (*orthod_checkpoint_restore_fn)(void *arg, orthod_param_t *p,
                                                     const char *meta);

/* CRC32C (Castagnoli) of n bytes, continuing from crc (0 to start). */
ORTHOD_API uint32_t orthod_crc32c(uint32_t crc, const void *data, size_t n);

/* Write every parameter of the store to dir as checkpoint number `sequence` (durably, see
 * above), then delete all but the newest `keep` checkpoints of dir (keep >= 1). Runs on the
 * store's owner thread and reads every buffer back from the device. E_IO (the detail names the
 * file and the system's reason) leaves the older checkpoints untouched and no partial file. */
ORTHOD_API orthod_err_t orthod_checkpoint_save(orthod_store_t *store, const char *dir,
                                               uint64_t sequence, int keep,
                                               orthod_checkpoint_meta_fn meta, void *arg,
                                               orthod_checkpoint_info_t *info);

/* The newest checkpoint of dir: *path and *sequence; E_NOTFOUND when dir has none (or does not
 * exist). Temporary files that a crash left behind are removed. */
ORTHOD_API orthod_err_t orthod_checkpoint_latest(const char *dir, char *path, size_t len,
                                                 uint64_t *sequence);

/* Restore the parameters of the checkpoint at path into an empty store, verifying the header,
 * every record's CRC, the configuration and the buffer layout. On any failure the store is left
 * empty: E_CORRUPT (the detail names the file, the record and what is wrong), E_IO, or the
 * store's own errors (E_NOMEM when the memory limit is now too small). */
ORTHOD_API orthod_err_t orthod_checkpoint_load(orthod_store_t *store, const char *path,
                                               orthod_checkpoint_restore_fn restore, void *arg,
                                               orthod_checkpoint_info_t *info);

#ifdef __cplusplus
}
#endif
#endif
