import { LRUCache } from 'lru-cache';
import { jwksIssues, jwksUriProblem, MAX_JWKS_BYTES } from './client-assertion';
import type { PublicJwks } from './model';

export interface RemoteJwksSettings {
  /** The whole fetch, body included (ms). */
  timeoutMs: number;
  /** Largest answer read (bytes); a longer one is cut off and refused. */
  maxBytes: number;
  /** How long fetched keys are used before they are fetched again (ms). */
  ttlMs: number;
  /** At most one fetch per URI this often (ms): after a failure, and for refreshes asked because of an unknown kid. */
  cooldownMs: number;
}

export const DEFAULT_REMOTE_JWKS: RemoteJwksSettings = { timeoutMs: 2_000, maxBytes: MAX_JWKS_BYTES, ttlMs: 300_000, cooldownMs: 30_000 };

export class JwksFetchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'JwksFetchError';
  }
}

interface Entry {
  jwks?: PublicJwks;
  error?: string;
  fetchedAt: number;
}

/**
 * The keys of clients that give a `jwks_uri`, fetched with bounded time and size, no redirects
 * and no credentials, validated as the admin API validates a `jwks`, and cached: refetched after
 * `ttlMs`, or sooner when an assertion names a kid they lack, but never more than once per
 * `cooldownMs` (a failure is remembered that long too), so a flood of bad assertions cannot turn
 * into a flood of fetches. Concurrent requests for one URI share one fetch.
 */
export class RemoteJwks {
  private readonly cache = new LRUCache<string, Entry>({ max: 10_000 });
  private readonly inflight = new Map<string, Promise<PublicJwks>>();

  constructor(
    private readonly settings: RemoteJwksSettings = DEFAULT_REMOTE_JWKS,
    private readonly now: () => number = Date.now,
  ) {}

  async get(uri: string, refresh = false): Promise<PublicJwks> {
    const entry = this.cache.get(uri);
    if (entry) {
      const age = this.now() - entry.fetchedAt;
      const usable = entry.jwks
        ? age < this.settings.ttlMs && !(refresh && age >= this.settings.cooldownMs)
        : age < this.settings.cooldownMs;
      if (usable) {
        if (entry.jwks) return entry.jwks;
        throw new JwksFetchError(entry.error ?? 'unavailable');
      }
    }
    let pending = this.inflight.get(uri);
    if (!pending) {
      pending = this.fetch(uri).finally(() => this.inflight.delete(uri));
      this.inflight.set(uri, pending);
    }
    return pending;
  }

  private async fetch(uri: string): Promise<PublicJwks> {
    try {
      const jwks = await fetchJwks(uri, this.settings);
      this.cache.set(uri, { jwks, fetchedAt: this.now() });
      return jwks;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      this.cache.set(uri, { error: message, fetchedAt: this.now() });
      throw new JwksFetchError(message);
    }
  }
}

/** One GET of a JWKS: refused unless it answers 200 with a valid set of public keys within the bounds. */
export async function fetchJwks(uri: string, settings: Pick<RemoteJwksSettings, 'timeoutMs' | 'maxBytes'>): Promise<PublicJwks> {
  const problem = jwksUriProblem(uri);
  if (problem) throw new JwksFetchError(`jwks_uri refused: ${problem}`);
  const signal = AbortSignal.timeout(settings.timeoutMs);
  let response: Response;
  try {
    response = await fetch(uri, { redirect: 'error', signal, headers: { accept: 'application/jwk-set+json, application/json' } });
  } catch (error) {
    throw new JwksFetchError(`fetch failed: ${signal.aborted ? `no answer within ${settings.timeoutMs} ms` : (error as Error).message}`);
  }
  if (response.status !== 200) {
    await response.body?.cancel();
    throw new JwksFetchError(`answered ${response.status}`);
  }
  const declared = Number(response.headers.get('content-length') ?? 0);
  if (declared > settings.maxBytes) {
    await response.body?.cancel();
    throw new JwksFetchError(`answer larger than ${settings.maxBytes} bytes`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = response.body?.getReader();
  try {
    for (let read = await reader?.read(); read && !read.done; read = await reader?.read()) {
      size += read.value.byteLength;
      if (size > settings.maxBytes) {
        await reader?.cancel();
        throw new JwksFetchError(`answer larger than ${settings.maxBytes} bytes`);
      }
      chunks.push(read.value);
    }
  } catch (error) {
    if (error instanceof JwksFetchError) throw error;
    throw new JwksFetchError(`read failed: ${signal.aborted ? `not read within ${settings.timeoutMs} ms` : (error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new JwksFetchError('the answer is not JSON');
  }
  const issues = jwksIssues(parsed);
  if (issues.length) throw new JwksFetchError(`not a usable JWKS: ${issues[0].path}: ${issues[0].message}`);
  return parsed as PublicJwks;
}
