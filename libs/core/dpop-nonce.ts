import { createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { booleanSetting } from '../config/load-config';

/**
 * DPoP nonces (RFC 9449 §8 at the token endpoint, §9 at a resource): values the server hands
 * out in `DPoP-Nonce` and then asks to see in the proof's `nonce` claim, which bounds how long
 * a proof made ahead of time stays usable. Made so that every replica can check them without
 * shared state: a nonce is a time slot (of `lifetime` seconds) and an HMAC of it under a key all
 * replicas derive alike. The current slot's nonce is what is handed out; the previous slot's is
 * still taken (with a fresh one in the answer), as is the next one (a replica whose clock is a
 * little ahead); anything else is refused with `use_dpop_nonce` and a fresh nonce.
 */

/** 4 bytes of slot, 16 of HMAC-SHA256: 27 base64url characters. */
const NONCE = /^[A-Za-z0-9_-]{27}$/;
const MAC_BYTES = 16;

export type NonceCheck = 'current' | 'stale' | 'invalid';

export class DpopNonces {
  private cached: { slot: number; nonce: string } | undefined;
  private key: Buffer | undefined;

  /**
   * @param key at least 32 bytes, the same on every replica that must accept the others' nonces;
   *   or where to get it at first use (ext-authz: once its data plane token is readable)
   * @param lifetime seconds a slot lasts (a nonce is accepted for one to two of them)
   * @param purpose keeps the nonces of the token endpoint and of ext-authz apart
   */
  constructor(
    private readonly keySource: Buffer | (() => Buffer),
    readonly lifetime: number,
    private readonly purpose: string,
  ) {
    if (Buffer.isBuffer(keySource)) this.key = checkedKey(keySource);
    if (!Number.isInteger(lifetime) || lifetime < 1) throw new Error('a DPoP nonce lifetime is a whole number of seconds');
  }

  private slotOf(now: number): number {
    return Math.floor(now / 1000 / this.lifetime);
  }

  private mac(slot: number): Buffer {
    const slotBytes = Buffer.alloc(4);
    slotBytes.writeUInt32BE(slot >>> 0);
    this.key ??= checkedKey((this.keySource as () => Buffer)());
    return createHmac('sha256', this.key).update(`dpop-nonce:${this.purpose}:`).update(slotBytes).digest().subarray(0, MAC_BYTES);
  }

  /** The nonce to hand out now (one HMAC per slot). */
  issue(now: number): string {
    const slot = this.slotOf(now);
    if (this.cached?.slot !== slot) {
      const slotBytes = Buffer.alloc(4);
      slotBytes.writeUInt32BE(slot >>> 0);
      this.cached = { slot, nonce: Buffer.concat([slotBytes, this.mac(slot)]).toString('base64url') };
    }
    return this.cached.nonce;
  }

  /** Whether a proof's `nonce` is this slot's (or the next's), the previous slot's, or none of ours. */
  check(nonce: unknown, now: number): NonceCheck {
    if (typeof nonce !== 'string' || !NONCE.test(nonce)) return 'invalid';
    const bytes = Buffer.from(nonce, 'base64url');
    const slot = bytes.readUInt32BE(0);
    const current = this.slotOf(now) >>> 0;
    const age = (current - slot) >>> 0;
    if (age !== 0 && age !== 1 && age !== 0xffffffff) return 'invalid';
    if (!timingSafeEqual(bytes.subarray(4), this.mac(slot))) return 'invalid';
    return age === 1 ? 'stale' : 'current';
  }
}

function checkedKey(key: Buffer): Buffer {
  if (key.length < 32) throw new Error('a DPoP nonce key needs at least 32 bytes');
  return key;
}

/**
 * The nonce key: the configured one (base64 or text, at least 32 bytes), else derived (HKDF-SHA256)
 * from a secret every replica of the service already holds (the data plane token), else random
 * for this process (then replicas do not take each other's nonces: `shared` is false).
 */
export function nonceKey(
  configured: string | undefined,
  sharedSecret: string | undefined,
  purpose: string,
): { key: Buffer; shared: boolean } {
  if (configured !== undefined) {
    const bytes =
      /^[A-Za-z0-9+/_-]+={0,2}$/.test(configured) && configured.length >= 43 ? Buffer.from(configured, 'base64') : Buffer.from(configured);
    if (bytes.length < 32) throw new Error('dpop.nonceKey must hold at least 32 bytes');
    return { key: bytes, shared: true };
  }
  if (sharedSecret !== undefined)
    return { key: Buffer.from(hkdfSync('sha256', sharedSecret, 'otoroshi-ta', `dpop-nonce-key:${purpose}`, 32)), shared: true };
  return { key: randomBytes(32), shared: false };
}

/** RFC 9449 §8 / §9 server nonces, the same settings for the token authority and ext-authz (libs/core/dpop-nonce.ts). */
export const dpopNonceSettingsSchema = z
  .object({
    /** Every DPoP proof must carry a nonce we issued: else 400 (token endpoint) / 401 (ext-authz) use_dpop_nonce with DPoP-Nonce. */
    requireNonce: booleanSetting.default(false),
    /**
     * Key of the nonces' HMAC: at least 32 bytes (base64, or text), the same on every replica.
     * Unset: derived from the data plane token, which every replica already shares.
     */
    nonceKey: z.string().min(32, 'must be at least 32 characters').optional(),
    /** Seconds one nonce is handed out for; it is accepted for that long again, answered with a fresh one. */
    nonceLifetime: z.coerce.number().int().min(10).max(86_400).default(300),
  })
  .prefault({});

/** Environment overrides of `dpop.*`, for both services. */
export const DPOP_ENV_OVERRIDES = {
  DPOP_REQUIRE_NONCE: 'dpop.requireNonce',
  DPOP_NONCE_KEY: 'dpop.nonceKey',
  DPOP_NONCE_LIFETIME: 'dpop.nonceLifetime',
} as const;
