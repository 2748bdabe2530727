/**
 * The publish loop of a feed that follows the store's change log (DataPlaneFeed, RouteFeed):
 *
 * - `schedule()` (on every store change) runs `publishOnce` after `debounceMs`: a burst of writes is
 *   one run;
 * - one run at a time: asked again while one is under way, it runs once more after it, so no change
 *   is left unread;
 * - `publishOnce` resolving `true` (it read a full batch and more may follow) runs it again at once;
 * - a failure (the position did not move) is handed to `onError` and retried after a backoff,
 *   `retryFirstMs` doubling up to `retryMaxMs`, until it goes through: a passing fault (SQLITE_BUSY)
 *   delays subscribers instead of stranding them until the next write. A success resets the backoff.
 *
 * `ready` (the feed's start) is awaited before the first run.
 */
export interface SerialPublisherOptions {
  debounceMs: number;
  retryFirstMs: number;
  retryMaxMs: number;
  onError: (error: Error) => void;
  ready?: Promise<unknown>;
}

export class SerialPublisher {
  private pending: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private failures = 0;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly publishOnce: () => Promise<unknown>,
    private readonly options: SerialPublisherOptions,
  ) {}

  /** A change happened: publish after the debounce (one timer for a burst). */
  schedule(): void {
    if (this.pending || this.closed) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      void this.publish();
    }, this.options.debounceMs);
  }

  /** Publishes until there is nothing left; resolves when the current run ends (a failed run resolves too). */
  publish(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.running !== undefined) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      await this.options.ready;
      do {
        this.again = false;
        if (this.closed) return;
        try {
          if ((await this.publishOnce()) === true) this.again = true;
          this.failures = 0;
        } catch (error) {
          this.failures += 1;
          this.options.onError(error as Error);
          clearTimeout(this.retry);
          if (!this.closed) this.retry = setTimeout(() => void this.publish(), this.backoffMs()).unref();
          return;
        }
      } while (this.again);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** The wait before the next retry after `failures` failures in a row. */
  private backoffMs(): number {
    return Math.min(this.options.retryMaxMs, this.options.retryFirstMs * 2 ** (this.failures - 1));
  }

  /** Stops the timers; a run under way finishes its current step and stops. */
  close(): void {
    this.closed = true;
    clearTimeout(this.pending);
    clearTimeout(this.retry);
    this.pending = undefined;
    this.retry = undefined;
  }
}
