/* orthod/shard.h — one client over several orthod daemons: parameters are spread over the
 * daemons ("shards") by consistent hashing of their names, calls are routed by name, and a
 * training step talks to every shard involved in parallel (one thread and one persistent Step
 * stream per shard).
 *
 * Placement (the same in every orthod client library, so processes in any language agree): a
 * string's position on the ring is ring_hash(s) = fmix64(fnv1a64(UTF-8 bytes of s)), FNV-1a
 * 64-bit followed by the MurmurHash3 64-bit finalizer (FNV-1a of keys that differ only in their
 * last bytes differs mostly in its low bits; the finalizer spreads the points of one address
 * over the whole ring). Each shard address a_i (the string exactly as given) puts 64 points on
 * a ring, at ring_hash(a_i + "#" + k) for k = 0..63 in decimal. A name n belongs to the owner
 * of the first point >= ring_hash(n), wrapping round to the smallest point; on equal points the
 * lower shard index wins. Adding a shard moves only names onto it, removing one moves only its
 * own names; which address owns a name depends on the order of the addresses only for equal
 * points.
 *
 * Status codes and last-error text follow orthod/client.h; an error from a shard names it:
 * "UNAVAILABLE: shard 2 (10.0.0.3:50051): failed to connect to all addresses". Calls that reach
 * several shards reach all of them and return the status of the lowest failing shard index; the
 * text starts with that shard's error and appends the others ("; shard 3 (...): CODE: ...").
 * orthod_sharded_error_shard tells which shard the status came from.
 *
 * Threads: a sharded client is used by one thread at a time (it starts and joins its own
 * threads inside a call; no callback runs on them). */
#ifndef ORTHOD_SHARD_H
#define ORTHOD_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ORTHOD_SHARD_REPLICAS 64 /* ring points per shard address */

typedef struct orthod_sharded_client orthod_sharded_client_t;

/* ---- placement (pure functions) ------------------------------------------------------------ */

/* FNV-1a 64-bit hash of len bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3). */
ORTHOD_CLIENT_API uint64_t orthod_fnv1a64(const void *data, size_t len);

/* The MurmurHash3 64-bit finalizer: h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33;
 * h *= 0xc4ceb9fe1a85ec53; h ^= h >> 33. */
ORTHOD_CLIENT_API uint64_t orthod_fmix64(uint64_t h);

/* A string's position on the ring: orthod_fmix64(orthod_fnv1a64(s, strlen(s))); NULL hashes
 * as "". */
ORTHOD_CLIENT_API uint64_t orthod_shard_hash(const char *s);

/* The shard index (0..n-1) that owns parameter `name` among the n addresses, by the rule above;
 * SIZE_MAX when n is 0 or an argument (or address) is NULL. Allocates nothing. */
ORTHOD_CLIENT_API size_t orthod_shard_placement(const char *const *addresses, size_t n,
                                                const char *name);

/* ---- the sharded client ------------------------------------------------------------------- */

/* Create a client for n >= 1 distinct daemon addresses (copied), one orthod_client_t per shard,
 * all with `opts` (NULL: defaults). The same address twice is INVALID_ARGUMENT (it would own
 * identical ring points and one of the two would never get a parameter). Connections happen
 * lazily, so a daemon that is down fails only the calls that reach it. On success *out owns the
 * client; on failure *out is NULL and orthod_client_create_error says why ("INVALID_ARGUMENT:
 * shard 0 (10.0.0.1:50051): cannot read tls_ca_file ..."). */
ORTHOD_CLIENT_API int orthod_sharded_create(const char *const *addresses, size_t n,
                                            const orthod_client_options_t *opts,
                                            orthod_sharded_client_t **out);

/* Cancel open Step streams, close every channel and free (NULL is a no-op). */
ORTHOD_CLIENT_API void orthod_sharded_destroy(orthod_sharded_client_t *sc);

/* The last error ("" after a success); valid until the next call on sc. */
ORTHOD_CLIENT_API const char *orthod_sharded_last_error(const orthod_sharded_client_t *sc);

/* The shard index whose failure the last call returned; SIZE_MAX after a success or an error
 * found before any shard was called (bad arguments, memory). */
ORTHOD_CLIENT_API size_t orthod_sharded_error_shard(const orthod_sharded_client_t *sc);

/* Number of shards, the address of shard i (NULL if out of range), and the shard's own client
 * (borrowed, owned by sc; NULL if out of range) for calls aimed at one daemon. */
ORTHOD_CLIENT_API size_t orthod_sharded_count(const orthod_sharded_client_t *sc);
ORTHOD_CLIENT_API const char *orthod_sharded_address(const orthod_sharded_client_t *sc, size_t i);
ORTHOD_CLIENT_API orthod_client_t *orthod_sharded_shard(orthod_sharded_client_t *sc, size_t i);

