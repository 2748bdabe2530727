import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DURATION_SECONDS, freePort } from './support';

/**
 * What V8's young-generation GC costs a bare server, with no code of ours in it: why the gRPC
 * Check path (node:http2) has a longer tail than HTTP mode (node:http) in bench/envoy-path.ts.
 *
 * Each row starts a server in its own process that answers a constant (HTTP/2: a gRPC-shaped
 * 200 with grpc-status 0 in the headers; HTTP/1.1: a 200), under --trace-gc-nvp, loads it for
 * BENCH_SECONDS (10) on 127.0.0.1 (h2load -c1 -m16, or wrk -t1 -c16), and prints from V8's
 * own trace: scavenges, their mean and max pause, the bytes that survived each one and what that
 * makes per request, and the share of the run spent in GC pauses.
 *
 *   npm run build && node dist/bench/h2-gc.js
 */

const SERVERS = {
  http2: `
    const s = require('node:http2').createServer({ settings: { maxConcurrentStreams: 1000 } });
    s.on('stream', (stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0' }, { endStream: true }));
    s.listen(Number(process.env.PORT), '127.0.0.1', () => console.error('listening'));
    process.on('SIGTERM', () => process.exit(0));`,
  http1: `
    const s = require('node:http').createServer((request, response) => response.end());
    s.listen(Number(process.env.PORT), '127.0.0.1', () => console.error('listening'));
    process.on('SIGTERM', () => process.exit(0));`,
};

interface Row {
  name: string;
  server: keyof typeof SERVERS;
  flags: string[];
}

const ROWS: Row[] = [
  { name: 'node:http2, V8 defaults', server: 'http2', flags: [] },
  { name: 'node:http2, --max-semi-space-size=2', server: 'http2', flags: ['--max-semi-space-size=2'] },
  { name: 'node:http2, --minor-ms', server: 'http2', flags: ['--minor-ms'] },
  { name: 'node:http, V8 defaults', server: 'http1', flags: [] },
  { name: 'node:http, --max-semi-space-size=2', server: 'http1', flags: ['--max-semi-space-size=2'] },
];

async function measure(row: Row): Promise<string> {
  const port = await freePort();
  // The trace goes to a file: the load below blocks this process, and a full pipe would stall the server.
  const dir = mkdtempSync(join(tmpdir(), 'h2-gc-'));
  const traceFile = join(dir, 'trace.txt');
  const traceFd = openSync(traceFile, 'w');
  const child = spawn(process.execPath, [...row.flags, '--trace-gc-nvp', '-e', SERVERS[row.server]], {
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', traceFd, 'pipe'],
  });
  closeSync(traceFd);
  try {
    await new Promise<void>((done, fail) => {
      const timer = setTimeout(() => fail(new Error(`${row.name}: no server after 10 s`)), 10_000);
      child.stderr!.once('data', () => (clearTimeout(timer), done()));
      child.once('exit', (code) => (clearTimeout(timer), fail(new Error(`${row.name}: exited with ${code}`))));
    });
    const url = `http://127.0.0.1:${port}/envoy.service.auth.v3.Authorization/Check`;
    const traceBefore = readFileSync(traceFile, 'utf8').length; // start-up GCs are not the load's
    const load =
      row.server === 'http2'
        ? spawnSync('h2load', ['-c1', '-m16', `-D${DURATION_SECONDS}`, '-H', 'content-type: application/grpc', url], {
            encoding: 'utf8',
            timeout: (DURATION_SECONDS + 20) * 1000,
          })
        : spawnSync('wrk', ['-t1', '-c16', `-d${DURATION_SECONDS}s`, url], { encoding: 'utf8', timeout: (DURATION_SECONDS + 20) * 1000 });
    if (load.status !== 0) throw new Error(`${row.name}: load failed: ${load.stderr || load.error}`);
    const requests =
      row.server === 'http2' ? Number(/requests: (\d+) total/.exec(load.stdout)?.[1]) : Number(/(\d+) requests in/.exec(load.stdout)?.[1]);
    const minor = readFileSync(traceFile, 'utf8')
      .slice(traceBefore)
      .split('\n')
      .filter((line) => /\bgc=(s|mms)\b/.test(line));
    const field = (line: string, name: string) => Number(new RegExp(`\\b${name}=([\\d.]+)`).exec(line)?.[1] ?? 0);
    const pauses = minor.map((line) => field(line, 'pause'));
    const survived = minor.map((line) => field(line, 'new_space_survived') + field(line, 'promoted')); // copied within, or out of, the young generation
    const total = (values: number[]) => values.reduce((sum, value) => sum + value, 0);
    const mean = (values: number[]) => (values.length ? total(values) / values.length : 0);
    return [
      row.name.padEnd(38),
      String(Math.round(requests / DURATION_SECONDS)).padStart(8),
      String(minor.length).padStart(6),
      `${mean(pauses).toFixed(2)} ms`.padStart(9),
      `${Math.max(0, ...pauses).toFixed(1)} ms`.padStart(8),
      `${(mean(survived) / 1e6).toFixed(2)} MB`.padStart(9),
      `${Math.round(total(survived) / Math.max(1, requests))} B`.padStart(8),
      `${((total(pauses) / (DURATION_SECONDS * 1000)) * 100).toFixed(1)} %`.padStart(7),
    ].join(' ');
  } finally {
    await new Promise((done) => (child.exitCode !== null ? done(undefined) : (child.once('exit', done), child.kill('SIGTERM'))));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  for (const tool of ['h2load', 'wrk']) {
    if (spawnSync(tool, ['--version']).error) throw new Error(`${tool} is not on PATH (Debian: nghttp2-client, wrk)`);
  }
  console.log(`Young-generation GC of a bare server, node ${process.version}, ${DURATION_SECONDS} s a row on 127.0.0.1`);
  const widths = [8, 6, 9, 8, 9, 8, 7];
  const heads = ['req/s', 'minor', 'pause', 'max', 'survived', '/request', 'in GC'];
  console.log([`${'server'.padEnd(38)}`, ...heads.map((head, i) => head.padStart(widths[i]))].join(' '));
  for (const row of ROWS) console.log(await measure(row));
}

main().catch((error) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
