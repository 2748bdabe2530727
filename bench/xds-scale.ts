import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { authorityConfigSchema } from '../libs/core/config';
import { type Route, validateRoute } from '../libs/core/routes';
import { renderEnvoyConfig } from '../libs/envoy/render-config';
import { startTokenAuthority, type TokenAuthorityApp } from '../services/token-authority/app';
import { ENVOY_DIR, runEnvoy, type TestEnvoy } from '../test/support/envoy';
import { freePort } from './support';

/*
 * The control plane at scale (issue 19): the token authority (in this process, SQLite store) serves
 * N routes over delta ADS to a real Envoy started from envoy/envoy-xds.yaml. For N = 1,000 and
 * 10,000 (BENCH_ROUTES=1000,10000), prints:
 *   - how long Envoy takes from its start to hold every route (all clusters active, the last
 *     route answering);
 *   - one route change's time to take effect, p50 and p99 over 20 changes (a write to the store
 *     until Envoy sends that route's requests to the other backend: its endpoints move), and the
 *     same for 20 changes of the route table (the route moves to a new domain: the RouteConfiguration,
 *     one virtual host per domain, is sent again whole);
 *   - the authority's event-loop delay p99 while 10 route changes a second arrive (10 s), for
 *     changes of a cluster (its connect timeout) and, another 10 s, of the route table (a route's
 *     request timeout);
 *   - the memory (RSS) of the authority's process and of Envoy.
 * Loopback only; every loop is bounded in time and count. Routes have apikeys off (no ext-authz
 * call), so what is measured is the config path alone.
 */

const COUNTS = (process.env.BENCH_ROUTES ?? '1000,10000').split(',').map(Number);
const CHANGES = 20;
const LOAD_SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const ADMIN_TOKEN = 'bench-admin-token-0123456789';

function backend(name: string): Promise<{ port: number; server: Server }> {
  const server = createServer((request, response) => {
    request.resume();
    response.writeHead(200, { 'content-type': 'text/plain', 'content-length': name.length });
    response.end(name);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ port: (server.address() as AddressInfo).port, server })));
}

/** GET / through Envoy with this Host: the body (the backend's name) or the status. */
function ask(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/', headers: { host }, agent: false, timeout: 2000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve(res.statusCode === 200 ? Buffer.concat(chunks).toString() : String(res.statusCode)));
    });
    req.on('error', () => resolve('error'));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

async function until(timeoutMs: number, probe: () => Promise<boolean>): Promise<number> {
  const started = performance.now();
  while (performance.now() - started < timeoutMs) {
    if (await probe()) return performance.now() - started;
    await sleep(5);
  }
  throw new Error(`not within ${timeoutMs} ms`);
}

function rssMb(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]) / 1024;
}

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};

function makeRoute(index: number, port: number): Route {
  const validated = validateRoute({
    id: `r${index}`,
    frontend: { domains: [`r${index}.bench.oto.tools`] },
    backend: { targets: [{ hostname: '127.0.0.1', port }] },
    apikeys: { enabled: false },
  });
  if (!validated.ok) throw new Error(JSON.stringify(validated.issues));
  const now = new Date().toISOString();
  return { ...validated.route, createdAt: now, updatedAt: now };
}

async function activeClusters(adminUrl: string): Promise<number> {
  const text = await fetch(`${adminUrl}/stats?filter=^cluster_manager.active_clusters$`).then(
    (response) => response.text(),
    () => '',
  );
  return Number(/active_clusters: (\d+)/.exec(text)?.[1] ?? 0);
}

