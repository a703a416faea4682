/* orthod/optimizer.h — the optimizer family of the spec (sections 1, 2, 4, 5) for one parameter.
 * A configuration (plain struct, table-driven key=value access) plus per-parameter state on a
 * backend; orthod_optim_step applies one step to weights given a gradient, both on the device. */
#ifndef ORTHOD_OPTIMIZER_H
#define ORTHOD_OPTIMIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orthod/backend.h"
#include "orthod/newton_schulz.h"
#include "orthod/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  ORTHOD_ALGO_MUON = 0,
  ORTHOD_ALGO_ADAMW,
  ORTHOD_ALGO_SCION,
  ORTHOD_ALGO_POLARGRAD,
  ORTHOD_ALGO_SPEL,
  ORTHOD_ALGO_ADAPTIVE_MUON,
  ORTHOD_ALGO_MUON_HYPERBALL,
  ORTHOD_ALGO_MOP,
  ORTHOD_ALGO_COUNT
} orthod_algo_t;

typedef enum {
  ORTHOD_WD_DECOUPLED = 0, /* p ← p + (-(λη))·p */
  ORTHOD_WD_INDEPENDENT,   /* p ← p + (-λ)·p */
  ORTHOD_WD_L2,            /* G ← G + λ·p */
  ORTHOD_WD_PALM,          /* p ← p + (-(λη²))·p */
  ORTHOD_WD_COUNT
} orthod_wd_method_t;

typedef enum {
  ORTHOD_SCALE_SPECTRAL = 0,  /* sqrt(max(m, n)) */
  ORTHOD_SCALE_SHAPE_SCALING, /* sqrt(max(1, m/n)) */
  ORTHOD_SCALE_UNIT_RMS_NORM, /* sqrt(m/n) */
  ORTHOD_SCALE_NUCLEAR_NORM,  /* Σσ (MOP only) */
  ORTHOD_SCALE_COUNT
} orthod_scale_mode_t;

typedef enum {
  ORTHOD_MOMENT2_ADAMUON = 0,
  ORTHOD_MOMENT2_NORMUON,
  ORTHOD_MOMENT2_NAMO,
  ORTHOD_MOMENT2_COUNT
} orthod_moment2_t;

typedef enum {
  ORTHOD_HOOK_NONE = 0,
  ORTHOD_HOOK_HYPERBALL,
  ORTHOD_HOOK_RADIAL_BRAKE,
  ORTHOD_HOOK_RELATIVE_UPDATE,
  ORTHOD_HOOK_COUNT
} orthod_hook_t;

/* What the user says a parameter is; embeddings and heads get AdamW from orthod_algo_for. */
typedef enum {
  ORTHOD_ROLE_AUTO = 0,
  ORTHOD_ROLE_MATRIX,
  ORTHOD_ROLE_EMBEDDING,
  ORTHOD_ROLE_HEAD,
  ORTHOD_ROLE_COUNT
} orthod_role_t;

#define ORTHOD_MAX_SPLITS 16

typedef struct {
  orthod_algo_t algo;
  /* base (spec 1.1) */
  double lr;
  double momentum;
  double weight_decay;
  bool nesterov;
  orthod_wd_method_t weight_decay_method;
  orthod_precision_t precision;           /* fp32_matmul_prec */
  /* Newton–Schulz (Muon, Scion, Spel, PolarGrad, AdaptiveMuon, MuonHyperball) */
  orthod_coef_type_t coefficient_type;
  int num_ns_steps;
  bool use_syrk;
  /* scaling */
  orthod_scale_mode_t scale_mode;
  double extra_scale_factor;
  double spectral_radius;                 /* Scion ρ */
  /* AdaptiveMuon */
  orthod_moment2_t moment2_method;
  double beta2;
  double eps;
  /* weight-update hook (MuonHyperball forces HYPERBALL with hyperball_radius) */
  orthod_hook_t hook;
  double hyperball_radius;
  double hook_eps;                        /* 1e-15 */
  double outward_scale;                   /* RadialBrake, 0.5 */
  double inward_scale;                    /* RadialBrake, 1.0 */
  /* AdamW */
  double adam_beta1, adam_beta2, adam_eps;
  bool amsgrad;
  /* layout of the matrix view */
  int n_splits;                           /* fused blocks: row counts summing to dim 0 */
  int64_t split_rows[ORTHOD_MAX_SPLITS];
  int64_t num_heads;                      /* per-head NS: dim 0 split into equal heads (0/1 off) */
  orthod_role_t role;
} orthod_optim_config_t;

/* Fill cfg with the spec's defaults of algo (Muon: lr 3e-4, momentum 0.95, wd 0.01 decoupled,
 * medium, quintic, 5 steps, spectral; AdamW: torch defaults; Spel: wd 0.1; ...). */
ORTHOD_API orthod_err_t orthod_optim_config_default(orthod_optim_config_t *cfg, orthod_algo_t algo);

/* Algorithm to use for a parameter of this shape and role when the user names none:
 * AdamW for rank < 2, embeddings and heads; Muon otherwise. */
ORTHOD_API orthod_algo_t orthod_algo_for(const orthod_shape_t *shape, orthod_role_t role);

/* Check a configuration against a parameter shape: ranges, combinations, split sums, heads.
 * E_INVAL / E_SHAPE / E_STEPS with a detail string naming the key. */
ORTHOD_API orthod_err_t orthod_optim_config_validate(const orthod_optim_config_t *cfg,
                                                     const orthod_shape_t *shape);

