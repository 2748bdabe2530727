import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { hashSecret } from '../libs/core/crypto/secret-hash';
import type { ApiKeyRecord } from '../libs/core/model';
import { SqliteStore } from '../libs/core/store/sqlite-store';
import { EXT_AUTHZ_ENV, EXT_AUTHZ_NODE_FLAGS } from '../services/ext-authz/node-flags';
import { freePort } from './support';

/**
 * The data plane at scale: BENCH_KEYS API keys (100,000 by default) in the authority's store,
 * then the authority and ext-authz as child processes on 127.0.0.1, and the figures that matter
 * once there are that many keys: ext-authz's start, how fast a disable reaches it, the
 * authority's event loop under a steady trickle of changes, another client's token latency
 * under a revocation flood, bulk creation through the admin API, and memory.
 *
 *   npm run build && node dist/bench/data-plane-scale.js          (BENCH_KEYS=100000 by default)
 *
 * Every load loop is bounded in time and in count: about 1.5 minutes on an idle 2-CPU machine,
 * under 4 minutes at worst (the admin-API creates stop at 120 s).
 */
const KEYS = Number(process.env.BENCH_KEYS ?? 100_000);
/** ext-authz's node flags: those it ships with, or EXT_AUTHZ_NODE_FLAGS ('' for none) to compare. */
const extAuthzNodeFlags = () => (process.env.EXT_AUTHZ_NODE_FLAGS ?? EXT_AUTHZ_NODE_FLAGS.join(' ')).split(/\s+/).filter(Boolean);
const BULK_BATCH = 10_000;
const DISABLE_KEYS = 20;
const CHANGES_PER_SECOND = 10;
const CHANGES_SECONDS = 15;
const FLOOD_SECONDS = 10;
const FLOOD_IN_FLIGHT = 8;
const ADMIN_CREATES = 30_000;
const ADMIN_CREATE_WORKERS = 16;
const ADMIN_CREATE_LIMIT_MS = 120_000;
const MIN_CHANGES = 1_000;
const ADMIN_TOKEN = 'bench-admin-token-0123456789-abcdef';
const MB = 1024 * 1024;

const TARGETS = {
  extAuthzReadyMs: 5_000,
  disableP99Ms: 1_000,
  loopP99Ms: 50,
  floodRatio: 2,
  adminCreateMs: 60_000,
  extAuthzRssMb: 400,
  authorityRssMb: 500,
};

// ---------------------------------------------------------------------------------------------
// Reporting

interface Row {
  figure: string;
  measured: string;
  target: string;
  pass?: boolean;
}
const rows: Row[] = [];

function verdict(pass: boolean | undefined): string {
  return pass === undefined ? '' : pass ? 'PASS' : 'MISS';
}

/** One line per figure, the target beside it; kept for the summary table. */
function figure(name: string, measured: string, target?: string, pass?: boolean, detail = ''): void {
  rows.push({ figure: name, measured, target: target ?? '', pass });
  const targetText = target ? `  (target ${target})` : '';
  console.log(`  ${name.padEnd(52)} ${measured}${targetText}  ${verdict(pass)}${detail ? `  ${detail}` : ''}`.trimEnd());
}

function info(text: string): void {
  console.log(`    ${text}`);
}

function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function stats(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  return { n: sorted.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? Number.NaN };
}

const ms = (value: number, digits = 1) => `${value.toFixed(digits)} ms`;
const seconds = (valueMs: number) => `${(valueMs / 1000).toFixed(2)} s`;

// ---------------------------------------------------------------------------------------------
// HTTP on 127.0.0.1, keep-alive, every request with a timeout

interface Reply {
  status: number;
  body: string;
  ms: number;
}

const agents = {
  admin: new Agent({ keepAlive: true, maxSockets: 32 }),
  probe: new Agent({ keepAlive: true, maxSockets: 2 }),
  clientA: new Agent({ keepAlive: true, maxSockets: FLOOD_IN_FLIGHT }),
  clientB: new Agent({ keepAlive: true, maxSockets: 1 }),
};

function call(
  agent: Agent,
  url: string,
  method = 'GET',
  headers: Record<string, string> = {},
  body?: string,
  timeoutMs = 10_000,
): Promise<Reply> {
  return new Promise((done, fail) => {
    const started = performance.now();
    const req = httpRequest(
      url,
      { method, agent, headers: body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          done({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), ms: performance.now() - started }),
        );
        res.on('error', fail);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', fail);
    req.end(body);
  });
}

// ---------------------------------------------------------------------------------------------
// Child processes: logs kept (pino writes JSON lines to stdout), stopped with SIGTERM

interface Service {
  name: string;
  child: ChildProcess;
  url: string;
  spawnedAt: number;
  logLines: string[];
  logCount: number;
}

