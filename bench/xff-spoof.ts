import { rmSync } from 'node:fs';
import path from 'node:path';
import { startLocalStack } from '../test/support/local-stack';
import { closeLoopbackAgents, postFrom } from '../test/support/loopback-client';
import { send } from '../test/support/proxy-request';

/**
 * Issue 22's attack, replayed against `npm start`'s stack (local-stack: Envoy in front, the
 * authority with the stack's TRUST_PROXY) and printed as the table. STACK_ROOT picks the
 * build whose dist/services/local-stack/main.js runs (default: this one), so the same script
 * measures a build of an older commit:
 *
 *   npm run build && node dist/bench/xff-spoof.js
 *   STACK_ROOT=/path/to/old/checkout node dist/bench/xff-spoof.js
 *
 * Every loop is bounded in count (at most 230 requests in all, one at a time) and the run in time
 * (STACK_START_MS to start, each request under the agent's socket timeout); loopback only.
 */
const ROOT = path.resolve(process.env.STACK_ROOT ?? path.join(__dirname, '..', '..'));
const ADMIN_TOKEN = 'xff-bench-admin-token-0123456789';
const TOKEN_PATH = '/.well-known/otoroshi/oauth/token';
const CLIENT = { id: 'rt-foo-long', secret: 'my-secret' };
const STACK_START_MS = 60_000;
const RUN_MS = 240_000;

let spoof = 0;
const madeUpAddress = () => {
  spoof += 1;
  return `10.${(spoof >> 16) & 255}.${(spoof >> 8) & 255}.${spoof & 255}`;
};

async function main(): Promise<void> {
  const { stack, base, dataDir } = await startLocalStack({
    root: ROOT,
    adminToken: ADMIN_TOKEN,
    dataDirPrefix: 'xff-bench-',
    startMs: STACK_START_MS,
  });
  const deadline = Date.now() + RUN_MS;
  const rows: [string, string][] = [];
  try {
    const created = await send(base, '/api/apikeys', {
      host: 'oauth.oto.tools:8080',
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
      body: JSON.stringify({ clientId: CLIENT.id, clientSecret: CLIENT.secret }),
    });
    if (created.status !== 201) throw new Error(`creating ${CLIENT.id}: ${created.status} ${created.body}`);
    const token = async (from: string, secret: string, headers: Record<string, string> = {}) => {
      if (Date.now() > deadline) throw new Error('the run took longer than RUN_MS');
      return (
        await postFrom(
          from,
          base,
          TOKEN_PATH,
          { grant_type: 'client_credentials', client_id: CLIENT.id, client_secret: secret },
          { host: 'oauth.oto.tools:8080', ...headers },
        )
      ).status;
    };
    // Run lengths in order: "10 × 401, then 15 × 429".
    const tally = (statuses: number[]) => {
      const runs: [number, number][] = [];
      for (const status of statuses) {
        const last = runs[runs.length - 1];
        if (last && last[0] === status) last[1] += 1;
        else runs.push([status, 1]);
      }
      return runs.map(([status, count]) => `${count} × ${status}`).join(', then ');
    };
    // The client itself, from its own address, before the attack: its address is known.
    rows.push([
      "the correct secret from the client's own address (127.0.0.200), before",
      String(await token('127.0.0.200', CLIENT.secret)),
    ]);
    const one: number[] = [];
    for (let i = 0; i < 25; i++) one.push(await token('127.0.0.1', `wrong-${i}`));
    rows.push(['25 wrong secrets from one address (127.0.0.1)', tally(one)]);
    // Right away: the block lasts the 60 s window, and the 150 paced scrypt checks below take longer.
    rows.push(['the correct secret from the blocked address', String(await token('127.0.0.1', CLIENT.secret))]);
    const spoofed: number[] = [];
    for (let i = 0; i < 150; i++) spoofed.push(await token('127.0.0.1', `spoofed-${i}`, { 'x-forwarded-for': madeUpAddress() }));
    rows.push(['150 wrong secrets, each with a made-up `X-Forwarded-For: 10.x.y.z`', tally(spoofed)]);
    rows.push([
      'the correct secret with a fresh made-up `X-Forwarded-For`',
      String(await token('127.0.0.1', CLIENT.secret, { 'x-forwarded-for': madeUpAddress() })),
    ]);
    // Real addresses: 3 wrong secrets from each of 127.0.0.2 ... 127.0.0.16 (the per-client budget).
    const many: number[] = [];
    for (let i = 0; i < 45; i++) many.push(await token(`127.0.0.${2 + Math.floor(i / 3)}`, `many-${i}`));
    rows.push(['45 wrong secrets from 15 real addresses (127.0.0.2-16, 3 each)', tally(many)]);
    rows.push(['the correct secret from a fresh real address (127.0.0.100)', String(await token('127.0.0.100', CLIENT.secret))]);
    rows.push(["the correct secret from the client's own address (127.0.0.200), after", String(await token('127.0.0.200', CLIENT.secret))]);
  } finally {
    closeLoopbackAgents();
    stack.kill('SIGTERM');
    await new Promise((done) => (stack.exitCode !== null ? done(undefined) : stack.once('exit', done)));
    rmSync(dataDir, { recursive: true, force: true });
  }
  const width = Math.max(...rows.map(([attempt]) => attempt.length));
  process.stdout.write(`xff-spoof against ${ROOT} (npm start's stack, Envoy in front)\n\n`);
  process.stdout.write(`| ${'attempt'.padEnd(width)} | result |\n|${'-'.repeat(width + 2)}|---|\n`);
  for (const [attempt, result] of rows) process.stdout.write(`| ${attempt.padEnd(width)} | ${result} |\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
  process.exitCode = 1;
});
