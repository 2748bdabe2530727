import { createHash, createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { LRUCache } from 'lru-cache';

/**
 * Client secrets are stored only as hashes. The scheme depends on the secret itself:
 *
 * - `sha256$<hex>` for secrets of 32 characters or more. The ones we generate carry 256
 *   bits of entropy, which no offline guessing can cover, so a slow KDF would only cost
 *   CPU on every token request.
 * - `scrypt$<N>$<r>$<p>$<salt>$<hash>` for shorter, human-chosen secrets (Otoroshi lets
 *   people type `my-secret`): those can be guessed offline from a stolen store, so they
 *   get a memory-hard KDF. Successful verifications are remembered in memory (keyed by an
 *   HMAC under a per-process key) so a client that authenticates correctly pays scrypt once.
 *
 * Timing: which scheme runs depends only on the *presented* secret's length, never on
 * whether the client id exists or what its stored hash is, so an unknown id and a wrong
 * secret take the same work.
 */
export const HIGH_ENTROPY_MIN_LENGTH = 32;
const SCRYPT = { N: 1 << 15, r: 8, p: 1, keyLength: 32 } as const;
const SCRYPT_MAXMEM = 128 * SCRYPT.N * SCRYPT.r * 2;

const processKey = randomBytes(32);
const verifiedCache = new LRUCache<string, true>({ max: 10_000, ttl: 10 * 60_000 });
const dummyScryptHash = `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${randomBytes(16).toString('base64url')}$${randomBytes(32).toString('base64url')}`;
const dummySha256Hash = `sha256$${randomBytes(32).toString('hex')}`;

/** Every slot of the bounded scrypt queue is taken: answer "busy, retry" rather than wait. */
export class SecretHashBusy extends Error {
  constructor() {
    super('too many secret verifications in progress');
    this.name = 'SecretHashBusy';
  }
}

/**
 * scrypt runs on libuv's thread pool (4 threads by default), which JWT signing shares, and each run
 * takes tens of ms of a core and 32 MiB of memory traffic. A flood of wrong short secrets must not
 * take the pool or the CPU from everyone else: at most `concurrency` scrypt runs at once, and over
 * time scrypt uses at most `dutyCycle` of a core (a budget of scrypt time that refills at that
 * rate and holds at most `burstMs`, so a lone verification never waits and a flood is paced); at
 * most `queue` verifications wait, and past that verifySecret throws SecretHashBusy at once. A
 * short secret verified once is remembered (see verifiedCache), so the budget only goes to first
 * verifications and wrong secrets. bench/abuse.ts measures the effect.
 */
export const scryptLimits = { concurrency: 1, dutyCycle: 0.25, burstMs: 500, queue: 4 };
let scryptRunning = 0;
/** Scrypt time (ms) that may run now without waiting; negative: in debt. */
let scryptBudget = scryptLimits.burstMs;
let scryptBudgetAt = 0;

function refillScryptBudget(): void {
  const now = performance.now();
  scryptBudget = Math.min(scryptLimits.burstMs, scryptBudget + (now - scryptBudgetAt) * scryptLimits.dutyCycle);
  scryptBudgetAt = now;
}
const scryptWaiting: (() => void)[] = [];

async function scryptSlot<T>(bounded: boolean, work: () => Promise<T>): Promise<T> {
  if (scryptRunning >= scryptLimits.concurrency) {
    if (bounded && scryptWaiting.length >= scryptLimits.queue) throw new SecretHashBusy();
    await new Promise<void>((resolve) => scryptWaiting.push(resolve));
  } else {
    scryptRunning += 1;
  }
  try {
    // Setting a secret (admin API) is not paced: only verifications are what a flood can send.
    if (!bounded) return await work();
    refillScryptBudget();
    if (scryptBudget < 0) await new Promise((resolve) => setTimeout(resolve, -scryptBudget / scryptLimits.dutyCycle));
    const started = performance.now();
    try {
      return await work();
    } finally {
      refillScryptBudget();
      scryptBudget -= performance.now() - started;
    }
  } finally {
    // The slot passes straight to the next in line, or is freed.
    const next = scryptWaiting.shift();
    if (next) next();
    else scryptRunning -= 1;
  }
}

/** Verifications waiting for a scrypt slot, and running (tests, metrics). */
export function scryptLoad(): { running: number; waiting: number } {
  return { running: scryptRunning, waiting: scryptWaiting.length };
}

function scryptAsync(secret: string, salt: Buffer, N: number, r: number, p: number, bounded = true): Promise<Buffer> {
  return scryptSlot(
    bounded,
    () =>
      new Promise<Buffer>((resolve, reject) =>
        scrypt(secret, salt, SCRYPT.keyLength, { N, r, p, maxmem: SCRYPT_MAXMEM }, (error, key) => (error ? reject(error) : resolve(key))),
      ),
  );
}

export async function hashSecret(secret: string): Promise<string> {
  if (secret.length >= HIGH_ENTROPY_MIN_LENGTH) {
    return `sha256$${createHash('sha256').update(secret, 'utf8').digest('hex')}`;
  }
  const salt = randomBytes(16);
  // Setting a secret (admin API) waits its turn instead of being refused.
  const key = await scryptAsync(secret, salt, SCRYPT.N, SCRYPT.r, SCRYPT.p, false);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

/** A fresh secret of 256 bits, base64url (43 characters): always on the fast scheme. */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

function equalBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Checks `presented` against each stored hash (the current secret and, during a rotation's
 * grace period, the previous one). Pass no hashes for an unknown client: the same work runs
 * against a dummy hash. Throws SecretHashBusy when the scrypt queue is full.
 */
export async function verifySecret(presented: string, storedHashes: readonly string[]): Promise<boolean> {
  const fast = presented.length >= HIGH_ENTROPY_MIN_LENGTH;
  const candidates = storedHashes.filter((hash) => hash.startsWith(fast ? 'sha256$' : 'scrypt$'));
  if (fast) {
    const digest = createHash('sha256').update(presented, 'utf8').digest();
    let ok = false;
    for (const hash of candidates.length ? candidates : [dummySha256Hash]) {
      ok = equalBytes(digest, Buffer.from(hash.slice('sha256$'.length), 'hex')) || ok;
    }
    return ok && candidates.length > 0;
  }
  let ok = false;
  for (const hash of candidates.length ? candidates : [dummyScryptHash]) {
    const cacheKey = createHmac('sha256', processKey).update(hash).update('\0').update(presented).digest('base64');
    if (verifiedCache.has(cacheKey)) {
      ok = true;
      continue;
    }
    const [, n, r, p, salt, expected] = hash.split('$');
    const key = await scryptAsync(presented, Buffer.from(salt, 'base64url'), Number(n), Number(r), Number(p));
    if (equalBytes(key, Buffer.from(expected, 'base64url')) && candidates.length > 0) {
      verifiedCache.set(cacheKey, true);
      ok = true;
    }
  }
  return ok;
}
