import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { connect, type ClientHttp2Session } from 'node:http2';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { CHECK_PATH, loadAuthorizationService } from '../services/ext-authz/envoy-check';
import { EXT_AUTHZ_ENV, EXT_AUTHZ_NODE_FLAGS } from '../services/ext-authz/node-flags';
import { envoyCheckRequest, startAuthorityProcess, startExtAuthzProcess } from './support';

/**
 * ext-authz's memory under many distinct tokens (issue 18 item 3): BENCH_KEYS API keys (1,000),
 * BENCH_TOKENS distinct tokens issued by the authority's token endpoint (100,000, spread over
 * the keys), then BENCH_CHECKS Checks (1,000,000) over gRPC (node:http2, CONCURRENCY in flight,
 * the tokens in turn), against ext-authz in its own process with the shipped policies. Prints
 * ext-authz's RSS, heap, external and array buffers before, at the peak (VmHWM, and VmRSS sampled
 * every 100 ms) and after the load (then after a full GC), CPU per Check, and a heap snapshot's
 * biggest groups by constructor.
 *
 *   npm run build && flock /work/.heavy.lock node dist/bench/ext-authz-memory.js
 *
 * ext-authz runs with the node flags it ships with (services/ext-authz/node-flags.ts), or with
 * EXT_AUTHZ_NODE_FLAGS instead ('' for none: to measure V8 settings);
 * EXT_AUTHZ_ENV='CACHE_SIZE=0 ...' adds settings; EXT_AUTHZ_VARIANTS runs several on the same tokens (see
 * variants()). BENCH_SNAPSHOT=0 skips the heap snapshot.
 * Bounded: token issuance stops at ISSUE_LIMIT_MS, the Checks at CHECK_LIMIT_MS.
 */
const KEYS = Number(process.env.BENCH_KEYS ?? 1_000);
const TOKENS = Number(process.env.BENCH_TOKENS ?? 100_000);
const CHECKS = Number(process.env.BENCH_CHECKS ?? 1_000_000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const SESSIONS = 2;
const ISSUE_IN_FLIGHT = 16;
const ISSUE_LIMIT_MS = 240_000;
const CHECK_LIMIT_MS = 300_000;
const SNAPSHOT = process.env.BENCH_SNAPSHOT !== '0';
const MB = 1024 * 1024;
const TICKS_PER_SECOND = 100; // Linux USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s

const secretOf = (clientId: string) => `${clientId}-secret-0123456789-abcdefghijklmnopqrstuvwxyz`;
const mb = (bytes: number) => `${(bytes / MB).toFixed(1)} MB`;

// ---------------------------------------------------------------------------------------------
// ext-authz in its own process, with the memory probe preloaded

interface Probed {
  child: ChildProcess;
  url: string;
  grpcAddress: string;
  ask<T>(message: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  stop(): Promise<void>;
}

/** How ext-authz is started: node flags and settings (environment) added to the bench's own. */
interface Variant {
  label: string;
  flags: string[];
  env: Record<string, string>;
  /** ext-authz's main.js of another build (tree=<its dist>), to compare builds on the same tokens. */
  main?: string;
}

const words = (text: string) => text.split(/\s+/).filter(Boolean);
const settings = (text: string) =>
  Object.fromEntries(words(text).map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]));

/**
 * EXT_AUTHZ_VARIANTS='shipped; shipped MALLOC_ARENA_MAX=2; --max-semi-space-size=4': each variant
 * (separated by ;) a fresh ext-authz on the same tokens, its words node flags (--...), settings
 * (NAME=value), `shipped` (the shipped flags and environment, EXT_AUTHZ_ENV of node-flags.ts:
 * MALLOC_ARENA_MAX=2; settings after it override) or `tree=<dist>` (ext-authz of another build, e.g.
 * main's, by its dist folder: before/after a change in one run). Without it, one variant: EXT_AUTHZ_NODE_FLAGS
 * (default: the shipped flags) and EXT_AUTHZ_ENV (default: the shipped environment).
 */