const LOG_LINES_KEPT = 40;

function spawnService(
  name: string,
  script: string,
  env: Record<string, string>,
  port: number,
  preload?: string,
  nodeFlags: readonly string[] = [],
): Service {
  const baseEnv = { ...process.env };
  delete baseEnv.CONFIG_FILE; // each service gets exactly the settings given here
  const execArgs = [...nodeFlags, ...(preload ? ['--require', resolve(__dirname, preload)] : [])];
  const spawnedAt = performance.now();
  const child = spawn(process.execPath, [...execArgs, resolve(__dirname, script)], {
    env: { ...baseEnv, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe', ...(preload ? (['ipc'] as const) : [])],
  });
  const service: Service = { name, child, url: `http://127.0.0.1:${port}`, spawnedAt, logLines: [], logCount: 0 };
  const collect = (stream: NodeJS.ReadableStream | null) => {
    let partial = '';
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines.filter((text) => text.trim())) {
        service.logCount += 1;
        if (service.logLines.length < LOG_LINES_KEPT) service.logLines.push(line.length > 400 ? `${line.slice(0, 400)}…` : line);
      }
    });
  };
  collect(child.stdout);
  collect(child.stderr);
  return service;
}

async function stopService(service: Service | undefined): Promise<void> {
  if (!service || service.child.exitCode !== null || service.child.signalCode !== null) return;
  const exited = new Promise<void>((done) => service.child.once('exit', () => done()));
  service.child.kill('SIGTERM');
  const outcome = await Promise.race([exited.then(() => 'exited'), sleep(10_000).then(() => 'timeout')]);
  if (outcome === 'timeout') {
    console.log(`  ${service.name} did not exit within 10 s of SIGTERM; sending SIGKILL`);
    service.child.kill('SIGKILL');
    await Promise.race([exited, sleep(2_000)]);
  }
}

function assertAlive(service: Service): void {
  if (service.child.exitCode !== null || service.child.signalCode !== null) {
    throw new Error(
      `${service.name} exited (${service.child.exitCode ?? service.child.signalCode}); its log:\n${service.logLines.join('\n')}`,
    );
  }
}

interface ProbeReading {
  count: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  resolutionMs: number;
}

/** Talks to bench/eventloop-probe.ts inside the child. */
function probe(service: Service, command: 'reset' | 'read'): Promise<ProbeReading | undefined> {
  if (!service.child.send) return Promise.resolve(undefined);
  return new Promise((done) => {
    const timer = setTimeout(() => (service.child.off('message', onMessage), done(undefined)), 2_000);
    const onMessage = (message: { probe?: string } & ProbeReading) => {
      if (message?.probe !== command) return;
      clearTimeout(timer);
      service.child.off('message', onMessage);
      done(command === 'read' ? message : undefined);
    };
    service.child.on('message', onMessage);
    service.child.send!({ probe: command });
  });
}

/** Polls `url` every `everyMs` until `accept` says yes; bounded by `limitMs`. */
async function pollUntil<T>(limitMs: number, everyMs: number, attempt: () => Promise<T | undefined>): Promise<T | undefined> {
  const deadline = performance.now() + limitMs;
  while (performance.now() < deadline) {
    try {
      const result = await attempt();
      if (result !== undefined) return result;
    } catch {
      // not listening yet
    }
    await sleep(everyMs);
  }
  return undefined;
}

function metricValue(text: string, name: string): number | undefined {
  const match = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, 'm').exec(text);
  return match ? Number(match[1]) : undefined;
}

function procStatus(pid: number | undefined): { rssMb: number; peakMb: number } | undefined {
  if (!pid) return undefined;
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
    return { rssMb: kb('VmRSS') / 1024, peakMb: kb('VmHWM') / 1024 };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The authority's API

const admin = (service: Service) => ({
  headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
  async post(path: string, body: unknown): Promise<Reply> {
    return call(agents.admin, `${service.url}${path}`, 'POST', this.headers, JSON.stringify(body));
  },
  async patch(path: string, body: unknown): Promise<Reply> {
    return call(agents.admin, `${service.url}${path}`, 'PATCH', this.headers, JSON.stringify(body));
  },
});

const TOKEN_PATH = '/.well-known/otoroshi/oauth/token';
const REVOKE_PATH = '/.well-known/otoroshi/oauth/token/revoke';
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

function secretOf(clientId: string): string {
  return `${clientId}-secret-0123456789-abcdefghijklmnopqrstuvwxyz`; // ≥ 32 characters: the fast SHA-256 scheme
}

async function requestToken(agent: Agent, authority: Service, clientId: string): Promise<Reply & { token?: string }> {
  const body = new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: secretOf(clientId) }).toString();
  const reply = await call(agent, `${authority.url}${TOKEN_PATH}`, 'POST', FORM, body);
  return { ...reply, token: reply.status === 200 ? (JSON.parse(reply.body) as { access_token: string }).access_token : undefined };
}

