'use strict';
// example.js — a few Muon steps on a random matrix through a running orthod daemon.
//
// usage: node example.js [HOST:PORT]      (default $ORTHOD_ADDRESS, else 127.0.0.1:50051)
//
// The "model" is one 64x32 weight matrix W fitted to a random rank-2 target T with the loss
// 0.5 * ||W - T||_F^2, whose gradient is W - T. The gradient is nearly rank 2; Muon replaces it
// by an orthogonalized update whose singular values are all close to 1, so the update spreads
// over every direction. The example prints, per step, the loss and the stable rank
// (||U||_F^2 / ||U||_2^2, between 1 and 32) of the gradient and of the update the daemon made.

const orthod = require('./orthod');

const ROWS = 64;
const COLS = 32;
const STEPS = 5;
const NAME = 'example.w';

/** A small deterministic generator (mulberry32) and standard normal samples (Box-Muller). */
function rng(seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

/** Largest singular value of a rows x cols row-major matrix by power iteration on A^T A. */
function spectralNorm(a, rows, cols) {
  let v = new Float64Array(cols).fill(1 / Math.sqrt(cols));
  let sigma = 0;
  for (let it = 0; it < 100; it++) {
    const av = new Float64Array(rows);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) av[i] += a[i * cols + j] * v[j];
    }
    const w = new Float64Array(cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) w[j] += a[i * cols + j] * av[i];
    }
    const norm = Math.hypot(...w);
    if (norm === 0) return 0;
    v = w.map((x) => x / norm);
    sigma = Math.sqrt(norm);
  }
  return sigma;
}

function stableRank(a, rows, cols) {
  const fro2 = a.reduce((s, x) => s + x * x, 0);
  const s = spectralNorm(a, rows, cols);
  return s > 0 ? fro2 / (s * s) : 0;
}

async function main() {
  const address = process.argv[2] || process.env.ORTHOD_ADDRESS || '127.0.0.1:50051';
  const client = new orthod.Client(address, { timeoutMs: 10000 });
  try {
    // start from a fresh parameter: drop one an earlier run left (NOT_FOUND is fine)
    try {
      await client.drop(NAME);
    } catch (e) {
      if (!(e instanceof orthod.OrthodError) || e.code !== orthod.status.NOT_FOUND) throw e;
    }
    const info = await client.register(NAME, [ROWS, COLS], {
      algorithm: 'muon',
      options: { lr: 0.02, momentum: 0.95, weight_decay: 0 },
    });
    console.log(`registered '${info.name}' ${info.shape.join('x')} ${info.algorithm} ` +
                `lr=${info.options.lr} on ${address} (${info.deviceBytes} bytes on the device)`);

    const normal = rng(42);
    const w0 = Float32Array.from({ length: ROWS * COLS }, () => 0.02 * normal());
    const u = [0, 1].map(() => Array.from({ length: ROWS }, normal));
    const v = [0, 1].map(() => Array.from({ length: COLS }, normal));
    const target = new Float32Array(ROWS * COLS);
    for (let i = 0; i < ROWS; i++) {
      for (let j = 0; j < COLS; j++) {
        target[i * COLS + j] = 0.1 * (u[0][i] * v[0][j] + 0.5 * u[1][i] * v[1][j]);
      }
    }
    await client.upload({ [NAME]: w0 });

    let w = w0;
    let step = 0;
    const loss = (x) => 0.5 * x.reduce((s, xi, i) => s + (xi - target[i]) ** 2, 0);
    console.log(`step 0: loss ${loss(w).toFixed(4)}`);
    for (let k = 0; k < STEPS; k++) {
      const grad = w.map((x, i) => x - target[i]);
      const out = await client.step({ [NAME]: grad }, step);
      const next = out[NAME].weights;
      const update = next.map((x, i) => x - w[i]);
      console.log(`step ${out[NAME].step}: loss ${loss(next).toFixed(4)}, ` +
                  `stable rank of the gradient ${stableRank(grad, ROWS, COLS).toFixed(1)}, ` +
                  `of the update ${stableRank(update, ROWS, COLS).toFixed(1)} (of ${COLS})`);
      w = next;
      step = out[NAME].step;
    }

    // the weights in bf16 on the wire: half the bytes, 8 significant bits
    const pulled = await client.pull([NAME], { dtype: 'bf16' });
    const maxRel = pulled[NAME].weights.reduce(
      (m, x, i) => Math.max(m, Math.abs(x - w[i]) / Math.abs(w[i] || 1)), 0);
    console.log(`pulled at step ${pulled[NAME].step} in bf16: largest relative difference ` +
                `from fp32 ${maxRel.toExponential(2)} ` +
                '(bf16 keeps 8 significant bits: at most 2^-8 = 3.9e-3)');
    await client.drop(NAME);
  } finally {
    await client.close();
  }
}

main().catch((e) => {
  console.error(`example.js: ${e.message}`);
  process.exit(1);
});