function variants(): Variant[] {
  const list = process.env.EXT_AUTHZ_VARIANTS;
  if (!list) {
    const flags = words(process.env.EXT_AUTHZ_NODE_FLAGS ?? EXT_AUTHZ_NODE_FLAGS.join(' '));
    const envText =
      process.env.EXT_AUTHZ_ENV ??
      Object.entries(EXT_AUTHZ_ENV)
        .map(([name, value]) => `${name}=${value}`)
        .join(' ');
    return [{ label: [...flags, ...words(envText)].join(' ') || '(none)', flags, env: settings(envText) }];
  }
  return list
    .split(';')
    .map((text) => text.trim())
    .filter(Boolean)
    .map((text) => {
      const parts = words(text);
      const flags = parts.flatMap((word) => (word === 'shipped' ? [...EXT_AUTHZ_NODE_FLAGS] : word.startsWith('--') ? [word] : []));
      const tree = parts.find((word) => word.startsWith('tree='))?.slice('tree='.length);
      const env = {
        ...(parts.includes('shipped') ? EXT_AUTHZ_ENV : {}),
        ...settings(parts.filter((word) => !word.startsWith('--') && !word.startsWith('tree=') && word.includes('=')).join(' ')),
      };
      return { label: text, flags, env, main: tree ? resolve(tree, 'services/ext-authz/main.js') : undefined };
    });
}

async function startProbedExtAuthz(authority: { grpcAddress: string; adminToken: string }, variant: Variant): Promise<Probed> {
  const { flags, env: extra } = variant;
  // No NODE_OPTIONS of this shell: ext-authz runs with the flags above alone.
  const spawned = await startExtAuthzProcess(
    authority,
    { NODE_OPTIONS: '', ...extra },
    { nodeArgs: [...flags, '--require', resolve(__dirname, 'memory-probe.js')], ipc: true, main: variant.main },
  );
  const child = spawned.child;
  const ask = <T>(message: Record<string, unknown>, timeoutMs = 10_000) =>
    new Promise<T>((done, fail) => {
      const timer = setTimeout(
        () => (child.off('message', onMessage), fail(new Error(`no answer to ${JSON.stringify(message)}`))),
        timeoutMs,
      );
      const onMessage = (answer: { memory?: string } & T) => {
        if (answer?.memory !== message.memory) return;
        clearTimeout(timer);
        child.off('message', onMessage);
        done(answer);
      };
      child.on('message', onMessage);
      child.send(message);
    });
  return { child, url: spawned.url, grpcAddress: spawned.grpcAddress, ask, stop: spawned.stop };
}

interface Usage {
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
  spaces: Record<string, { used: number; physical: number }>;
}

function procStatus(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** User + system CPU seconds of a process so far. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
}

/** The process's biggest mappings by resident size (/proc/<pid>/smaps): V8's heap pages, malloc arenas, code. */
function topMappings(pid: number, top = 8): void {
  const mappings: { name: string; rss: number; size: number }[] = [];
  let current: { name: string; rss: number; size: number } | undefined;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      current = { name: header[3] || '[anonymous]', rss: 0, size: Number.parseInt(header[2], 16) - Number.parseInt(header[1], 16) };
      mappings.push(current);
    } else if (current && line.startsWith('Rss:')) current.rss = Number(/(\d+)/.exec(line)?.[1]) * 1024;
  }
  const byName = new Map<string, { rss: number; count: number; big: number }>();
  for (const mapping of mappings) {
    // Anonymous mappings of 1 MB and more (V8's pages, malloc's arenas) apart from the small ones.
    const name = mapping.name === '[anonymous]' ? (mapping.size >= MB ? '[anonymous ≥ 1 MB]' : '[anonymous < 1 MB]') : mapping.name;
    const entry = byName.get(name) ?? { rss: 0, count: 0, big: 0 };
    entry.rss += mapping.rss;
    entry.count += 1;
    entry.big = Math.max(entry.big, mapping.rss);
    byName.set(name, entry);
  }
  const rows = [...byName].sort((a, b) => b[1].rss - a[1].rss).slice(0, top);
  if (process.env.BENCH_SMAPS_SIZES) {
    const bySize = new Map<number, { rss: number; count: number }>();
    for (const mapping of mappings.filter((m) => m.name === '[anonymous]')) {
      const entry = bySize.get(mapping.size) ?? { rss: 0, count: 0 };
      entry.rss += mapping.rss;
      entry.count += 1;
      bySize.set(mapping.size, entry);
    }
    console.log(
      [...bySize]
        .sort((a, b) => b[1].rss - a[1].rss)
        .slice(0, 12)
        .map(([size, e]) => `${(size / 1024).toFixed(0)}K×${e.count}=${mb(e.rss)}`)
        .join(' '),
    );
  }
  console.log(
    `  ${''.padEnd(22)} resident by mapping: ${rows.map(([name, entry]) => `${name.split('/').pop()} ${mb(entry.rss)} (${entry.count}, largest ${mb(entry.big)})`).join('; ')}`,
  );
}