function basic(clientId: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secretOf(clientId))}`).toString('base64')}`;
}

// ---------------------------------------------------------------------------------------------
// Steps

function bulkRecord(index: number, secretHash: string, now: number): ApiKeyRecord {
  const id = `bulk-${String(index).padStart(7, '0')}`;
  const entities = [['route_foo'], ['route_foo', 'group_partners'], ['route_bar', 'route_foo', 'group_internal']][index % 3];
  return {
    clientId: id,
    secretHash,
    clientName: `Partner application ${index}`,
    description: `Bulk-created key ${index} for the data plane benchmark`,
    authorizedEntities: entities,
    enabled: true,
    validUntil: null,
    metadata: { team: `team-${index % 50}`, env: index % 4 === 0 ? 'staging' : 'prod', owner: `owner-${index % 997}@example.com` },
    tags: ['partner', `tier-${index % 3}`],
    scope: ['read', 'write'],
    allowClientIdOnly: false,
    rotation: { enabled: false, rotationEvery: 744, gracePeriod: 168 },
    throttlingQuota: 10_000_000,
    dailyQuota: 10_000_000,
    monthlyQuota: 10_000_000,
    createdAt: now,
    updatedAt: now,
  };
}

async function bulkCreate(storePath: string): Promise<void> {
  console.log(`\n1. Setup: ${KEYS} API keys created in the store in batches of ${BULK_BATCH}`);
  const started = performance.now();
  const store = new SqliteStore(storePath);
  try {
    // One long secret hashed once, its hash shared by every bulk key (the hash scheme is SHA-256 anyway).
    const secretHash = await hashSecret(secretOf('bulk-shared'));
    const now = Date.now();
    for (let from = 0; from < KEYS; from += BULK_BATCH) {
      const records: ApiKeyRecord[] = [];
      for (let index = from; index < Math.min(KEYS, from + BULK_BATCH); index += 1) records.push(bulkRecord(index, secretHash, now));
      await store.apiKeys.createMany(records);
    }
  } finally {
    await store.close();
  }
  const elapsed = performance.now() - started;
  figure('bulk creation through the store', `${seconds(elapsed)}`, undefined, undefined, `(${Math.round(KEYS / (elapsed / 1000))} keys/s)`);
}

async function measureDisable(authority: Service, extAuthz: Service, changes: { count: number }): Promise<void> {
  console.log(`\n3. Disable → denied at ext-authz, ${DISABLE_KEYS} keys (PATCH enabled:false, then GET /authz/foo every 5 ms)`);
  const api = admin(authority);
  const tokens: { clientId: string; token: string }[] = [];
  for (let index = 0; index < DISABLE_KEYS; index += 1) {
    const clientId = `disable-${index}`;
    const created = await api.post('/api/apikeys', {
      clientId,
      clientSecret: secretOf(clientId),
      clientName: `disable test ${index}`,
      authorizedEntities: ['route_foo'],
      scope: 'read',
      tags: ['bench'],
    });
    if (created.status !== 200 && created.status !== 201) throw new Error(`create ${clientId}: ${created.status} ${created.body}`);
    changes.count += 1;
    const issued = await requestToken(agents.admin, authority, clientId);
    if (!issued.token) throw new Error(`token for ${clientId}: ${issued.status} ${issued.body}`);
    tokens.push({ clientId, token: issued.token });
  }
  const fromSend: number[] = [];
  const fromAck: number[] = [];
  const patchMs: number[] = [];
  const deniedWith = new Map<number, number>();
  let notAllowedFirst = 0;
  let neverDenied = 0;
  for (const { clientId, token } of tokens) {
    const authz = () => call(agents.probe, `${extAuthz.url}/authz/foo`, 'GET', { authorization: `Bearer ${token}` });
    // The new key must have reached ext-authz first (bounded: 5 s).
    const allowed = await pollUntil(5_000, 5, async () => ((await authz()).status === 200 ? true : undefined));
    if (!allowed) {
      notAllowedFirst += 1;
      continue;
    }
    const sent = performance.now();
    const patching = api.patch(`/api/apikeys/${clientId}`, { enabled: false }).then((reply) => {
      if (reply.status !== 200) throw new Error(`disable ${clientId}: ${reply.status} ${reply.body}`);
      changes.count += 1;
      return performance.now();
    });
    let acknowledged: number | undefined;
    void patching.then(
      (at) => (acknowledged = at),
      () => undefined,
    );
    let denied: { at: number; status: number } | undefined;
    const deadline = sent + 5_000;
    for (let attempt = 0; attempt < 2_000 && performance.now() < deadline; attempt += 1) {
      const reply = await authz();
      if (reply.status !== 200) {
        denied = { at: performance.now(), status: reply.status };
        break;
      }
      await sleep(5);
    }
    const ackAt = await patching;
    acknowledged ??= ackAt;
    patchMs.push(ackAt - sent);
    if (!denied) {
      neverDenied += 1;
      continue;
    }
    deniedWith.set(denied.status, (deniedWith.get(denied.status) ?? 0) + 1);
    fromSend.push(denied.at - sent);
    fromAck.push(Math.max(0, denied.at - acknowledged));
  }
  const s = stats(fromSend);
  const a = stats(fromAck);
  const ok = neverDenied === 0 && notAllowedFirst === 0 && s.n === DISABLE_KEYS;
  figure(
    'disable → denied at ext-authz, p99 (from PATCH sent)',
    ms(s.p99),
    `p99 ≤ ${TARGETS.disableP99Ms} ms`,
    ok && s.p99 <= TARGETS.disableP99Ms,
    `p50 ${ms(s.p50)}  max ${ms(s.max)}  n=${s.n}`,
  );
  info(
    `from the PATCH's 200: p50 ${ms(a.p50)}  p99 ${ms(a.p99)}  max ${ms(a.max)}; PATCH itself p50 ${ms(stats(patchMs).p50)} p99 ${ms(stats(patchMs).p99)}`,
  );
  info(
    `denial statuses: ${[...deniedWith].map(([status, n]) => `${status}×${n}`).join(' ') || 'none'}; not allowed before the disable: ${notAllowedFirst}; never denied within 5 s: ${neverDenied}`,
  );
}

