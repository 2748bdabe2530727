import { activeVersion, pendingVersion, type KeyPairRecord, type KeyVersion } from './model';

/**
 * Scheduled key rotation, as decisions on a key pair record and a time (no timer, no store):
 * what the admin service applies inside one atomic store change, and what the scheduler below
 * uses to know when to look again.
 *
 * A rotation is one write at publish time: the next version is added with `activatesAt` (the
 * switch), and the signing version gets `retiredAt` = that same instant and `verifyUntil` = the
 * switch + the token lifetime + the leeway. Nothing is written at the switch itself: every
 * replica's key ring picks the signer by its own clock, so all switch at the same stored time.
 * A rotation happens only while no version is pending, inside the store's read-modify-write
 * (PostgreSQL SELECT ... FOR UPDATE, SQLite's single writer): of replicas racing for the same
 * slot the first writes it, the others find the pending version and write nothing.
 */

const SECOND = 1000;

export interface NextRotation {
  /** When the next key is (or was) published in the JWKS and to the data planes. */
  publishAt: number;
  /** When it starts signing. */
  switchAt: number;
  /** Its kid, once published (pending). */
  kid?: string;
}

/** The next rotation of a key pair with a schedule: the pending one, or the one to come; undefined without schedule or signer. */
export function nextRotation(keyPair: KeyPairRecord, now: number): NextRotation | undefined {
  const policy = keyPair.rotation;
  if (!policy) return undefined;
  const pending = pendingVersion(keyPair, now);
  if (pending?.activatesAt !== undefined) return { publishAt: pending.createdAt, switchAt: pending.activatesAt, kid: pending.kid };
  const active = activeVersion(keyPair, now);
  if (!active) return undefined;
  const switchAt = (active.activatesAt ?? active.createdAt) + policy.rotateEvery * SECOND;
  return { publishAt: switchAt - policy.publishAhead * SECOND, switchAt };
}

/**
 * How much earlier than publishAt a rotation is already due: a tenth of publishAhead, at most a
 * minute. Publishing a little early costs nothing (the key is only visible longer) and keeps a
 * timer or a store a few milliseconds late from moving the switch.
 */
export function publishEarly(publishAhead: number): number {
  return Math.min((publishAhead * SECOND) / 10, 60 * SECOND);
}

/**
 * When a rotation is due at `now`, the instant the new key will sign from: the scheduled switch,
 * or, when the publication is late (no authority ran at publish time, or the schedule was just
 * set on an old key), `now` + publishAhead, so caches always get the whole publishAhead.
 */
export function dueSwitch(keyPair: KeyPairRecord, now: number): number | undefined {
  const next = nextRotation(keyPair, now);
  const publishAhead = keyPair.rotation?.publishAhead ?? 0;
  if (!next || next.kid !== undefined || now < next.publishAt - publishEarly(publishAhead)) return undefined;
  return now <= next.publishAt ? next.switchAt : now + publishAhead * SECOND;
}

/**
 * The key pair after a due rotation (a changed copy), or undefined when none is due (another
 * replica already did it, or the schedule changed). `next` is the new version's material and kid;
 * `tokenLifetime` (ms) is the longest a token signed by the replaced key can live. Versions whose
 * tokens have all expired (verifyUntil passed) are dropped: a key rotating every day does not
 * accumulate a year of versions.
 */
export function applyDueRotation(
  keyPair: KeyPairRecord,
  now: number,
  next: Omit<KeyVersion, 'createdAt' | 'activatesAt' | 'retiredAt' | 'verifyUntil'>,
  tokenLifetime: number,
): KeyPairRecord | undefined {
  const switchAt = dueSwitch(keyPair, now);
  const policy = keyPair.rotation;
  if (switchAt === undefined || !policy) return undefined;
  const changed = structuredClone(keyPair);
  const active = activeVersion(changed, now);
  if (!active) return undefined;
  active.retiredAt = switchAt;
  active.verifyUntil = switchAt + tokenLifetime + policy.leeway * SECOND;
  changed.versions = changed.versions.filter((version) => version.verifyUntil === undefined || version.verifyUntil > now);
  changed.versions.push({ ...next, createdAt: now, activatesAt: switchAt });
  return changed;
}

/** The earliest time any of these key pairs needs a look (a rotation to publish), if any. */
export function nextDueAt(keyPairs: KeyPairRecord[], now: number): number | undefined {
  let earliest: number | undefined;
  for (const keyPair of keyPairs) {
    const next = nextRotation(keyPair, now);
    if (!next) continue;
    const { rotateEvery = 0, publishAhead = 0 } = keyPair.rotation ?? {};
    // A pending key: the following rotation is due one period after it starts signing.
    const publishAt = next.kid === undefined ? next.publishAt : next.switchAt + (rotateEvery - publishAhead) * SECOND;
    const at = publishAt - publishEarly(publishAhead);
    if (earliest === undefined || at < earliest) earliest = at;
  }
  return earliest;
}

/** setTimeout's largest delay (about 24.8 days); longer waits are taken in steps. */
const MAX_TIMER = 2_147_483_647;

export interface RotationSchedulerOptions {
  /** Publishes what is due, returns when to look next (see AdminService.rotateDueKeyPairs). */
  run: () => Promise<number | undefined>;
  now: () => number;
  /** Looks again at least this often (ms) even with nothing due: a schedule set by another process. */
  idleCheck?: number;
  onError?: (error: Error) => void;
}

/**
 * Runs the due rotations when they are due: a timer to the earliest due time, capped by
 * `idleCheck`, and `poke()` after any change (a schedule set here or by another process). One run
 * at a time; a poke during a run makes another run after it.
 */
export class RotationScheduler {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private again = false;
  private closed = false;

  constructor(private readonly options: RotationSchedulerOptions) {}

  start(): void {
    this.poke();
  }

  /** Look now (coalesced). */
  poke(): void {
    if (this.closed) return;
    if (this.running !== undefined) {
      this.again = true;
      return;
    }
    this.running = this.runOnce().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.poke();
      }
    });
  }

  private async runOnce(): Promise<void> {
    clearTimeout(this.timer);
    let next: number | undefined;
    try {
      next = await this.options.run();
    } catch (error) {
      this.options.onError?.(error as Error);
    }
    if (this.closed) return;
    const idle = this.options.idleCheck ?? 60_000;
    // A due time already past after a run means the run could not publish it (it failed): not a busy loop.
    const wait = next === undefined ? idle : next - this.options.now() + 1;
    const delay = Math.min(wait <= 0 ? 1000 : wait, idle, MAX_TIMER);
    this.timer = setTimeout(() => this.poke(), delay);
    this.timer.unref();
  }

  /** Stops the timer and waits for a run in progress. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running;
  }
}