function usageLine(label: string, usage: Usage, status: { rss: number; hwm: number }): void {
  console.log(
    `  ${label.padEnd(22)} RSS ${mb(status.rss).padStart(9)}  heapUsed ${mb(usage.heapUsed).padStart(9)}  heapTotal ${mb(usage.heapTotal).padStart(9)}  external ${mb(usage.external).padStart(8)}  arrayBuffers ${mb(usage.arrayBuffers).padStart(8)}`,
  );
  const spaces = Object.entries(usage.spaces)
    .filter(([, space]) => space.physical >= MB)
    .map(([name, space]) => `${name.replace(/_space$/, '')} ${(space.used / MB).toFixed(1)}/${(space.physical / MB).toFixed(1)}`);
  console.log(`  ${''.padEnd(22)} V8 spaces, used/resident MB: ${spaces.join('  ')}`);
}

// ---------------------------------------------------------------------------------------------
// Setup through the authority's APIs

async function inParallel(count: number, inFlight: number, limitMs: number, work: (index: number) => Promise<void>): Promise<number> {
  let next = 0;
  let done = 0;
  const deadline = performance.now() + limitMs;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < count && performance.now() < deadline) {
        const index = next++;
        await work(index);
        done += 1;
      }
    }),
  );
  return done;
}

async function createKeys(authority: { url: string; adminToken: string }): Promise<string[]> {
  const ids = Array.from({ length: KEYS }, (_, index) => `mem-${String(index).padStart(5, '0')}`);
  await inParallel(ids.length, 8, 120_000, async (index) => {
    const clientId = ids[index];
    const response = await fetch(`${authority.url}/api/apikeys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${authority.adminToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        clientId,
        clientSecret: secretOf(clientId),
        clientName: `Memory bench application ${index}`,
        authorizedEntities: ['route_foo'],
        scope: 'read write',
        metadata: { team: `team-${index % 50}` },
        tags: ['bench'],
      }),
    });
    if (!response.ok) throw new Error(`create ${clientId}: ${response.status} ${await response.text()}`);
  });
  return ids;
}

async function issueTokens(authority: { url: string }, ids: string[]): Promise<string[]> {
  const tokens: string[] = [];
  let failures = 0;
  const started = performance.now();
  await inParallel(TOKENS, ISSUE_IN_FLIGHT, ISSUE_LIMIT_MS, async (index) => {
    const clientId = ids[index % ids.length];
    const response = await fetch(`${authority.url}/.well-known/otoroshi/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: secretOf(clientId) }).toString(),
    });
    if (!response.ok) {
      failures += 1;
      return;
    }
    tokens.push(((await response.json()) as { access_token: string }).access_token);
  });
  const elapsed = (performance.now() - started) / 1000;
  const average = tokens.reduce((sum, token) => sum + token.length, 0) / Math.max(1, tokens.length);
  console.log(
    `  ${tokens.length} tokens issued in ${elapsed.toFixed(1)} s (${Math.round(tokens.length / elapsed)}/s, ${failures} failed), ${average.toFixed(0)} characters each on average`,
  );
  if (tokens.length < TOKENS) console.log(`  (fewer than ${TOKENS}: the issuance stopped at its ${ISSUE_LIMIT_MS / 1000} s bound)`);
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Checks over node:http2

/** Envoy-shaped CheckRequests (bench/support.ts), one per token: serialized once per token length, the token's bytes put in place. */
function checkFrames(tokens: string[]): Buffer[] {
  const templates = new Map<number, { frame: Buffer; at: number }>();
  return tokens.map((token) => {
    let template = templates.get(token.length);
    if (!template) {
      const frame = envoyCheckRequest(token);
      template = { frame, at: frame.indexOf(token, 0, 'latin1') };
      templates.set(token.length, template);
    }
    const frame = Buffer.from(template.frame);
    frame.write(token, template.at, 'latin1');
    return frame;
  });
}

interface CheckRun {
  sent: number;
  /** Answered with grpc-status 0. */
  answered: number;
  errors: number;
  /** Of the answers decoded, allowed and denied. */
  allowed: number;
  denied: number;
  seconds: number;
  cpu: number;
  peakSampledRss: number;
}