async function scrapeLoop(authority: Service): Promise<{ p99Ms?: number; maxMs?: number }> {
  const reply = await call(agents.probe, `${authority.url}/metrics`);
  if (reply.status !== 200) return {};
  const p99 = metricValue(reply.body, 'token_authority_nodejs_eventloop_lag_p99_seconds');
  const max = metricValue(reply.body, 'token_authority_nodejs_eventloop_lag_max_seconds');
  return { p99Ms: p99 === undefined ? undefined : p99 * 1000, maxMs: max === undefined ? undefined : max * 1000 };
}

async function measureEventLoop(authority: Service, changes: { count: number }): Promise<void> {
  const total = CHANGES_PER_SECOND * CHANGES_SECONDS;
  console.log(
    `\n4. Authority event-loop delay under ${CHANGES_PER_SECOND} changes/s for ${CHANGES_SECONDS} s (PATCH description of a different key each time, ${total} at most)`,
  );
  const api = admin(authority);
  // prom-client resets its histogram on every scrape: a scrape opens a window, the next one closes it.
  const sinceStart = await scrapeLoop(authority);
  await probe(authority, 'reset');
  await sleep(3_000);
  const idleProm = await scrapeLoop(authority);
  const idleOwn = await probe(authority, 'read');
  await probe(authority, 'reset');
  await scrapeLoop(authority);

  const started = performance.now();
  const latencies: number[] = [];
  let failures = 0;
  const inFlight: Promise<void>[] = [];
  for (let index = 0; index < total && performance.now() - started < CHANGES_SECONDS * 1000; index += 1) {
    const due = started + (index * 1000) / CHANGES_PER_SECOND;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    const clientId = `bulk-${String((index * 613) % KEYS).padStart(7, '0')}`;
    inFlight.push(
      api
        .patch(`/api/apikeys/${clientId}`, {
          description: `changed by the event-loop benchmark, change ${index} at ${new Date().toISOString()}`,
        })
        .then(
          (reply) => {
            if (reply.status === 200) {
              changes.count += 1;
              latencies.push(reply.ms);
            } else failures += 1;
          },
          () => void (failures += 1),
        ),
    );
  }
  await Promise.all(inFlight);
  const loadOwn = await probe(authority, 'read');
  const loadProm = await scrapeLoop(authority);
  const elapsed = performance.now() - started;

  const patch = stats(latencies);
  const own = loadOwn ? `own 1 ms sampler p99 ${ms(loadOwn.p99Ms)}` : 'own sampler unavailable';
  const judged = loadOwn?.p99Ms ?? loadProm.p99Ms ?? Number.NaN;
  figure(
    'authority event-loop delay p99 under 10 changes/s',
    ms(judged),
    `p99 ≤ ${TARGETS.loopP99Ms} ms`,
    judged <= TARGETS.loopP99Ms,
    `(${own}; max ${loadOwn ? ms(loadOwn.maxMs) : '?'})`,
  );
  info(
    `prom-client (10 ms resolution, idle reads ≈ 10 ms) during the load: p99 ${ms(loadProm.p99Ms ?? Number.NaN)} max ${ms(loadProm.maxMs ?? Number.NaN)}`,
  );
  info(
    `baseline, 3 s idle just before: own sampler p99 ${ms(idleOwn?.p99Ms ?? Number.NaN)} max ${ms(idleOwn?.maxMs ?? Number.NaN)}; prom-client p99 ${ms(idleProm.p99Ms ?? Number.NaN)} max ${ms(idleProm.maxMs ?? Number.NaN)}`,
  );
  info(
    `prom-client since the authority started (startup with ${KEYS} keys and steps 2–3): p99 ${ms(sinceStart.p99Ms ?? Number.NaN)} max ${ms(sinceStart.maxMs ?? Number.NaN)}`,
  );
  info(
    `${latencies.length} PATCHes in ${seconds(elapsed)} (${failures} failed): latency p50 ${ms(patch.p50)} p99 ${ms(patch.p99)} max ${ms(patch.max)}`,
  );
}

