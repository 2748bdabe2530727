import { closeLoopbackAgents, percentile, postFrom } from '../test/support/loopback-client';
import { adminPost, DURATION_SECONDS, startAuthorityProcess } from './support';

/**
 * A flood of wrong short secrets (each one costs a scrypt) against a well-behaved client's token
 * requests. The attacker spreads over 250 loopback addresses and fresh client ids, so the failure
 * limits (10 per id and address, 100 per address, a minute) let up to 25,000 guesses through: what
 * protects the others then is the bounded scrypt queue: unbounded, ATTACK_RATE (200) guesses a
 * second would ask for 200 scrypt runs (about 60 ms of CPU each) a second. The same flood with long
 * wrong secrets (SHA-256, no scrypt) is the control: what the volume alone costs. Goal: the
 * client's p99 within 2× its p99 without the flood. 127.0.0.0/8 is all loopback on Linux; every
 * loop is bounded in time and in requests outstanding.
 *
 *   npm run build && node dist/bench/abuse.js          (BENCH_SECONDS=10 per phase by default)
 */
const TOKEN_PATH = '/.well-known/otoroshi/oauth/token';
const GOOD = { id: 'good', secret: 'good-secret-0123456789-0123456789-0123456789' };
const GOOD_IN_FLIGHT = 4;
/** Wrong short secrets per second, sent at that rate whatever the answers (an open-loop flood). */
const ATTACK_RATE = Number(process.env.ATTACK_RATE ?? 200);
const ATTACK_MAX_OUTSTANDING = 256;

/** The good client, GOOD_IN_FLIGHT requests in flight, until `until`. */
async function goodClient(base: string, until: number): Promise<{ latencies: number[]; failures: number }> {
  const latencies: number[] = [];
  let failures = 0;
  await Promise.all(
    Array.from({ length: GOOD_IN_FLIGHT }, async () => {
      while (Date.now() < until) {
        const reply = await postFrom('127.0.0.1', base, TOKEN_PATH, {
          grant_type: 'client_credentials',
          client_id: GOOD.id,
          client_secret: GOOD.secret,
        });
        if (reply.status === 200) latencies.push(reply.ms);
        else failures += 1;
      }
    }),
  );
  return { latencies, failures };
}

function row(name: string, result: { latencies: number[]; failures: number }, seconds: number): string {
  const { latencies, failures } = result;
  return `${name.padEnd(40)} ${(latencies.length / seconds).toFixed(0).padStart(6)} tokens/s  p50 ${percentile(latencies, 50).toFixed(2)} ms  p99 ${percentile(latencies, 99).toFixed(2)} ms  failures ${failures}`;
}

async function main() {
  console.log(
    `Token p99 of a well-behaved client (${GOOD_IN_FLIGHT} in flight, 256-bit secret) alone, then under a flood of ${ATTACK_RATE} wrong secrets/s from 250 addresses; ${DURATION_SECONDS}s per phase`,
  );
  const authority = await startAuthorityProcess();
  try {
    await adminPost(authority, '/api/apikeys', { clientId: GOOD.id, clientSecret: GOOD.secret });
    await adminPost(authority, '/api/apikeys', { clientId: 'victim', clientSecret: 'victim-pw' });
    await goodClient(authority.url, Date.now() + 1000); // warm-up
    const alone = await goodClient(authority.url, Date.now() + DURATION_SECONDS * 1000);
    console.log(row('alone', alone, DURATION_SECONDS));

    for (const [name, secret] of [
      ['during a flood of wrong short secrets', (guess: number) => `wrong-${guess}`],
      ['during the same flood, long secrets', (guess: number) => `wrong-${guess}-0123456789-0123456789-0123456789`],
    ] as const) {
      const statuses = new Map<number, number>();
      const until = Date.now() + DURATION_SECONDS * 1000;
      let guess = 0;
      let outstanding = 0;
      const sent: Promise<void>[] = [];
      const timer = setInterval(() => {
        // A burst per 10 ms tick, at ATTACK_RATE a second.
        for (let i = 0; i < ATTACK_RATE / 100 && outstanding < ATTACK_MAX_OUTSTANDING; i++) {
          guess += 1;
          outstanding += 1;
          const address = `127.0.${2 + (guess % 250)}.1`;
          // A fresh id every 8 guesses: under the per-(id, address) limit, so each guess is checked.
          const form = {
            grant_type: 'client_credentials',
            client_id: guess % 2 ? 'victim' : `guess-${Math.floor(guess / 8)}`,
            client_secret: secret(guess),
          };
          sent.push(
            postFrom(address, authority.url, TOKEN_PATH, form).then(
              (reply) => {
                outstanding -= 1;
                statuses.set(reply.status, (statuses.get(reply.status) ?? 0) + 1);
              },
              () => {
                outstanding -= 1;
                statuses.set(0, (statuses.get(0) ?? 0) + 1);
              },
            ),
          );
        }
      }, 10);
      const during = await goodClient(authority.url, until);
      clearInterval(timer);
      await Promise.all(sent);
      console.log(row(name, during, DURATION_SECONDS));
      const ratio = percentile(during.latencies, 99) / percentile(alone.latencies, 99);
      console.log(
        `  attacker: ${guess} sent, ${[...statuses].map(([status, count]) => `${count} × ${status || 'error'}`).join(', ')}; p99 / alone = ${ratio.toFixed(2)} (goal ≤ 2)`,
      );
    }
  } finally {
    closeLoopbackAgents();
    await authority.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
