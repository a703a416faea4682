'use strict';
// test.js — the Node.js client against a running daemon; driven by
// tests/integration/test_node_client.py, which writes the plan and the data, and checks every
// number written back against the float64 reference.
//
// usage: node test.js --address HOST:PORT --work DIR
//
// DIR/plan.json:
//   { "steps": N, "stream_steps": K, "missing": "a name that is not registered",
//     "upload_chunk_bytes": B, "step_chunk_bytes": C (the gradient chunks of steps K+1..N),
//     "params": [ { "name", "shape", "algorithm", "options": {key: value},
//                   "wire": "f32"|"bf16"|"f16"  (dtype of the upload and the gradients),
//                   "reply": "f32"|"bf16"|"f16" (dtype of the weights the Step replies carry),
//                   "chunk_bytes": gradient data per Step message in steps 1..K,
//                   "lrs": [lr of step 1..N] | null, "init": "file", "grads": ["file", ...] } ] }
// Data files are raw little-endian float32, flattened row-major.
// Steps 1..K go through one explicit Step stream (every parameter pushed before any reply is
// awaited); steps K+1..N through Client.step() (the client's persistent stream).
//
// Written to DIR:
//   <name>.step<k>.f32         the weights of the Step reply after step k (decoded to float32)
//   <name>.pull.<dtype>.f32    Pull of the final weights in each wire dtype, decoded
//   conv.in.f32, conv.bf16.u16, conv.f16.u16, conv.f16back.f32   this module's conversions
//   result.json                what the calls returned: infos, step counters, chunk counts,
//                              the errors (code, codeName, details) of the failing calls
// Exit status 0 when every call behaved as this script expects; the driver checks the numbers.

const fs = require('fs');
const path = require('path');
const orthod = require('./orthod');

function parseArgs() {
  const out = {};
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) {
    if (!a[i].startsWith('--') || i + 1 >= a.length) {
      throw new Error(`bad arguments: ${a.join(' ')}`);
    }
    out[a[i].slice(2)] = a[i + 1];
  }
  if (!out.address || !out.work) {
    throw new Error('usage: node test.js --address HOST:PORT --work DIR');
  }
  return out;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** Expect `fn` to reject with an OrthodError of `code`; returns what the driver checks. */
async function expectError(fn, code, what) {
  try {
    await fn();
  } catch (e) {
    check(e instanceof orthod.OrthodError, `${what}: an OrthodError, got ${e && e.stack}`);
    check(e.code === code, `${what}: code ${code}, got ${e.message}`);
    check(e.message === `${e.codeName}: ${e.details}`, `${what}: message ${e.message}`);
    return { code: e.code, codeName: e.codeName, details: e.details, message: e.message };
  }
  throw new Error(`${what}: the call succeeded, expected code ${code}`);
}

/** A fake daemon (grpc-js server, every method but List UNIMPLEMENTED) whose List paging does
 *  not advance: "repeat" answers a page and the same token every time, "empty" no params and a
 *  new token, "back" the same page whatever the token. list() must reject (INTERNAL, this
 *  module's code for a malformed reply) after a bounded number of calls instead of listing
 *  forever. Returns {mode: [calls, message]}. */
async function listBadPages() {
  const grpc = require('@grpc/grpc-js');
  const info = (name) => ({ spec: { name, shape: [2] }, elements: 2 });
  const out = {};
  for (const [mode, calls, text] of [['repeat', 2, "next_page_token \"same\" does not advance"],
                                     ['empty', 1, 'does not advance (0 parameters in its page)'],
                                     ['back', 2, "page starts at 'a', not after 'b'"]]) {
    let seen = 0;
    const server = new grpc.Server();
    server.addService(orthod.loadProtos().Optimizer.service, {
      List: (call, cb) => {
        seen++;
        if (mode === 'empty') cb(null, { next_page_token: `t${seen}` });
        else if (mode === 'back') {
          cb(null, { params: [info('a'), info('b')], next_page_token: `tok${seen}` });
        } else cb(null, { params: [info(`p${seen}`)], next_page_token: 'same' });
      },
    });
    const port = await new Promise((resolve, reject) => server.bindAsync(
      '127.0.0.1:0', grpc.ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p))));
    const fake = new orthod.Client(`127.0.0.1:${port}`, { timeoutMs: 10000 });
    try {
      const e = await expectError(() => fake.list('', { pageSize: 1 }), orthod.status.INTERNAL,
                                  `List paging that does not advance (${mode})`);
      check(e.details.includes(text), `${mode}: message ${e.details}`);
      check(seen === calls, `${mode}: ${seen} List calls, expected ${calls}`);
      out[mode] = [seen, e.message];
    } finally {
      await fake.close();
      server.forceShutdown();
    }
  }
  return out;
}