async function tokenLoop(
  authority: Service,
  clientId: string,
  untilMs: number,
  maxRequests: number,
): Promise<{ latencies: number[]; errors: number }> {
  const latencies: number[] = [];
  let errors = 0;
  for (let count = 0; count < maxRequests && performance.now() < untilMs; count += 1) {
    try {
      const reply = await requestToken(agents.clientB, authority, clientId);
      if (reply.status === 200) latencies.push(reply.ms);
      else errors += 1;
    } catch {
      errors += 1;
      await sleep(10);
    }
  }
  return { latencies, errors };
}

async function measureRevocationFlood(authority: Service, changes: { count: number }): Promise<void> {
  console.log(
    `\n5. Client B's token latency (1 request in flight) alone for ${FLOOD_SECONDS} s, then while client A revokes its own tokens every 100 ms (the issue's scenario), then under A's flat-out revocation flood (issue + revoke, ${FLOOD_IN_FLIGHT} in flight), ${FLOOD_SECONDS} s each`,
  );
  const api = admin(authority);
  for (const clientId of ['client-a', 'client-b']) {
    const created = await api.post('/api/apikeys', {
      clientId,
      clientSecret: secretOf(clientId),
      clientName: clientId,
      authorizedEntities: ['route_foo'],
      scope: 'read',
    });
    if (created.status !== 200 && created.status !== 201) throw new Error(`create ${clientId}: ${created.status} ${created.body}`);
    changes.count += 1;
  }
  // Warm-up: a few tokens each (secret verification, keep-alive connections).
  for (let index = 0; index < 20; index += 1) await requestToken(agents.clientB, authority, 'client-b');

  const baseline = await tokenLoop(authority, 'client-b', performance.now() + FLOOD_SECONDS * 1000, 200_000);

  /** Client A, `inFlight` loops: issue a token and (with `revoke`) revoke it, pausing `pauseMs` after each; bounded in time and count. */
  const flood = async (revoke: boolean, inFlight = FLOOD_IN_FLIGHT, pauseMs = 0) => {
    let stop = false;
    let done = 0;
    let errors = 0;
    const cap = 500_000;
    const deadline = performance.now() + FLOOD_SECONDS * 1000 + 1_500;
    const worker = async () => {
      while (!stop && done < cap && performance.now() < deadline) {
        try {
          const issued = await requestToken(agents.clientA, authority, 'client-a');
          if (!issued.token) {
            errors += 1;
            continue;
          }
          if (!revoke) {
            done += 1;
            continue;
          }
          const revoked = await call(
            agents.clientA,
            `${authority.url}${REVOKE_PATH}`,
            'POST',
            { ...FORM, authorization: basic('client-a') },
            new URLSearchParams({ token: issued.token }).toString(),
          );
          if (revoked.status === 200) {
            done += 1;
            changes.count += 1;
          } else errors += 1;
          if (pauseMs) await sleep(pauseMs);
        } catch {
          errors += 1;
          await sleep(10);
        }
      }
    };
    const started = performance.now();
    const workers = Array.from({ length: inFlight }, () => worker());
    await sleep(500); // the flood is under way before B measures
    const doneAtStart = done;
    const measured = await tokenLoop(authority, 'client-b', performance.now() + FLOOD_SECONDS * 1000, 200_000);
    const doneWhileMeasured = done - doneAtStart;
    stop = true;
    await Promise.all(workers);
    return { measured, done, doneWhileMeasured, errors, elapsed: performance.now() - started };
  };

  const b0 = stats(baseline.latencies);
  info(`baseline: ${b0.n} tokens, p50 ${ms(b0.p50, 2)} p99 ${ms(b0.p99, 2)} max ${ms(b0.max, 2)}, errors ${baseline.errors}`);

  // The issue's scenario: an ordinary client revoking its own tokens every 100 ms.
  const paced = await flood(true, 1, 100);
  const bp = stats(paced.measured.latencies);
  const pacedRatio = bp.p99 / b0.p99;
  figure(
    'client B token p99, A revoking every 100 ms / baseline',
    `${pacedRatio.toFixed(2)}×`,
    `≤ ${TARGETS.floodRatio}×`,
    pacedRatio <= TARGETS.floodRatio && paced.measured.errors === 0,
    `(baseline p99 ${ms(b0.p99, 2)}, with A p99 ${ms(bp.p99, 2)}; ${paced.done} revocations)`,
  );

  // Flat out: what one client can do to others without a rate limit (not a target; see the control below).
  const revoking = await flood(true);
  const b1 = stats(revoking.measured.latencies);
  const ratio = b1.p99 / b0.p99;
  figure(
    'client B token p99, flat-out revocation flood / baseline',
    `${ratio.toFixed(2)}×`,
    undefined,
    undefined,
    `(baseline p99 ${ms(b0.p99, 2)}, flood p99 ${ms(b1.p99, 2)})`,
  );
  info(`flood:    ${b1.n} tokens, p50 ${ms(b1.p50, 2)} p99 ${ms(b1.p99, 2)} max ${ms(b1.max, 2)}, errors ${revoking.measured.errors}`);
  figure(
    'client A revocations during the flood',
    `${revoking.done}`,
    undefined,
    undefined,
    `(${Math.round(revoking.done / (revoking.elapsed / 1000))}/s over ${seconds(revoking.elapsed)}; ${revoking.doneWhileMeasured} while B measured; A errors ${revoking.errors})`,
  );

  // Control, not a target: the same A load without the revocations (issue only). If B suffers as
  // much, the cost is sharing one event loop with 8 busy clients, not revocation as such.
  const issuing = await flood(false);
  const b2 = stats(issuing.measured.latencies);
  info(
    `control, A issues only (${FLOOD_IN_FLIGHT} in flight, ${Math.round(issuing.done / (issuing.elapsed / 1000))} tokens/s, no revocations): B p50 ${ms(b2.p50, 2)} p99 ${ms(b2.p99, 2)} → ${(b2.p99 / b0.p99).toFixed(2)}× baseline, errors ${issuing.measured.errors}`,
  );
}