async function runChecks(extAuthz: Probed, frames: Buffer[]): Promise<CheckRun> {
  const decode = loadAuthorizationService().Check.responseDeserialize;
  const sessions: ClientHttp2Session[] = Array.from({ length: SESSIONS }, () => connect(`http://${extAuthz.grpcAddress}`));
  const pid = extAuthz.child.pid!;
  let peakSampledRss = 0;
  const sampler = setInterval(() => (peakSampledRss = Math.max(peakSampledRss, procStatus(pid).rss)), 100);
  const run = { sent: 0, answered: 0, errors: 0, allowed: 0, denied: 0 };
  const cpuBefore = cpuSeconds(pid);
  const started = performance.now();
  const deadline = started + CHECK_LIMIT_MS;
  const one = (session: ClientHttp2Session, frame: Buffer, inspect: boolean) =>
    new Promise<void>((done) => {
      const stream = session.request({ ':method': 'POST', ':path': CHECK_PATH, 'content-type': 'application/grpc', te: 'trailers' });
      const chunks: Buffer[] = [];
      let status: string | undefined;
      stream.on('response', (headers) => (status = headers['grpc-status'] as string | undefined));
      stream.on('trailers', (trailers) => (status = trailers['grpc-status'] as string | undefined));
      stream.on('data', (chunk: Buffer) => inspect && chunks.push(chunk));
      stream.on('error', () => undefined);
      stream.on('close', () => {
        if (status !== '0') run.errors += 1;
        else {
          run.answered += 1;
          if (inspect) {
            const answer = decode(Buffer.concat(chunks).subarray(5)) as { status?: { code?: number } };
            if ((answer.status?.code ?? 0) === 0) run.allowed += 1;
            else run.denied += 1;
          }
        }
        done();
      });
      stream.end(frame);
    });
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, worker) => {
      const session = sessions[worker % SESSIONS];
      while (run.sent < CHECKS && performance.now() < deadline) {
        const index = run.sent++;
        // One answer in 97 is decoded: the tokens must be allowed, not merely answered.
        await one(session, frames[index % frames.length], index % 97 === 0);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const cpu = cpuSeconds(pid) - cpuBefore;
  clearInterval(sampler);
  for (const session of sessions) session.close();
  return { ...run, seconds, cpu, peakSampledRss };
}

// ---------------------------------------------------------------------------------------------
// Heap snapshot: self sizes grouped by constructor (objects) or node type (strings, code, arrays)

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

function summarizeSnapshot(path: string, top = 16): void {
  const size = statSync(path).size;
  const snapshot = JSON.parse(readFileSync(path, 'utf8')) as Snapshot;
  const fields = snapshot.snapshot.meta.node_fields;
  const types = snapshot.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  const groups = new Map<string, { bytes: number; count: number }>();
  let total = 0;
  for (let offset = 0; offset < snapshot.nodes.length; offset += width) {
    const type = types[snapshot.nodes[offset + typeAt]];
    const bytes = snapshot.nodes[offset + sizeAt];
    total += bytes;
    const name = snapshot.strings[snapshot.nodes[offset + nameAt]];
    const key =
      type === 'object' || type === 'native'
        ? `${type} ${name.length > 40 ? `${name.slice(0, 40)}…` : name}`
        : type === 'hidden' || type === 'array'
          ? `${type} ${name.slice(0, 40)}`
          : type;
    const group = groups.get(key) ?? { bytes: 0, count: 0 };
    group.bytes += bytes;
    group.count += 1;
    groups.set(key, group);
  }
  console.log(`  heap snapshot: ${mb(total)} in ${snapshot.nodes.length / width} nodes (file ${mb(size)}); biggest groups by self size:`);
  for (const [key, group] of [...groups].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, top))
    console.log(
      `    ${key.padEnd(56)} ${mb(group.bytes).padStart(9)}  ${String(group.count).padStart(8)} nodes  ${(group.bytes / group.count).toFixed(0).padStart(6)} B each`,
    );
}

// ---------------------------------------------------------------------------------------------

interface Measured {
  label: string;
  before: number;
  peak: number;
  after5: number;
  after20: number;
  heapAfterGc: number;
  perSecond: number;
  cpuMicros: number;
}