async function main() {
  const args = parseArgs();
  const work = args.work;
  const file = (f) => path.join(work, f);
  const readF32 = (f) => orthod.decode(fs.readFileSync(file(f)), 'f32');
  const writeF32 = (f, a) => fs.writeFileSync(file(f), orthod.encode(a, 'f32'));
  const plan = JSON.parse(fs.readFileSync(file('plan.json'), 'utf8'));
  const params = plan.params;
  const t0 = Date.now();
  const client = new orthod.Client(args.address, { timeoutMs: 20000 });
  const result = { registered: {}, uploaded: {}, steps: {}, sent_chunks: {}, reply_chunks: {},
                   pull: {}, timings: {} };

  // health
  check(await client.health() === 'SERVING', 'health of ""');
  check(await client.health('orthod.v1.Optimizer') === 'SERVING', 'health of the service');
  result.health_unknown = await expectError(
    () => client.health('no.such.service'), orthod.status.NOT_FOUND, 'health of another service');

  // register; the second identical Register is the idempotent retry
  for (const p of params) {
    const opts = { algorithm: p.algorithm, options: p.options };
    const info = await client.register(p.name, p.shape, opts);
    check(info.created === true, `${p.name} created`);
    const again = await client.register(p.name, p.shape, opts);
    check(again.created === false, `${p.name}: an identical Register is idempotent`);
    result.registered[p.name] = info;
  }
  const p0 = params[0];
  result.register_conflict = await expectError(
    () => client.register(p0.name, [...p0.shape, 1], { algorithm: p0.algorithm }),
    orthod.status.ALREADY_EXISTS, 'Register of an existing name with another shape');
  result.register_invalid = await expectError(() => client.register('bad.shape', [4, 0]),
                                              orthod.status.INVALID_ARGUMENT, 'a dimension of 0');

  // upload every parameter in one call, each in its wire dtype, in small chunks
  const init = {};
  const wire = {};
  for (const p of params) {
    init[p.name] = readF32(p.init);
    wire[p.name] = p.wire;
  }
  result.uploaded = await client.upload(init, { dtype: wire, chunkBytes: plan.upload_chunk_bytes });

  const counters = Object.fromEntries(params.map((p) => [p.name, 0]));
  const record = (k, name, r) => {
    writeF32(`${name}.step${k + 1}.f32`, r.weights);
    (result.steps[name] = result.steps[name] || []).push(r.step);
    (result.reply_chunks[name] = result.reply_chunks[name] || []).push(r.chunks);
    counters[name] = r.step;
  };
  for (const p of params) {
    const g = readF32(p.grads[0]);
    result.sent_chunks[p.name] = orthod.toChunks(g, p.wire, p.chunk_bytes).length;
  }

  // steps 1..K: one Step stream, every parameter pushed before the replies are awaited
  const stream = client.openStep();
  for (let k = 0; k < plan.stream_steps; k++) {
    const replies = params.map((p) => stream.push(p.name, counters[p.name], readF32(p.grads[k]), {
      lr: p.lrs ? p.lrs[k] : undefined, dtype: p.wire, replyDtype: p.reply,
      chunkBytes: p.chunk_bytes }));
    for (const r of await Promise.all(replies)) record(k, r.name, r);
  }
  await stream.close();

  // steps K+1..N: Client.step() with per-parameter dtypes, reply dtypes and learning rates
  for (let k = plan.stream_steps; k < plan.steps; k++) {
    const grads = {};
    const lr = {};
    for (const p of params) {
      grads[p.name] = readF32(p.grads[k]);
      if (p.lrs) lr[p.name] = p.lrs[k];
    }
    const out = await client.step(grads, counters, {
      lr, dtype: wire, replyDtype: Object.fromEntries(params.map((p) => [p.name, p.reply])),
      chunkBytes: plan.step_chunk_bytes });
    for (const p of params) record(k, p.name, out[p.name]);
  }
  result.timings.steps_ms = Date.now() - t0;

  // errors on the persistent stream: an unknown parameter is NOT_FOUND; the stream is then
  // reopened by the next step(), where a stale push is FAILED_PRECONDITION naming the step
  const missing = plan.missing;
  result.step_not_found = await expectError(
    () => client.step({ [missing]: new Float32Array(4) }, 0), orthod.status.NOT_FOUND,
    'Step push of an unknown parameter');
  result.stale = await expectError(
    () => client.step({ [p0.name]: readF32(p0.grads[0]) }, 0),
    orthod.status.FAILED_PRECONDITION, 'stale push');

  // Pull in every wire dtype
  const names = params.map((p) => p.name);
  for (const dtype of ['f32', 'bf16', 'f16']) {
    const got = await client.pull(names, { dtype });
    check(Object.keys(got).join('\n') === names.join('\n'), `Pull order ${Object.keys(got)}`);
    for (const p of params) {
      const g = got[p.name];
      check(g.shape.join(',') === p.shape.join(','), `Pull shape of ${p.name}: ${g.shape}`);
      writeF32(`${p.name}.pull.${dtype}.f32`, g.weights);
      (result.pull[p.name] = result.pull[p.name] || {})[dtype] = g.step;
    }
  }
  result.pull_all_names = Object.keys(await client.pull());
  result.pull_not_found = await expectError(() => client.pull([names[0], missing]),
                                            orthod.status.NOT_FOUND, 'Pull of an unknown name');

  // Describe, List, SetConfig
  result.describe = {};
  for (const p of params) result.describe[p.name] = await client.describe(p.name);
  result.list = await client.list();
  result.list_prefix = (await client.list(names[0])).params.map((i) => i.name);
  // List in pages (1, 2, all, more; the client option too) holds what one reply holds
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  const whole = await client.list('', { pageSize: 0 });
  check(same(whole, result.list), 'List in pages of 1000 (the default) equals one reply');
  for (const pageSize of [1, 2, params.length, params.length + 1]) {
    check(same(await client.list('', { pageSize }), whole), `List in pages of ${pageSize}`);
  }
  const layer0 = await client.list('layers.0.', { pageSize: 0 });
  check(layer0.params.length === 3 && same(await client.list('layers.0.', { pageSize: 1 }), layer0),
        'List of a prefix in pages of 1');
  const paging = new orthod.Client(args.address, { timeoutMs: 20000, listPageSize: 2 });
  check(same(await paging.list(), whole), 'List with the client option listPageSize 2');
  await paging.close();
  for (const bad of [-1, 1.5, 2 ** 32, '3']) {
    let threw = false;
    try {
      await client.list('', { pageSize: bad });
    } catch (e) {
      threw = e instanceof RangeError;
    }
    check(threw, `List pageSize ${bad} refused with a RangeError`);
  }
  result.list_pages = [1, 2, params.length, params.length + 1];
  result.set_config = await client.setConfig(p0.name, { lr: 0.005 });
  result.describe_not_found = await expectError(
    () => client.describe(missing), orthod.status.NOT_FOUND, 'Describe of an unknown name');
  result.set_config_layout = await expectError(
    () => client.setConfig(p0.name, { algo: 'adamw' }), orthod.status.INVALID_ARGUMENT,
    'SetConfig of a layout key');

  // the conversions, on values the driver compares with NumPy's
  const vals = [0, -0, 1, -1, 1.00390625, 1.01171875, 3.14159265, 65504, 65519, 65520, 1e-8, 6e-8,
    3e-5, -2.5e-7, 1e30, -1e30, -1e-40, Infinity, -Infinity, NaN, -NaN, 0.1, 0.2, 0.3,
    1.0009765625, 1.0029296875, 5.96e-8, 2.98e-8, 2.99e-8, 3.3895314e38, -3.3895314e38];
  const conv = new Float32Array(vals.length + 4000);
  conv.set(vals, 0);
  let s = 12345;
  for (let i = vals.length; i < conv.length; i++) {  // a reproducible spread of magnitudes
    s = (s * 1103515245 + 12345) % 2147483648;
    conv[i] = (s / 2147483648 - 0.5) * 2 ** ((i % 80) - 40);
  }
  writeF32('conv.in.f32', conv);
  fs.writeFileSync(file('conv.bf16.u16'), orthod.encode(conv, 'bf16'));
  fs.writeFileSync(file('conv.f16.u16'), orthod.encode(conv, 'f16'));
  writeF32('conv.f16back.f32', orthod.decode(orthod.encode(conv, 'f16'), 'f16'));

  // Checkpoint: every registered parameter, the sequence one more per call. The driver's daemon
  // runs on this machine, so the file can be checked here (right after its call: the daemon may
  // delete older checkpoints when it writes a new one).
  result.checkpoints = [];
  for (let k = 0; k < 2; k++) {
    const ck = await client.checkpoint();
    check(typeof ck.path === 'string' && ck.path.length > 0, `Checkpoint path ${ck.path}`);
    check(ck.parameters === params.length,
          `Checkpoint of ${ck.parameters} parameters, expected ${params.length}`);
    check(Number.isSafeInteger(ck.bytes) && ck.bytes > 0, `Checkpoint bytes ${ck.bytes}`);
    check(fs.statSync(ck.path).size === ck.bytes,
          `Checkpoint ${ck.path}: ${fs.statSync(ck.path).size} bytes on disk, reply ${ck.bytes}`);
    if (k > 0) {
      check(ck.sequence === result.checkpoints[0].sequence + 1,
            `Checkpoint sequences ${result.checkpoints[0].sequence} then ${ck.sequence}`);
    }
    result.checkpoints.push(ck);
  }

  // Drop: returns the counter; a second Drop is NOT_FOUND
  const last = params[params.length - 1];
  result.drop_step = await client.drop(last.name);
  result.drop_again = await expectError(() => client.drop(last.name), orthod.status.NOT_FOUND,
                                        'second Drop');
  result.list_after_drop = (await client.list()).params.map((i) => i.name);

  await client.close();
  result.list_bad_pages = await listBadPages();
  result.timings.total_ms = Date.now() - t0;
  fs.writeFileSync(file('result.json'), JSON.stringify(result, null, 1));
  console.log(`node client: ${params.length} parameters, ${plan.steps} steps, ` +
              `${result.timings.total_ms} ms`);
}

main().catch((e) => {
  console.error(`test.js: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
