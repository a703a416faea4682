'use strict';
// orthod.js — a small Node.js client for the orthod daemon (gRPC service orthod.v1.Optimizer).
//
// The .proto files are loaded at run time with @grpc/proto-loader (no generated code), from
// ../../proto of this file by default (the repository layout); pass `protoDir` or set
// ORTHOD_PROTO_DIR when the client lives elsewhere. docs/PROTOCOL.md is the reference for every
// call; this module adds the chunking of tensors (Upload, Step, Pull), a Step stream that
// collects reply chunks into a Float32Array and checks that they cover the tensor exactly once,
// bf16/f16 conversions (round-to-nearest-even, as the daemon does) and errors that carry the gRPC
// status code and the daemon's message.
//
// Numbers: the proto's uint64 fields (step counters, element offsets, element counts) travel as
// decimal strings between protobufjs and this module (`longs: String`), so nothing is rounded
// silently; they are returned as Numbers when they are safe integers (always, in practice) and
// as BigInts otherwise. Arguments may be Numbers, BigInts or decimal strings.

const fs = require('fs');
const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOCOL_VERSION = '1';
const VERSION_KEY = 'orthod-protocol-version';
const DEFAULT_ADDRESS = '127.0.0.1:50051';

const DTYPES = { f32: 'DTYPE_F32', bf16: 'DTYPE_BF16', f16: 'DTYPE_F16' };
const DTYPE_SIZE = { DTYPE_UNSPECIFIED: 4, DTYPE_F32: 4, DTYPE_BF16: 2, DTYPE_F16: 2 };
const SYNC_MODES = { sync: 'SYNC_MODE_SYNC', async: 'SYNC_MODE_ASYNC' };

// Status code number -> name ("NOT_FOUND"), from grpc-js's own table.
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

const LOADER_OPTIONS = {
  keepCase: true,   // field names exactly as in the .proto (worker_rank, reply_dtype, ...)
  longs: String,    // uint64 as decimal strings: no silent rounding above 2^53
  enums: String,    // enum values by name (DTYPE_F32)
  defaults: true,   // absent proto3 fields read as their zero values (step 0, last false)
  oneofs: false,
};

// ---------------------------------------------------------------------------------------------
// errors

/** A failed call: `code` is the gRPC status code (a number, see grpc.status), `codeName` its
 *  name, `details` the daemon's message; `message` is "NOT_FOUND: parameter 'w' is not
 *  registered". Errors this module detects itself (a malformed reply) use INTERNAL, and
 *  arguments it refuses before any call throw TypeError/RangeError instead. */
class OrthodError extends Error {
  constructor(code, details, metadata) {
    const name = CODE_NAMES[code] || String(code);
    super(`${name}: ${details}`);
    this.name = 'OrthodError';
    this.code = code;
    this.codeName = name;
    this.details = details;
    this.metadata = metadata;
  }
}

function wrapError(err) {
  if (err instanceof OrthodError) return err;
  if (err && typeof err.code === 'number') {
    return new OrthodError(err.code, err.details !== undefined ? err.details : err.message,
                           err.metadata);
  }
  return err;
}

function protocolError(what) {
  return new OrthodError(grpc.status.INTERNAL, `malformed reply from the daemon: ${what}`);
}

// ---------------------------------------------------------------------------------------------
// numbers

/** uint64 from protobufjs (string, number or Long) -> Number, or BigInt beyond 2^53. */
function u64(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v;
  const s = String(v);
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : BigInt(s);
}

/** A non-negative integer argument -> decimal string for a uint64 field. */
function u64Arg(v, what) {
  if (typeof v === 'bigint') {
    if (v < 0n) throw new RangeError(`${what} must be >= 0, got ${v}`);
    return v.toString();
  }
  if (typeof v === 'string' && /^[0-9]+$/.test(v)) return v;
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new RangeError(`${what} must be a non-negative integer, got ${v}`);
  }
  return String(v);
}