async function run(count: number, backends: { a: number; b: number }) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'xds-bench-'));
  const [httpPort, grpcPort, listener, admin, xdsPort] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  let authority: TokenAuthorityApp | undefined;
  let envoy: TestEnvoy | undefined;
  try {
    const config = authorityConfigSchema.parse({
      dataDir,
      adminToken: ADMIN_TOKEN,
      http: { host: '127.0.0.1', port: httpPort },
      grpc: { host: '127.0.0.1', port: grpcPort },
      log: { level: 'warn' },
      xds: { enabled: true, port: xdsPort, listener: { address: '127.0.0.1', port: listener } },
    });
    authority = await startTokenAuthority(config);
    const store = authority.authority.store.routes;
    const routes = Array.from({ length: count }, (_, index) => makeRoute(index, backends.a));
    for (let at = 0; at < routes.length; at += 1000) await store.createMany(routes.slice(at, at + 1000));
    const last = `r${count - 1}.bench.oto.tools`;
    // The control plane has every route before Envoy starts (the feed's deltas are applied).
    await until(
      60_000,
      async () => (authority?.xds?.current().get('type.googleapis.com/envoy.config.cluster.v3.Cluster')?.size ?? 0) >= count,
    );

    const local = (port: number) => ({ address: '127.0.0.1', port });
    const bootstrap = renderEnvoyConfig(readFileSync(path.join(ENVOY_DIR, 'envoy-xds.yaml'), 'utf8'), {
      admin: local(admin),
      // ext-authz is not asked (apikeys off): its cluster points at a closed port.
      clusters: { xds: local(xdsPort), token_authority: local(httpPort), token_authority_grpc: local(grpcPort), ext_authz: local(1) },
      xdsToken: ADMIN_TOKEN,
    });
    const started = performance.now();
    envoy = await runEnvoy(bootstrap, { listener, admin }, undefined, 300_000);
    const envoyRef = envoy;
    const progress = setInterval(async () => {
      const stats = await fetch(
        `${envoyRef.adminUrl}/stats?filter=cluster_manager.(active|warming)_clusters|control_plane|rds.ingress_http`,
      ).then(
        (r) => r.text(),
        () => '',
      );
      console.error(
        `# ${((performance.now() - started) / 1000).toFixed(0)} s: ${stats.replace(/\n/g, ' ')} nacks ${authority?.xds?.nackCount} sent ${JSON.stringify([...(authority?.xds?.resourcesSent ?? [])])}`,
      );
    }, 5000);
    await until(300_000, async () => (await activeClusters(envoyRef.adminUrl)) >= count + 4 && (await ask(listener, last)) === 'A');
    const holdAllMs = performance.now() - started;
    clearInterval(progress);

    // One change at a time: route k moves to the other backend; the time until Envoy sends it there.
    const changeMs: number[] = [];
    for (let i = 0; i < CHANGES; i++) {
      const id = `r${(i * 7919) % count}`;
      const host = `${id}.bench.oto.tools`;
      const current = (await store.get(id)) as Route;
      const target = current.backend.targets[0].port === backends.a ? backends.b : backends.a;
      const expected = target === backends.a ? 'A' : 'B';
      const t0 = performance.now();
      await store.modify(id, (route) => ({
        ...route,
        backend: { ...route.backend, targets: [{ ...route.backend.targets[0], port: target }] },
        updatedAt: new Date().toISOString(),
      }));
      await until(10_000, async () => (await ask(listener, host)) === expected);
      changeMs.push(performance.now() - t0);
    }
    // Route table changes: route k moves to a domain of its own; the time until Envoy answers there.
    const tableMs: number[] = [];
    for (let i = 0; i < CHANGES; i++) {
      const id = `r${(i * 6151 + 1) % count}`;
      const host = `moved${i}-${id}.bench.oto.tools`;
      const expected = ((await store.get(id)) as Route).backend.targets[0].port === backends.a ? 'A' : 'B';
      const t0 = performance.now();
      await store.modify(id, (route) => ({
        ...route,
        frontend: { ...route.frontend, domains: [host] },
        updatedAt: new Date().toISOString(),
      }));
      await until(10_000, async () => (await ask(listener, host)) === expected);
      tableMs.push(performance.now() - t0);
    }

    // 10 changes a second for LOAD_SECONDS: the authority's event-loop delay (nothing else runs in this phase).
    const underLoad = async (change: (route: Route, n: number) => Route) => {
      const histogram = monitorEventLoopDelay({ resolution: 5 });
      histogram.enable();
      const loadStarted = performance.now();
      let changes = 0;
      while (performance.now() - loadStarted < LOAD_SECONDS * 1000 && changes < LOAD_SECONDS * 10) {
        const id = `r${(changes * 104729) % count}`;
        const n = changes;
        await store.modify(id, (route) => ({ ...change(route, n), updatedAt: new Date().toISOString() }));
        changes++;
        const next = loadStarted + changes * 100;
        await sleep(Math.max(0, next - performance.now()));
      }
      await sleep(500);
      histogram.disable();
      const rate = (changes * 1000) / (performance.now() - loadStarted - 500);
      return `p99 ${(histogram.percentile(99) / 1e6).toFixed(1)} ms (max ${(histogram.max / 1e6).toFixed(1)}) at ${rate.toFixed(1)} changes/s`;
    };
    const clusterLoop = await underLoad((route, n) => ({ ...route, backend: { ...route.backend, connectTimeoutMs: 1000 + (n % 1000) } }));
    const tableLoop = await underLoad((route, n) => ({ ...route, backend: { ...route.backend, requestTimeoutMs: 20_000 + (n % 1000) } }));
    const nacks = authority.xds?.nackCount ?? 0;
    console.log(
      [
        `${String(count).padStart(6)} routes`,
        `Envoy holds all ${(holdAllMs / 1000).toFixed(2)} s`,
        `change p50 ${percentile(changeMs, 50).toFixed(0)} ms p99 ${percentile(changeMs, 99).toFixed(0)} ms`,
        `table change p50 ${percentile(tableMs, 50).toFixed(0)} ms p99 ${percentile(tableMs, 99).toFixed(0)} ms`,
        `event loop, cluster changes ${clusterLoop}, table changes ${tableLoop}`,
        `RSS authority ${rssMb(process.pid).toFixed(0)} MB, Envoy ${rssMb(envoy.pid).toFixed(0)} MB`,
        `NACKs ${nacks}`,
      ].join(' | '),
    );
  } finally {
    await envoy?.stop().catch(() => undefined);
    await authority?.close().catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function main() {
  const [a, b] = [await backend('A'), await backend('B')];
  try {
    for (const count of COUNTS) await run(count, { a: a.port, b: b.port });
  } finally {
    a.server.close();
    b.server.close();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