/** One ext-authz started as the variant says, its memory before, during and after the Checks. */
async function measure(authority: { grpcAddress: string; adminToken: string }, frames: Buffer[], variant: Variant, snapshotDir: string) {
  console.log(`ext-authz: ${variant.label}`);
  const extAuthz = await startProbedExtAuthz(authority, variant);
  try {
    const pid = extAuthz.child.pid!;
    await sleep(1_000);
    const before = procStatus(pid);
    usageLine('before (idle, ready)', await extAuthz.ask<Usage>({ memory: 'usage' }), before);
    topMappings(pid);

    const sampling = process.env.BENCH_ALLOCATIONS === '1';
    if (sampling) await extAuthz.ask({ memory: 'sample-start' });
    const run = await runChecks(extAuthz, frames);
    if (sampling) {
      const { total, sites } = await extAuthz.ask<{ total: number; sites: [string, number][] }>({ memory: 'sample-stop' }, 60_000);
      console.log(`  allocated during the load (sampled): ${mb(total)} = ${(total / run.sent).toFixed(0)} B per Check; by site:`);
      for (const [site, bytes] of sites) console.log(`    ${(bytes / run.sent).toFixed(0).padStart(6)} B/Check  ${site}`);
    }
    const peak = procStatus(pid);
    usageLine('right after the load', await extAuthz.ask<Usage>({ memory: 'usage' }), peak);
    console.log(`  peak                   VmHWM ${mb(peak.hwm)}  (VmRSS sampled every 100 ms: max ${mb(run.peakSampledRss)})`);
    await sleep(5_000);
    const after = procStatus(pid);
    usageLine('after 5 s idle', await extAuthz.ask<Usage>({ memory: 'usage' }), after);
    topMappings(pid);
    // V8's memory reducer starts 8 s after the load stops (--gc-memory-reducer-start-delay-ms).
    await sleep(15_000);
    const settled = procStatus(pid);
    usageLine('after 20 s idle', await extAuthz.ask<Usage>({ memory: 'usage' }), settled);
    topMappings(pid);
    const collected = await extAuthz.ask<Usage>({ memory: 'gc' });
    usageLine('after a full GC', collected, procStatus(pid));
    topMappings(pid);
    console.log(
      `  Checks: ${run.sent} sent in ${run.seconds.toFixed(1)} s = ${Math.round(run.sent / run.seconds)}/s; grpc-status 0: ${run.answered}, other: ${run.errors}; of ${run.allowed + run.denied} decoded, ${run.denied} denied; ` +
        `ext-authz CPU ${run.cpu.toFixed(1)} s = ${((run.cpu / run.sent) * 1e6).toFixed(1)} µs per Check`,
    );
    if (run.sent < CHECKS) console.log(`  (fewer than ${CHECKS} Checks: stopped at the ${CHECK_LIMIT_MS / 1000} s bound)`);
    console.log(
      `  goal: RSS after ≤ 150 MB: ${after.rss <= 150 * MB ? 'PASS' : 'MISS'} 5 s after the load (${mb(after.rss)}), ${settled.rss <= 150 * MB ? 'PASS' : 'MISS'} 20 s after (${mb(settled.rss)})`,
    );
    if (SNAPSHOT) {
      const { path } = await extAuthz.ask<{ path: string }>({ memory: 'snapshot', dir: snapshotDir }, 120_000);
      summarizeSnapshot(path);
      rmSync(path, { force: true });
    }
    const measured: Measured = {
      label: variant.label,
      before: before.rss,
      peak: Math.max(peak.hwm, run.peakSampledRss),
      after5: after.rss,
      after20: settled.rss,
      heapAfterGc: collected.heapUsed,
      perSecond: run.sent / run.seconds,
      cpuMicros: (run.cpu / run.sent) * 1e6,
    };
    return measured;
  } finally {
    await extAuthz.stop();
  }
}

async function main() {
  console.log(
    `ext-authz memory: ${KEYS} keys, ${TOKENS} distinct tokens, ${CHECKS} Checks (${CONCURRENCY} in flight on ${SESSIONS} HTTP/2 connections), 127.0.0.1`,
  );
  const list = variants();
  const authority = await startAuthorityProcess();
  const snapshotDir = mkdtempSync(join(tmpdir(), 'ext-authz-heap-'));
  try {
    const ids = await createKeys(authority);
    console.log(`  ${ids.length} API keys created`);
    const tokens = await issueTokens(authority, ids);
    // One CheckRequest serialized, the others made from its bytes: the tokens all have the same length.
    const frames = checkFrames(tokens);
    const results: Measured[] = [];
    for (const variant of list) results.push(await measure(authority, frames, variant, snapshotDir));
    if (results.length > 1) {
      console.log('\nsummary (RSS in MB; peak = VmHWM; heap = heapUsed after a full GC):');
      console.log(
        `  ${'before'.padStart(7)} ${'peak'.padStart(7)} ${'5 s'.padStart(7)} ${'20 s'.padStart(7)} ${'heap'.padStart(6)} ${'Checks/s'.padStart(9)} ${'µs/Check'.padStart(9)}  variant`,
      );
      for (const r of results)
        console.log(
          `  ${(r.before / MB).toFixed(1).padStart(7)} ${(r.peak / MB).toFixed(1).padStart(7)} ${(r.after5 / MB).toFixed(1).padStart(7)} ${(r.after20 / MB).toFixed(1).padStart(7)} ${(r.heapAfterGc / MB).toFixed(1).padStart(6)} ${Math.round(r.perSecond).toString().padStart(9)} ${r.cpuMicros.toFixed(1).padStart(9)}  ${r.label}`,
        );
    }
  } finally {
    await authority.stop();
    rmSync(snapshotDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