/** A List page size (the proto's uint32): an integer in 0..2^32-1. */
function pageSizeArg(v, what) {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new RangeError(`${what} must be an integer in 0..2^32-1, got ${v}`);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// dtype conversions (little-endian wire format, round-to-nearest-even)

const LITTLE_ENDIAN = os.endianness() === 'LE';

function dtypeEnum(dtype) {
  if (dtype === undefined || dtype === null) return 'DTYPE_F32';
  if (DTYPES[dtype]) return DTYPES[dtype];
  if (Object.values(DTYPES).includes(dtype)) return dtype;
  throw new RangeError(`unknown dtype ${JSON.stringify(dtype)} (use "f32", "bf16" or "f16")`);
}

function asFloat32(values, what) {
  if (values instanceof Float32Array) return values;
  if (ArrayBuffer.isView(values) || Array.isArray(values)) return Float32Array.from(values);
  throw new TypeError(`${what} must be a Float32Array, a typed array or an array of numbers`);
}

/** fp32 bit pattern -> bf16 bit pattern, round-to-nearest-even; NaN stays a (quiet) NaN. */
function f32BitsToBf16Bits(u) {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) {
    return ((u >>> 16) | 0x0040) & 0xffff;
  }
  const lsb = (u >>> 16) & 1;
  return Math.floor((u + 0x7fff + lsb) / 65536) & 0xffff;  // no 32-bit wrap for -inf
}

/** fp32 bit pattern -> IEEE binary16 bit pattern, round-to-nearest-even (overflow -> inf,
 *  underflow -> subnormal or signed zero; the same rules as numpy's float32 -> float16). */
function f32BitsToF16Bits(f) {
  const sign = (f >>> 16) & 0x8000;
  const exp = f & 0x7f800000;
  if (exp >= 0x47800000) {  // overflow, inf, NaN
    if (exp === 0x7f800000 && (f & 0x007fffff) !== 0) {
      let r = 0x7c00 + ((f & 0x007fffff) >>> 13);
      if (r === 0x7c00) r += 1;  // keep it a NaN
      return sign | r | 0x0200;
    }
    return sign | 0x7c00;
  }
  if (exp <= 0x38000000) {  // subnormal half or zero
    if (exp < 0x33000000) return sign;
    let sig = 0x00800000 + (f & 0x007fffff);
    sig >>>= 113 - (exp >>> 23);
    // round half to even: add half an ulp unless exactly halfway with an even result
    if ((sig & 0x3fff) !== 0x1000 || (f & 0x7ff) !== 0) sig += 0x1000;
    return sign + (sig >>> 13);  // a carry into the exponent is the right answer
  }
  const hexp = (exp - 0x38000000) >>> 13;
  let sig = f & 0x007fffff;
  if ((sig & 0x3fff) !== 0x1000) sig += 0x1000;
  return sign + hexp + (sig >>> 13);  // carries into the exponent, up to inf
}

function f16BitsToF32(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Float32Array (or array of numbers) -> Buffer of `dtype` ("f32", "bf16", "f16"). */
function encode(values, dtype = 'f32') {
  const a = asFloat32(values, 'values');
  const dt = dtypeEnum(dtype);
  if (dt === 'DTYPE_F32') {
    if (LITTLE_ENDIAN) return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    const out = Buffer.allocUnsafe(a.length * 4);
    for (let i = 0; i < a.length; i++) out.writeFloatLE(a[i], i * 4);
    return out;
  }
  const bits = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const conv = dt === 'DTYPE_BF16' ? f32BitsToBf16Bits : f32BitsToF16Bits;
  const out = Buffer.allocUnsafe(a.length * 2);
  for (let i = 0; i < a.length; i++) out.writeUInt16LE(conv(bits[i]), i * 2);
  return out;
}

/** Buffer of `dtype` (name or DTYPE_* enum) -> new Float32Array. */
function decode(buf, dtype = 'f32') {
  const dt = dtype === 'DTYPE_UNSPECIFIED' ? 'DTYPE_F32' : dtypeEnum(dtype);
  const size = DTYPE_SIZE[dt];
  if (buf.length % size !== 0) {
    throw protocolError(`${buf.length} bytes is not a whole number of ${dt} elements`);
  }
  const n = buf.length / size;
  const out = new Float32Array(n);
  if (dt === 'DTYPE_F32') {
    if (LITTLE_ENDIAN) {
      new Uint8Array(out.buffer).set(buf);
    } else {
      for (let i = 0; i < n; i++) out[i] = buf.readFloatLE(i * 4);
    }
  } else if (dt === 'DTYPE_BF16') {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = buf.readUInt16LE(i * 2) * 65536;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16BitsToF32(buf.readUInt16LE(i * 2));
  }
  return out;
}

/** Round fp32 values to the nearest bf16 values (RNE), returned as a new Float32Array. */
function roundBf16(values) {
  return decode(encode(values, 'bf16'), 'bf16');
}

/** `v` if it is a single value, else `v[name]` (an object or Map keyed by parameter name). */
function perName(v, name) {
  if (v instanceof Map) return v.get(name);
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v)) {
    return v[name];
  }
  return v;
}

