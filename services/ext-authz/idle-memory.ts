import { performance, type EventLoopUtilization } from 'node:perf_hooks';

/** V8's gc() as `--expose-gc` defines it; `last-resort` is the collection that also empties V8's page pool. */
export type ExposedGc = (options: { type: 'major'; execution: 'async'; flavor: 'last-resort' }) => Promise<void> | void;

export interface IdleMemoryOptions {
  /** gc() of a process started with --expose-gc (the shipped node flags); without it nothing is done. */
  gc?: ExposedGc;
  /** How often the event loop's utilization is read (ms). */
  intervalMs?: number;
  /** Below this share of the last interval spent running (0-1), the process is idle. */
  idleUtilization?: number;
  /** Released again only once RSS has grown this much since the last release (bytes)... */
  growthBytes?: number;
  /** ...and at least this long after it (ms). */
  minSpacingMs?: number;
  rss?: () => number;
  /** The event loop's utilization since the last call (performance.eventLoopUtilization by default). */
  utilization?: () => number;
  now?: () => number;
  /** Told after each release: RSS before and after, and how long the collection took. */
  onRelease?: (release: { rssBefore: number; rssAfter: number; ms: number }) => void;
}

const MB = 1024 * 1024;

/**
 * Gives the memory a load made V8 take back to the system once the load stops. V8 keeps the
 * heap pages that a full collection frees in a pool of its own for reuse (V8 13's PagePool),
 * committed and resident, and empties that pool only on a last-resort collection (the
 * LowMemoryNotification an embedder sends under memory pressure, which Node never sends): after
 * 1M Checks ext-authz held about 110 MB of V8 pages for 60 MB of live heap, for as long as it ran
 * (bench/ext-authz-memory.ts). So, when the event loop has been idle for an interval (under 1 %
 * busy: a load has stopped, or never started; one HTTP-mode request every 5 ms keeps it busier)
 * and RSS has grown since the last release, one last-resort
 * collection is run (a few full GCs on V8's task, some 100-300 ms at 100,000 cached tokens,
 * while nothing is asking); a Check that arrives during it waits for it. Under load nothing
 * happens, so no Check pays for it then. Released at most once per minSpacingMs.
 */
export class IdleMemoryRelease {
  private readonly gc: ExposedGc | undefined;
  private readonly intervalMs: number;
  private readonly idleUtilization: number;
  private readonly growthBytes: number;
  private readonly minSpacingMs: number;
  private readonly rss: () => number;
  private readonly utilization: () => number;
  private readonly now: () => number;
  private readonly onRelease: IdleMemoryOptions['onRelease'];
  private timer: NodeJS.Timeout | undefined;
  /** RSS right after the last release (0 before the first: the start's own garbage is released too). */
  private releasedAt = 0;
  private lastReleaseTime = Number.NEGATIVE_INFINITY;
  private releasing = false;
  /** Releases done so far. */
  releases = 0;

  constructor(options: IdleMemoryOptions = {}) {
    this.gc = options.gc;
    this.intervalMs = options.intervalMs ?? 1_000;
    this.idleUtilization = options.idleUtilization ?? 0.01;
    this.growthBytes = options.growthBytes ?? 16 * MB;
    this.minSpacingMs = options.minSpacingMs ?? 30_000;
    this.rss = options.rss ?? process.memoryUsage.rss;
    this.utilization = options.utilization ?? eventLoopUtilizationSinceLastCall();
    this.now = options.now ?? Date.now;
    this.onRelease = options.onRelease;
  }

  /** Whether releases can happen at all: the process has gc() (started with --expose-gc). */
  get enabled(): boolean {
    return this.gc !== undefined;
  }

  start(): this {
    if (this.gc && !this.timer) {
      this.timer = setInterval(() => void this.tick(), this.intervalMs);
      this.timer.unref();
    }
    return this;
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One look: releases when idle, grown and not released lately. Resolves once the collection is done (false: none run). */
  async tick(): Promise<boolean> {
    // Read every tick, so that it always covers the last interval only.
    const utilization = this.utilization();
    if (!this.gc || this.releasing || utilization >= this.idleUtilization) return false;
    const rssBefore = this.rss();
    if (rssBefore < this.releasedAt + this.growthBytes || this.now() - this.lastReleaseTime < this.minSpacingMs) return false;
    this.releasing = true;
    const started = performance.now();
    try {
      await this.gc({ type: 'major', execution: 'async', flavor: 'last-resort' });
    } finally {
      this.releasing = false;
    }
    const rssAfter = this.rss();
    this.releasedAt = rssAfter;
    this.lastReleaseTime = this.now();
    this.releases += 1;
    this.onRelease?.({ rssBefore, rssAfter, ms: performance.now() - started });
    return true;
  }
}

function eventLoopUtilizationSinceLastCall(): () => number {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  return () => {
    const current = performance.eventLoopUtilization();
    const { utilization } = performance.eventLoopUtilization(current, last);
    last = current;
    return utilization;
  };
}

/** gc() when the process was started with --expose-gc, else undefined. */
export function exposedGc(): ExposedGc | undefined {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === 'function' ? (gc as ExposedGc) : undefined;
}