/* Set one key from text ("lr", "0.02"; "coefficient_type", "polar_express"; "split_rows",
 * "768,256,256"). Setting "algo" resets every other key to that algorithm's defaults.
 * E_UNKNOWN_NAME for an unknown key or enum value, E_INVAL for an unparsable/out-of-range value. */
ORTHOD_API orthod_err_t orthod_optim_config_set(orthod_optim_config_t *cfg, const char *key,
                                                const char *value);

/* Format one key's value into buf; E_UNKNOWN_NAME for an unknown key. */
ORTHOD_API orthod_err_t orthod_optim_config_get(const orthod_optim_config_t *cfg, const char *key,
                                                char *buf, size_t len);

/* The i-th key of the table and its one-line help; NULL past the end. */
ORTHOD_API const char *orthod_optim_config_key(int i, const char **help);

/* Names (lower-case, lookups case-insensitive as the spec's registry). */
ORTHOD_API const char *orthod_algo_name(orthod_algo_t algo);
ORTHOD_API orthod_err_t orthod_algo_from_name(const char *name, orthod_algo_t *out);
ORTHOD_API const char *orthod_wd_method_name(orthod_wd_method_t m);
ORTHOD_API const char *orthod_scale_mode_name(orthod_scale_mode_t m);
ORTHOD_API const char *orthod_moment2_name(orthod_moment2_t m);
ORTHOD_API const char *orthod_hook_name(orthod_hook_t h);
ORTHOD_API const char *orthod_role_name(orthod_role_t r);

/* Muon scale factor s(m, n) of spec section 4 (double). E_INVAL for NUCLEAR_NORM/invalid. */
ORTHOD_API orthod_err_t orthod_muon_scale_factor(int64_t m, int64_t n, orthod_scale_mode_t mode,
                                                 double *out);

/* ---------------------------------------------------------------------------------------------
 * Per-parameter optimizer state. */

typedef struct orthod_optim orthod_optim_t;

/* Validate cfg against shape and allocate zeroed state on be. Caller owns *out. */
ORTHOD_API orthod_err_t orthod_optim_create(orthod_backend_t *be, const orthod_optim_config_t *cfg,
                                            const orthod_shape_t *shape, orthod_optim_t **out);

/* Free the state (NULL is a no-op). */
ORTHOD_API void orthod_optim_destroy(orthod_optim_t *opt);

/* Bytes of state that orthod_optim_create would allocate (for memory admission). */
ORTHOD_API orthod_err_t orthod_optim_state_bytes(const orthod_optim_config_t *cfg,
                                                 const orthod_shape_t *shape, size_t *out);

/* One step: weights ← step(weights, grad) with learning rate lr (pass cfg.lr unless a schedule
 * overrides it). grad is a device buffer of numel floats that the step may modify (l2 decay
 * folds into it, as the spec's optimizer does). Increments the step counter on success. */
ORTHOD_API orthod_err_t orthod_optim_step(orthod_optim_t *opt, float *weights, float *grad,
                                          double lr);

/* Steps taken so far; settable for checkpoint restore. */
ORTHOD_API int64_t orthod_optim_step_count(const orthod_optim_t *opt);
ORTHOD_API void orthod_optim_set_step_count(orthod_optim_t *opt, int64_t step);

/* Current configuration. */
ORTHOD_API const orthod_optim_config_t *orthod_optim_config(const orthod_optim_t *opt);

/* Replace hyper-parameters; keys that change the state layout (algo, moment2_method, amsgrad,
 * split_rows, num_heads, hook) must stay the same (E_INVAL naming the key). */
ORTHOD_API orthod_err_t orthod_optim_reconfigure(orthod_optim_t *opt,
                                                 const orthod_optim_config_t *cfg);

/* State buffers, for tests and checkpoints: i-th buffer's name ("momentum_buffer",
 * "moment2_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"), device pointer and length.
 * Returns false past the end. */
ORTHOD_API bool orthod_optim_buffer(const orthod_optim_t *opt, int i, const char **name,
                                    float **data, size_t *n);

/* The orthogonalizer alone (the spec's scaled_orthogonalize_fn for this configuration, blocks
 * and heads included): out = O(u) for the m x n matrix view of the parameter. For tests. */
ORTHOD_API orthod_err_t orthod_optim_orthogonalize(orthod_optim_t *opt, float *out,
                                                   const float *u);

/* ---------------------------------------------------------------------------------------------
 * One-sided PolarGrad orthogonalizer of spec 5.4 (a helper usable as an orthogonalizer, not an
 * algorithm). Left: S = Mx Mxᵀ (m x m), u = S^(-1/2) Mx; right: S = Mxᵀ Mx (n x n),
 * u = Mx S^(-1/2); eigenvalues clamped at eps, those <= max(λ)·d·2⁻²³ dropped;
 * out = u · (Σ sqrt(λ))^alpha · extra. center_rows subtracts the per-column mean before and after.
 * out (m x n) may not alias g. Synchronises (the eigenvalues are read back to the host). */
typedef enum { ORTHOD_SIDE_LEFT = 0, ORTHOD_SIDE_RIGHT = 1 } orthod_side_t;

ORTHOD_API orthod_err_t orthod_polargrad_one_sided(orthod_backend_t *be, float *out,
                                                   const float *g, int64_t m, int64_t n,
                                                   orthod_side_t side, double alpha,
                                                   bool center_rows, double eps, double extra);

#ifdef __cplusplus
}
#endif
#endif