async function measureAdminCreates(
  authority: Service,
  extAuthz: Service,
  changes: { count: number },
  expectedKeys: { count: number },
): Promise<void> {
  console.log(
    `\n6. ${ADMIN_CREATES} API keys created through the admin API by ${ADMIN_CREATE_WORKERS} concurrent clients (server-generated secrets)`,
  );
  const api = admin(authority);
  let next = 0;
  let created = 0;
  let errors = 0;
  let badSecrets = 0;
  const firstErrors: string[] = [];
  const latencies: number[] = [];
  const started = performance.now();
  const deadline = started + ADMIN_CREATE_LIMIT_MS;
  const worker = async (workerIndex: number) => {
    while (next < ADMIN_CREATES && performance.now() < deadline) {
      const index = next++;
      try {
        const reply = await api.post('/api/apikeys', {
          clientName: `Created through the admin API ${index}`,
          description: `worker ${workerIndex}`,
          authorizedEntities: index % 2 ? ['route_foo'] : ['route_foo', 'group_partners'],
          tags: ['admin-api', `batch-${index % 10}`],
          metadata: { team: `team-${index % 50}`, env: 'prod' },
          scope: 'read write',
        });
        if (reply.status === 200 || reply.status === 201) {
          created += 1;
          changes.count += 1;
          latencies.push(reply.ms);
          const secret = (JSON.parse(reply.body) as { clientSecret?: string }).clientSecret;
          if (!secret || secret.length < 32) badSecrets += 1;
        } else {
          errors += 1;
          if (firstErrors.length < 3) firstErrors.push(`${reply.status} ${reply.body.slice(0, 200)}`);
        }
      } catch (error) {
        errors += 1;
        if (firstErrors.length < 3) firstErrors.push(String(error));
        await sleep(10);
      }
    }
  };
  await Promise.all(Array.from({ length: ADMIN_CREATE_WORKERS }, (_, index) => worker(index)));
  const elapsed = performance.now() - started;
  expectedKeys.count += created;
  const complete = created === ADMIN_CREATES;
  const l = stats(latencies);
  figure(
    `${ADMIN_CREATES} admin-API creates, 16 clients`,
    seconds(elapsed),
    `< ${TARGETS.adminCreateMs / 1000} s`,
    complete && elapsed < TARGETS.adminCreateMs,
    `(${Math.round(created / (elapsed / 1000))} keys/s; created ${created}, errors ${errors})`,
  );
  info(
    `create latency p50 ${ms(l.p50)} p99 ${ms(l.p99)} max ${ms(l.max)}; answers without a generated secret of ≥ 32 characters: ${badSecrets}`,
  );
  for (const error of firstErrors) info(`error: ${error}`);

  // Does ext-authz hold them all? (Not a target: a consistency check.)
  const caughtUp = await pollUntil(30_000, 20, async () => {
    const health = await call(agents.probe, `${extAuthz.url}/health`);
    const apiKeys = (JSON.parse(health.body) as { authority?: { apiKeys?: number } }).authority?.apiKeys;
    return apiKeys === expectedKeys.count ? performance.now() : undefined;
  });
  const health = JSON.parse((await call(agents.probe, `${extAuthz.url}/health`)).body) as {
    status: string;
    authority: Record<string, unknown>;
  };
  info(
    caughtUp !== undefined
      ? `ext-authz held all ${expectedKeys.count} keys ${ms(Math.max(0, caughtUp - started - elapsed), 0)} after the last create answered (status ${health.status}, reconnects ${health.authority.reconnects})`
      : `ext-authz did NOT reach ${expectedKeys.count} keys within 30 s: ${JSON.stringify(health)}`,
  );
}