/** Cut a flat Float32Array into TensorChunk objects of at most `chunkBytes` bytes of data. */
function toChunks(values, dtype, chunkBytes) {
  const a = asFloat32(values, 'tensor');
  const dt = dtypeEnum(dtype);
  const per = Math.max(1, Math.floor(chunkBytes / DTYPE_SIZE[dt]));
  const chunks = [];
  for (let off = 0; off < a.length; off += per) {
    const part = a.subarray(off, Math.min(a.length, off + per));
    chunks.push({ offset: String(off), dtype: dt, data: encode(part, dt) });
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// reassembly of chunked replies

/** Collects the chunks of one tensor (Step reply or Pull) and checks that they cover
 *  [0, elements) exactly once. */
class Assembly {
  constructor(name, step, elements) {
    this.name = name;
    this.step = step;
    this.elements = elements;
    this.data = new Float32Array(elements);
    this.ranges = [];
  }

  add(chunk) {
    if (!chunk) throw protocolError(`a reply for '${this.name}' has no chunk`);
    const off = u64(chunk.offset);
    const vals = decode(chunk.data, chunk.dtype);
    if (typeof off !== 'number' || off + vals.length > this.elements) {
      throw protocolError(`chunk [${off}, ${off + vals.length}) of '${this.name}' lies past its ` +
                          `${this.elements} elements`);
    }
    this.data.set(vals, off);
    this.ranges.push([off, off + vals.length]);
  }

  finish() {
    const r = this.ranges.sort((x, y) => x[0] - y[0]);
    let at = 0;
    for (const [a, b] of r) {
      if (a < at) throw protocolError(`reply chunks of '${this.name}' overlap at element ${a}`);
      if (a > at) {
        throw protocolError(`reply of '${this.name}' leaves elements [${at}, ${a}) uncovered`);
      }
      at = b;
    }
    if (at !== this.elements) {
      throw protocolError(`reply of '${this.name}' covers ${at} of ${this.elements} elements`);
    }
    return this.data;
  }
}

// ---------------------------------------------------------------------------------------------
// conversions of messages

function infoFromProto(info) {
  const spec = info.spec || {};
  const options = {};
  for (const o of spec.options || []) options[o.key] = o.value;
  return {
    name: spec.name,
    shape: (spec.shape || []).map(u64),
    algorithm: spec.algorithm,
    options,
    workers: spec.workers,
    syncMode: String(spec.sync_mode || '').replace('SYNC_MODE_', '').toLowerCase(),
    maxStaleness: u64(spec.max_staleness || 0),
    syncTimeoutMs: spec.sync_timeout_ms,
    step: u64(info.step),
    elements: u64(info.elements),
    deviceBytes: u64(info.device_bytes),
  };
}

function optionsToProto(options) {
  if (!options) return [];
  const entries = options instanceof Map ? [...options] : Object.entries(options);
  return entries.map(([key, value]) => ({
    key: String(key),
    value: typeof value === 'boolean' ? (value ? 'true' : 'false')
      : Array.isArray(value) ? value.join(',') : String(value),
  }));
}

// ---------------------------------------------------------------------------------------------
// loading the protos

const loaded = new Map();

function loadProtos(protoDir) {
  const dir = path.resolve(protoDir || process.env.ORTHOD_PROTO_DIR ||
                           path.join(__dirname, '..', '..', 'proto'));
  if (loaded.has(dir)) return loaded.get(dir);
  const main = path.join(dir, 'orthod', 'v1', 'orthod.proto');
  const health = path.join(dir, 'grpc', 'health', 'v1', 'health.proto');
  for (const f of [main, health]) {
    if (!fs.existsSync(f)) {
      throw new Error(`${f} not found: pass protoDir (the directory holding ` +
                      'orthod/v1/orthod.proto and grpc/health/v1/health.proto) or set ' +
                      'ORTHOD_PROTO_DIR');
    }
  }
  const opts = { ...LOADER_OPTIONS, includeDirs: [dir] };
  const pkg = grpc.loadPackageDefinition(
    protoLoader.loadSync(['orthod/v1/orthod.proto', 'grpc/health/v1/health.proto'], opts));
  const out = { Optimizer: pkg.orthod.v1.Optimizer, Health: pkg.grpc.health.v1.Health };
  loaded.set(dir, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// the Step stream

/** One bidirectional Step call. push() sends one worker's gradient for one step of one
 *  parameter (in chunks) and resolves with the new weights when the daemon has answered:
 *  { name, step, elements, weights: Float32Array, chunks (how many reply messages) }.
 *  Several parameters may be in flight at once (push them all, then await them all); pushes of
 *  the same parameter are answered in order.
 *  An error ends the stream: every pending and later push rejects with the OrthodError. */
class StepStream {
  constructor(client, opts = {}) {
    this._client = client;
    this._chunkBytes = opts.chunkBytes || client.chunkBytes;
    this._waiting = new Map();     // name -> [{resolve, reject}] in push order
    this._assembling = new Map();  // name -> Assembly
    this._pending = 0;
    this._error = null;
    this._ended = false;
    this._call = client._stub.Step(client._metadata(), {});
    this._done = new Promise((resolve, reject) => {
      this._call.on('status', (st) => {
        if (st.code === grpc.status.OK) {
          this._ended = true;
          this._failAll(new OrthodError(grpc.status.INTERNAL,
                                        'Step stream ended with pushes still unanswered'));
          resolve();
        }
      });
      this._call.on('error', (err) => {
        const e = wrapError(err);
        this._error = e;
        this._failAll(e);
        reject(e);
      });
    });
    this._done.catch(() => {});  // observed through push() and close()
    this._call.on('data', (r) => this._onData(r));
  }

  _failAll(err) {
    for (const list of this._waiting.values()) {
      for (const w of list) w.reject(err);
    }
    this._waiting.clear();
    this._pending = 0;
  }

  _onData(r) {
    try {
      let asm = this._assembling.get(r.name);
      const step = u64(r.step);
      if (!asm) {
        asm = new Assembly(r.name, step, u64(r.elements));
        this._assembling.set(r.name, asm);
      } else if (asm.step !== step) {
        throw protocolError(`reply chunks of '${r.name}' carry steps ${asm.step} and ${step}`);
      }
      asm.add(r.chunk);
      if (!r.last) return;
      this._assembling.delete(r.name);
      const weights = asm.finish();
      const list = this._waiting.get(r.name);
      if (!list || list.length === 0) {
        throw protocolError(`weights of '${r.name}' arrived for no push`);
      }
      const w = list.shift();
      if (list.length === 0) this._waiting.delete(r.name);
      this._pending -= 1;
      w.resolve({ name: r.name, step, elements: asm.elements, weights, chunks: asm.ranges.length });
    } catch (e) {
      this._error = e;
      this._failAll(e);
      this._call.cancel();
    }
  }

  async _write(req) {
    if (this._error) throw this._error;
    if (!this._call.write(req)) {
      await new Promise((resolve) => {
        const done = () => {
          this._call.off('drain', done);
          this._call.off('error', done);
          resolve();
        };
        this._call.on('drain', done);
        this._call.on('error', done);
      });
    }
    if (this._error) throw this._error;
  }

  /** Push `grad` (Float32Array or numbers, flattened row-major) as the gradient of parameter
   *  `name` computed at step counter `step`.
   *  opts: rank (worker_rank, 0), lr (this step's learning rate), dtype of the gradient on the
   *  wire ("f32" | "bf16" | "f16"), replyDtype (of the weights sent back, "f32"), noReply (the
   *  daemon sends nothing back; resolves with null once the chunks are written), chunkBytes. */
  async push(name, step, grad, opts = {}) {
    if (this._error) throw this._error;
    if (this._ended || this._closing) throw new Error('push on a closed Step stream');
    const chunks = toChunks(grad, opts.dtype || 'f32', opts.chunkBytes || this._chunkBytes);
    if (chunks.length === 0) throw new RangeError(`empty gradient for '${name}'`);
    const base = {
      name,
      step: u64Arg(step, 'step'),
      worker_rank: opts.rank || 0,
      reply_dtype: dtypeEnum(opts.replyDtype || 'f32'),
      no_reply: !!opts.noReply,
    };
    if (opts.lr !== undefined && opts.lr !== null) base.lr = { value: Number(opts.lr) };
    let reply = null;
    if (!opts.noReply) {
      reply = new Promise((resolve, reject) => {
        if (!this._waiting.has(name)) this._waiting.set(name, []);
        this._waiting.get(name).push({ resolve, reject });
        this._pending += 1;
      });
      reply.catch(() => {});  // rejected with the stream's error; surfaced below
    }
    for (const chunk of chunks) await this._write({ ...base, chunk });
    return reply;
  }

  /** Half-close after every push has been answered; resolves when the daemon ends the call with
   *  OK, rejects with its status otherwise. */
  async close() {
    if (this._error) throw this._error;
    if (!this._closing) {
      this._closing = true;
      this._call.end();
    }
    await this._done;
  }

  /** Abandon the call (the daemon discards incomplete pushes of this stream). */
  cancel() {
    this._closing = true;
    this._call.cancel();
  }

  get failed() { return this._error !== null; }
  get pending() { return this._pending; }
}

// ---------------------------------------------------------------------------------------------
// security: TLS credentials and the bearer token

// A PEM file is a few KiB (a CA bundle some hundred): a larger one is the wrong file.
const PEM_MAX = 16 << 20;

/** PEM Buffer of a tls* option: a Buffer (or Uint8Array) is the PEM itself, a string names a
 *  file. Checked here so that a wrong option fails at once, not as an opaque handshake error at
 *  the first call. */
function readPem(value, what) {
  if (value === undefined || value === null) return null;
  let data;
  let where;
  if (value instanceof Uint8Array) {
    data = Buffer.from(value);
    where = `${what} (Buffer)`;
  } else if (typeof value === 'string') {
    try {
      if (fs.statSync(value).size > PEM_MAX) {
        throw new RangeError(`${what} '${value}' is larger than ${PEM_MAX >> 20} MiB: not a ` +
                             'PEM file');
      }
      data = fs.readFileSync(value);
    } catch (e) {
      if (e instanceof RangeError) throw e;
      const err = new Error(`cannot read ${what} '${value}': ${e.message}`);
      err.code = e.code;  // ENOENT, EACCES, EISDIR, ...
      throw err;
    }
    where = `${what} '${value}'`;
  } else {
    throw new TypeError(`${what} must be a file path (string) or PEM Buffer`);
  }
  if (!data.includes('-----BEGIN ')) throw new RangeError(`${where} holds no PEM block`);
  return data;
}

/** Channel credentials of the client options: options.credentials, TLS from the tls* options,
 *  or insecure. */
function channelCredentials(options) {
  const tls = Boolean(options.tls) || [options.tlsCa, options.tlsCert, options.tlsKey,
    options.tlsServerName].some((v) => v !== undefined && v !== null);
  if (!tls) return options.credentials || grpc.credentials.createInsecure();
  if (options.credentials) {
    throw new TypeError('give either credentials or the tls* options, not both');
  }
  const hasCert = options.tlsCert !== undefined && options.tlsCert !== null;
  const hasKey = options.tlsKey !== undefined && options.tlsKey !== null;
  if (hasCert !== hasKey) {
    throw new TypeError('tlsCert and tlsKey go together (a client certificate and its key)');
  }
  const name = options.tlsServerName;
  if (name !== undefined && name !== null && (typeof name !== 'string' || name === '')) {
    throw new TypeError('tlsServerName must be a non-empty string');
  }
  return grpc.credentials.createSsl(readPem(options.tlsCa, 'tlsCa'),
                                    readPem(options.tlsKey, 'tlsKey'),
                                    readPem(options.tlsCert, 'tlsCert'));
}

/** "Bearer <token>" for options.token, null without one (undefined, null or ''). */
function bearer(token) {
  if (token === undefined || token === null || token === '') return null;
  if (typeof token !== 'string') throw new TypeError('token must be a string');
  // grpc-js would refuse other characters in a header value at every call instead
  if (!/^[\x20-\x7e]*$/.test(token)) {
    throw new TypeError('token must be printable ASCII (an HTTP/2 header value)');
  }
  return `Bearer ${token}`;
}

// ---------------------------------------------------------------------------------------------
// the client

/** new Client(address = "127.0.0.1:50051", options)
 *  options: timeoutMs (deadline of unary calls, 60000), chunkBytes (data per chunk sent, 1 MiB),
 *  maxMessageBytes (channel send/receive limit, 64 MiB), listPageSize (parameters per List
 *  reply while list() collects them, 1000; 0: all in one reply, which fails once the list
 *  outgrows maxMessageBytes or the daemon's send limit), retries (4) and backoffMs (100):
 *  exponential-backoff retries on UNAVAILABLE for idempotent calls (register, describe, list,
 *  pull, setConfig, checkpoint, health); credentials (grpc.credentials, default insecure);
 *  channelOptions (extra grpc-js channel options); protoDir (see loadProtos).
 *  Security: token (sent as "authorization: Bearer <token>" on every orthod.v1.Optimizer call,
 *  not on health checks); tls (true: TLS with the default roots); tlsCa (the CA that verifies
 *  the daemon), tlsCert and tlsKey (both or neither: the client certificate and key for mutual
 *  TLS), each a file path or a Buffer holding the PEM, any of them implying TLS; tlsServerName
 *  (the name checked in the daemon's certificate instead of the address's host). Files are read
 *  in the constructor: problems throw there (Error with .code for a file, TypeError/RangeError
 *  for bad options); TLS failures with the daemon reject calls with UNAVAILABLE. */
class Client {
  constructor(address = DEFAULT_ADDRESS, options = {}) {
    const protos = loadProtos(options.protoDir);
    this.address = address;
    this.timeoutMs = options.timeoutMs !== undefined ? options.timeoutMs : 60000;
    this.chunkBytes = options.chunkBytes || (1 << 20);
    this.retries = options.retries !== undefined ? options.retries : 4;
    this.backoffMs = options.backoffMs !== undefined ? options.backoffMs : 100;
    this.listPageSize = options.listPageSize !== undefined
      ? pageSizeArg(options.listPageSize, 'listPageSize') : 1000;
    const maxMsg = options.maxMessageBytes || (64 << 20);
    this._auth = bearer(options.token);
    const creds = channelCredentials(options);
    const channelOptions = {
      'grpc.max_receive_message_length': maxMsg,
      'grpc.max_send_message_length': maxMsg,
      // docs/PROTOCOL.md "Connections": keep silent Step streams (SYNC waits) alive
      'grpc.keepalive_time_ms': 30000,
      'grpc.keepalive_timeout_ms': 20000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.http2.max_pings_without_data': 0,
      ...(options.tlsServerName ? { 'grpc.ssl_target_name_override': options.tlsServerName }
        : {}),
      ...(options.channelOptions || {}),
    };
    this._stub = new protos.Optimizer(address, creds, channelOptions);
    // the health stub shares the channel of the optimizer stub
    this._health = new protos.Health(address, creds, { ...channelOptions,
      channelOverride: this._stub.getChannel() });
    this._stepStream = null;
  }

  /** Metadata of a call: the protocol version, and the token unless withAuth is false (health
   *  checks, which the daemon answers without one). */
  _metadata(withAuth = true) {
    const md = new grpc.Metadata();
    md.set(VERSION_KEY, PROTOCOL_VERSION);
    if (withAuth && this._auth) md.set('authorization', this._auth);
    return md;
  }

  _deadline() {
    return this.timeoutMs > 0 ? { deadline: Date.now() + this.timeoutMs } : {};
  }

  async _retry(fn) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        const e = wrapError(err);
        if (!(e instanceof OrthodError) || e.code !== grpc.status.UNAVAILABLE ||
            attempt >= this.retries) {
          throw e;
        }
        await new Promise((r) => setTimeout(r, this.backoffMs * 2 ** attempt));
      }
    }
  }

  /** One unary call; withAuth false for health checks (see _metadata). */
  _unary(stub, method, req, withAuth = true) {
    return new Promise((resolve, reject) => {
      stub[method](req, this._metadata(withAuth), this._deadline(), (err, res) => {
        if (err) reject(wrapError(err)); else resolve(res);
      });
    });
  }

  /** Register a parameter; resolves with its info (see infoFromProto) plus `created`.
   *  opts: algorithm ("" = the daemon's choice), options ({key: value}), workers, syncMode
   *  ("sync" | "async"), maxStaleness, syncTimeoutMs. Idempotent for an identical spec. */
  async register(name, shape, opts = {}) {
    const spec = {
      name,
      shape: shape.map((d) => u64Arg(d, 'shape dimension')),
      algorithm: opts.algorithm || '',
      options: optionsToProto(opts.options),
      workers: opts.workers || 0,
      sync_mode: opts.syncMode ? (SYNC_MODES[opts.syncMode] || opts.syncMode)
        : 'SYNC_MODE_UNSPECIFIED',
      max_staleness: u64Arg(opts.maxStaleness || 0, 'maxStaleness'),
      sync_timeout_ms: opts.syncTimeoutMs || 0,
    };
    const res = await this._retry(() => this._unary(this._stub, 'Register', { spec }));
    return { ...infoFromProto(res.info), created: res.created };
  }

  /** Set the weights of one or more parameters in one Upload call (all written at once, or none).
   *  tensors: {name: Float32Array | number[]} (or a Map), flattened row-major.
   *  opts: dtype on the wire ("f32"; or {name: dtype}), chunkBytes. Resolves with {name: info}. */
  upload(tensors, opts = {}) {
    const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
    const chunkBytes = opts.chunkBytes || this.chunkBytes;
    return new Promise((resolve, reject) => {
      let finished = false;
      let wake = null;  // resolves a writer waiting for 'drain' when the call ends instead
      const call = this._stub.Upload(this._metadata(), {}, (err, res) => {
        finished = true;
        if (wake) wake();
        if (err) { reject(wrapError(err)); return; }
        const out = {};
        for (const info of res.params) out[info.spec.name] = infoFromProto(info);
        resolve(out);
      });
      (async () => {
        for (const [name, values] of entries) {
          const dtype = perName(opts.dtype, name) || 'f32';
          for (const chunk of toChunks(values, dtype, chunkBytes)) {
            if (finished) return;
            if (!call.write({ name, chunk })) {
              await new Promise((r) => { wake = r; call.once('drain', r); });
              wake = null;
            }
          }
        }
        call.end();
      })().catch((e) => { call.cancel(); reject(e); });
    });
  }

  /** Current weights. names: array (empty or omitted: every parameter). opts: dtype on the wire.
   *  Resolves with {name: {step, shape, weights: Float32Array}} in the daemon's order. */
  pull(names = [], opts = {}) {
    const req = { names: names || [], dtype: dtypeEnum(opts.dtype || 'f32') };
    return this._retry(() => new Promise((resolve, reject) => {
      const call = this._stub.Pull(req, this._metadata(), {});
      const out = {};
      let asm = null;
      let shape = null;
      let failed = false;
      call.on('data', (r) => {
        if (failed) return;
        try {
          if (!asm || asm.name !== r.name) {
            if (asm) throw protocolError(`Pull of '${asm.name}' ended without a last chunk`);
            if (!r.shape || r.shape.length === 0) {
              throw protocolError(`first Pull chunk of '${r.name}' has no shape`);
            }
            shape = r.shape.map(u64);
            asm = new Assembly(r.name, u64(r.step), shape.reduce((a, b) => a * b, 1));
          }
          asm.add(r.chunk);
          if (r.last) {
            out[r.name] = { step: asm.step, shape, weights: asm.finish() };
            asm = null;
          }
        } catch (e) {
          failed = true;
          call.cancel();
          reject(e);
        }
      });
      call.on('error', (err) => { if (!failed) { failed = true; reject(wrapError(err)); } });
      call.on('end', () => {
        if (failed) return;
        if (asm) reject(protocolError(`Pull of '${asm.name}' ended without a last chunk`));
        else resolve(out);
      });
    }));
  }

  /** Parameters whose name starts with `prefix`, in name order:
   *  {params: [info], deviceBytesUsed, deviceBytesLimit (0: no limit)}. Fetched in pages of
   *  opts.pageSize parameters (default: the client's listPageSize; 0: one reply), one List call
   *  each, retried on its own; the bytes are those of the last page. Parameters registered or
   *  dropped meanwhile may or may not be listed; none is listed twice. */
  async list(prefix = '', opts = {}) {
    const pageSize = opts.pageSize !== undefined && opts.pageSize !== null
      ? pageSizeArg(opts.pageSize, 'pageSize') : this.listPageSize;
    const params = [];
    let token = '';
    let last = null;  // the last name received
    const nameOf = (pi) => (pi.spec && pi.spec.name) || '';
    for (;;) {
      const req = { prefix, page_size: pageSize, page_token: token };
      const res = await this._retry(() => this._unary(this._stub, 'List', req));
      // Pages come in name order: one that does not start after the previous one would repeat
      // parameters, and a token that does not move on would ask for the same page forever.
      // (Compared as UTF-8: the daemon orders names bytewise, JS strings by UTF-16 units.)
      if (res.params.length > 0 && last !== null &&
          Buffer.compare(Buffer.from(nameOf(res.params[0])), Buffer.from(last)) <= 0) {
        throw protocolError(`List page starts at '${nameOf(res.params[0])}', not after ` +
                            `'${last}' where the previous one ended`);
      }
      const next = res.next_page_token || '';
      if (next !== '' && (res.params.length === 0 || next === token)) {
        throw protocolError(`List next_page_token ${JSON.stringify(next.slice(0, 200))} does ` +
                            `not advance (${res.params.length} parameters in its page)`);
      }
      for (const pi of res.params) params.push(infoFromProto(pi));
      if (next === '') {
        return {
          params,
          deviceBytesUsed: u64(res.device_bytes_used),
          deviceBytesLimit: u64(res.device_bytes_limit),
        };
      }
      last = nameOf(res.params[res.params.length - 1]);
      token = next;
    }
  }

  /** One parameter's info. */
  async describe(name) {
    return infoFromProto(await this._retry(() => this._unary(this._stub, 'Describe', { name })));
  }

  /** Remove a parameter; resolves with the step counter it had. Not retried (not idempotent). */
  async drop(name) {
    const res = await this._unary(this._stub, 'Drop', { name });
    return u64(res.step);
  }

  /** Change hyper-parameters ({key: value}); resolves with the info after the change. */
  async setConfig(name, options) {
    const req = { name, options: optionsToProto(options) };
    return infoFromProto(await this._retry(() => this._unary(this._stub, 'SetConfig', req)));
  }

  /** Have the daemon write a checkpoint of every parameter (weights, optimizer state, step
   *  counter, spec) to its state directory; resolves once the file is durable with
   *  {path (the file, on the daemon's machine), sequence (one more than the previous checkpoint
   *  of that directory), parameters, bytes (the file's size)}. Retried on UNAVAILABLE: a
   *  repeated call only writes one more checkpoint (a retry can skip a sequence number). */
  async checkpoint() {
    const res = await this._retry(() => this._unary(this._stub, 'Checkpoint', {}));
    return {
      path: res.path,
      sequence: u64(res.sequence),
      parameters: res.parameters,
      bytes: u64(res.bytes),
    };
  }

  /** grpc.health.v1 Check: "SERVING", "NOT_SERVING", ... */
  async health(service = '') {
    const res = await this._retry(() => this._unary(this._health, 'Check', { service }, false));
    return res.status;
  }

  /** A new Step stream (see StepStream); opts.chunkBytes overrides the client's. */
  openStep(opts = {}) {
    return new StepStream(this, opts);
  }

  /** One training step of several parameters on the client's persistent Step stream (reopened
   *  after an error). grads: {name: Float32Array}; steps: {name: counter} or one counter for all.
   *  opts: as StepStream.push (rank, lr, dtype, replyDtype, chunkBytes); lr, dtype and
   *  replyDtype may also be objects {name: value} (a name left out: the default). Resolves with
   *  {name: {step, weights, chunks}}; rejects with the first OrthodError. */
  async step(grads, steps, opts = {}) {
    if (!this._stepStream || this._stepStream.failed) this._stepStream = this.openStep();
    const s = this._stepStream;
    const entries = grads instanceof Map ? [...grads] : Object.entries(grads);
    const replies = [];
    for (const [name, g] of entries) {
      const st = perName(steps, name);
      if (st === undefined) throw new RangeError(`no step counter given for '${name}'`);
      replies.push(s.push(name, st, g, {
        ...opts,
        lr: perName(opts.lr, name),
        dtype: perName(opts.dtype, name),
        replyDtype: perName(opts.replyDtype, name),
        noReply: false,
      }));
    }
    const out = {};
    for (const r of await Promise.all(replies)) {
      out[r.name] = { step: r.step, weights: r.weights, chunks: r.chunks };
    }
    return out;
  }

  /** Close the persistent Step stream (if any) and the channel. */
  async close() {
    const s = this._stepStream;
    this._stepStream = null;
    if (s && !s.failed) {
      try { await s.close(); } catch (e) { /* the channel closes anyway */ }
    }
    this._stub.close();
  }
}

module.exports = {
  Client,
  StepStream,
  OrthodError,
  PROTOCOL_VERSION,
  VERSION_KEY,
  status: grpc.status,
  encode,
  decode,
  roundBf16,
  toChunks,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f16BitsToF32,
  loadProtos,
};