/* The shard index of `name` (orthod_shard_placement over sc's addresses, from a prebuilt ring);
 * SIZE_MAX for a NULL name. */
ORTHOD_CLIENT_API size_t orthod_sharded_shard_of(const orthod_sharded_client_t *sc,
                                                 const char *name);

/* ---- calls routed by name (same arguments and results as the orthod_* call they name) ------ */

ORTHOD_CLIENT_API int orthod_sharded_register(orthod_sharded_client_t *sc,
                                              const orthod_param_spec_t *spec,
                                              orthod_param_info_t *info, bool *created);
ORTHOD_CLIENT_API int orthod_sharded_describe(orthod_sharded_client_t *sc, const char *name,
                                              orthod_param_info_t *info);
ORTHOD_CLIENT_API int orthod_sharded_drop(orthod_sharded_client_t *sc, const char *name,
                                          uint64_t *step);
ORTHOD_CLIENT_API int orthod_sharded_set_config(orthod_sharded_client_t *sc, const char *name,
                                                const orthod_option_t *options, size_t n_options,
                                                orthod_param_info_t *info);

/* Upload n tensors: one Upload call per shard involved, the shards in parallel. Each call is
 * all-or-nothing on its daemon, the whole is not (a failed shard leaves the others written).
 * infos (may be NULL) has n entries: infos[i] describes tensors[i] (zeroed where a shard did
 * not answer); n_infos (may be NULL) receives how many were filled. */
ORTHOD_CLIENT_API int orthod_sharded_upload(orthod_sharded_client_t *sc,
                                            const orthod_tensor_t *tensors, size_t n,
                                            orthod_client_dtype_t wire,
                                            orthod_param_info_t *infos, size_t *n_infos);

/* Pull n tensors into their buffers (tensors[i].step receives each counter): one Pull call per
 * shard involved, the shards in parallel. */
ORTHOD_CLIENT_API int orthod_sharded_pull(orthod_sharded_client_t *sc, orthod_tensor_t *tensors,
                                          size_t n, orthod_client_dtype_t wire);

/* List every shard (in parallel; each with orthod_list, in pages of options.list_page_size)
 * and merge the parameters into one list in name order; the device bytes are summed, the limit
 * is the sum of the shards' limits, or 0 (no limit) when one shard has none. Free with
 * orthod_param_list_clear. */
ORTHOD_CLIENT_API int orthod_sharded_list(orthod_sharded_client_t *sc, const char *prefix,
                                          orthod_param_list_t *list);

/* grpc.health.v1 Check on every shard (in parallel). serving (may be NULL) has
 * orthod_sharded_count(sc) entries and receives each shard's ServingStatus (0 where the call
 * failed). Returns 0 when every shard answered (look at serving for SERVING = 1). */
ORTHOD_CLIENT_API int orthod_sharded_health(orthod_sharded_client_t *sc, const char *service,
                                            int *serving);

/* orthod_checkpoint on every shard (in parallel): each daemon writes its own parameters to its
 * own state directory. infos (may be NULL) has orthod_sharded_count(sc) entries and receives
 * each shard's checkpoint (zeroed where the call failed). The checkpoints are taken one per
 * daemon, not at one instant across them: a step between two of them is in some and not in the
 * others. */
ORTHOD_CLIENT_API int orthod_sharded_checkpoint(orthod_sharded_client_t *sc,
                                                orthod_client_checkpoint_info_t *infos);

/* ---- the training loop -------------------------------------------------------------------- */

/* Push the n items as worker `worker_rank` and wait for their new weights: the items are
 * grouped by shard (keeping their order) and each shard's group is pushed and awaited on its own
 * thread over that shard's Step stream. Every item is checked first (as orthod_step_push does),
 * so bad arguments fail the call before any shard is sent anything. The streams are opened on
 * first use and kept for the next calls; a stream that failed is dropped and reopened by the next
 * call. Items and buffers are borrowed for the call; new_step is filled as with orthod_step. A
 * failure on some shards does not undo the steps taken on the others (new_step is 0 on every
 * item whose new weights did not come back). */
ORTHOD_CLIENT_API int orthod_sharded_step(orthod_sharded_client_t *sc, uint32_t worker_rank,
                                          orthod_step_item_t *items, size_t n);

/* Half-close every open Step stream and collect the daemons' final statuses (first failure
 * returned); the next orthod_sharded_step opens new streams. */
ORTHOD_CLIENT_API int orthod_sharded_step_finish(orthod_sharded_client_t *sc);

#ifdef __cplusplus
}
#endif
#endif