async function measureMemory(authority: Service, extAuthz: Service, changes: { count: number }): Promise<void> {
  console.log(`\n7. Memory after ${MIN_CHANGES}+ changes`);
  if (changes.count < MIN_CHANGES) {
    const api = admin(authority);
    const deadline = performance.now() + 60_000;
    for (let index = 0; changes.count < MIN_CHANGES && index < MIN_CHANGES && performance.now() < deadline; index += 1) {
      const reply = await api.patch(`/api/apikeys/bulk-${String((index * 7919) % KEYS).padStart(7, '0')}`, {
        description: `extra change ${index}`,
      });
      if (reply.status === 200) changes.count += 1;
    }
  }
  await sleep(1_000); // let the last deltas land
  info(`changes made through the authority so far: ${changes.count}`);
  for (const [service, prefix, target] of [
    [extAuthz, 'ext_authz_', TARGETS.extAuthzRssMb],
    [authority, 'token_authority_', TARGETS.authorityRssMb],
  ] as const) {
    const metrics = await call(agents.probe, `${service.url}/metrics`);
    const rssMetric = metricValue(metrics.body, `${prefix}process_resident_memory_bytes`);
    const heapMetric = metricValue(metrics.body, `${prefix}nodejs_heap_size_used_bytes`);
    const proc = procStatus(service.child.pid);
    const rss = rssMetric !== undefined ? rssMetric / MB : (proc?.rssMb ?? Number.NaN);
    figure(
      `${service.name} RSS now`,
      `${rss.toFixed(0)} MB`,
      `≤ ${target} MB`,
      rss <= target,
      `(/proc VmRSS ${proc?.rssMb.toFixed(0) ?? '?'} MB, JS heap used ${heapMetric !== undefined ? (heapMetric / MB).toFixed(0) : '?'} MB)`,
    );
    const peak = proc?.peakMb ?? Number.NaN;
    figure(`${service.name} RSS peak (VmHWM)`, `${peak.toFixed(0)} MB`, `≤ ${target} MB`, peak <= target);
  }
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const benchStarted = performance.now();
  console.log(
    `data plane at scale: ${KEYS} API keys, node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), everything on 127.0.0.1`,
  );
  const dir = mkdtempSync(join(tmpdir(), 'data-plane-scale-'));
  const services: Service[] = [];
  let cleaningUp: Promise<void> | undefined;
  const cleanUp = () =>
    (cleaningUp ??= (async () => {
      for (const service of [...services].reverse()) await stopService(service);
      for (const agent of Object.values(agents)) agent.destroy();
      rmSync(dir, { recursive: true, force: true });
    })());
  const onSignal = () => void cleanUp().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    await bulkCreate(join(dir, 'token-authority.sqlite'));

    console.log('\n2. Start: token authority, then ext-authz (separate processes)');
    const [httpPort, grpcPort, extHttpPort, extGrpcPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
    const authority = spawnService(
      'authority',
      '../services/token-authority/main.js',
      {
        DATA_DIR: dir,
        ADMIN_TOKEN,
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(httpPort),
        GRPC_HOST: '127.0.0.1',
        GRPC_PORT: String(grpcPort),
      },
      httpPort,
      'eventloop-probe.js',
    );
    services.push(authority);
    const authorityReady = await pollUntil(60_000, 20, async () => {
      assertAlive(authority);
      return (await call(agents.probe, `${authority.url}/.well-known/otoroshi/oauth/jwks.json`)).status === 200
        ? performance.now()
        : undefined;
    });
    assertAlive(authority);
    if (authorityReady === undefined) throw new Error('the authority did not serve its JWKS within 60 s');
    figure(
      'authority serving after start',
      seconds(authorityReady - authority.spawnedAt),
      undefined,
      undefined,
      `(${KEYS} keys in its store)`,
    );

    const configFile = join(dir, 'ext-authz.yaml');
    writeFileSync(configFile, 'policies:\n  foo:\n    extractors: [bearer]\n    authorizedEntities: [route_foo]\n');
    const extAuthz = spawnService(
      'ext-authz',
      '../services/ext-authz/main.js',
      {
        CONFIG_FILE: configFile,
        AUTHORITY_GRPC_URL: `127.0.0.1:${grpcPort}`,
        AUTHORITY_TOKEN: ADMIN_TOKEN,
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(extHttpPort),
        GRPC_HOST: '127.0.0.1',
        GRPC_PORT: String(extGrpcPort),
        // As it ships (MALLOC_ARENA_MAX=2); EXT_AUTHZ_NODE_FLAGS alone changes only the flags.
        ...EXT_AUTHZ_ENV,
      },
      extHttpPort,
      undefined,
      extAuthzNodeFlags(),
    );
    services.push(extAuthz);
    let first200: number | undefined;
    let listening: number | undefined;
    let lastHealth = '';
    const extReady = await pollUntil(60_000, 10, async () => {
      assertAlive(extAuthz);
      const reply = await call(agents.probe, `${extAuthz.url}/health`);
      listening ??= performance.now() - reply.ms;
      lastHealth = reply.body;
      if (reply.status !== 200) return undefined;
      first200 ??= performance.now();
      return (JSON.parse(reply.body) as { authority?: { apiKeys?: number } }).authority?.apiKeys === KEYS ? performance.now() : undefined;
    });
    assertAlive(extAuthz);
    if (extReady === undefined) throw new Error(`ext-authz did not hold ${KEYS} keys within 60 s: ${lastHealth}`);
    const readyMs = extReady - extAuthz.spawnedAt;
    figure(
      `ext-authz ready after start (/health 200, ${KEYS} keys)`,
      seconds(readyMs),
      `≤ ${TARGETS.extAuthzReadyMs / 1000} s`,
      readyMs <= TARGETS.extAuthzReadyMs,
    );
    info(
      `HTTP listening (first /health answer, 503 until a whole snapshot is applied) at ${listening === undefined ? '?' : seconds(listening - extAuthz.spawnedAt)}; first 200 at ${first200 === undefined ? '?' : seconds(first200 - extAuthz.spawnedAt)}`,
    );

    const changes = { count: 0 };
    const expectedKeys = { count: KEYS };
    await measureDisable(authority, extAuthz, changes);
    expectedKeys.count += DISABLE_KEYS;
    await measureEventLoop(authority, changes);
    await measureRevocationFlood(authority, changes);
    expectedKeys.count += 2;
    await measureAdminCreates(authority, extAuthz, changes, expectedKeys);
    await measureMemory(authority, extAuthz, changes);
    assertAlive(authority);
    assertAlive(extAuthz);

    console.log(`\nSummary (${KEYS} bulk keys; ${seconds(performance.now() - benchStarted)} so far)`);
    const widths = [
      Math.max(...rows.map((row) => row.figure.length)),
      Math.max(...rows.map((row) => row.measured.length)),
      Math.max(6, ...rows.map((row) => row.target.length)),
    ];
    const line = (cells: string[]) => `  ${cells.map((cell, index) => cell.padEnd(widths[index] ?? 4)).join('  ')}`.trimEnd();
    console.log(line(['figure', 'measured', 'target', 'result']));
    console.log(line(widths.map((width) => '-'.repeat(width)).concat('------')));
    for (const row of rows) console.log(line([row.figure, row.measured, row.target, verdict(row.pass)]));
    const judged = rows.filter((row) => row.pass !== undefined);
    console.log(`  ${judged.filter((row) => row.pass).length}/${judged.length} targets met`);
  } finally {
    await cleanUp();
    for (const service of services) {
      console.log(
        `\n${service.name} log (level warn and above, stdout and stderr): ${service.logCount} line(s)${service.logCount > LOG_LINES_KEPT ? `, first ${LOG_LINES_KEPT} shown` : ''}`,
      );
      for (const logLine of service.logLines) console.log(`  ${logLine}`);
    }
    console.log(`\ntotal ${seconds(performance.now() - benchStarted)}`);
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
