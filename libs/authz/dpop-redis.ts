import type { Redis } from 'ioredis';
import { type DpopReplayMemory, MemoryReplays } from '../core/dpop';

/**
 * DPoP proof jtis shared by every ext-authz replica on one Redis (SET NX PX: the first replica
 * to record a proof takes it, any other sees the key and refuses it), behind this process's own
 * memory, which catches a replay to the same replica without a round trip. When Redis does not
 * answer within `waitMs`, the proof is judged by this process's memory alone (the replay window
 * is then per replica, as without Redis) and `onFailure` says so.
 */
export class RedisDpopReplays implements DpopReplayMemory {
  private readonly local = new MemoryReplays();

  constructor(
    private readonly redis: Redis,
    private readonly keyPrefix: string,
    private readonly waitMs: number,
    private readonly onFailure: (error: Error) => void = () => {},
  ) {}

  useOnce(id: string, ttlMs: number): boolean | Promise<boolean> {
    if (!this.local.useOnce(id, ttlMs)) return false;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`redis did not answer within ${this.waitMs} ms`)), this.waitMs);
    });
    return Promise.race([this.redis.set(`${this.keyPrefix}dpop-jti:${id}`, '1', 'PX', ttlMs, 'NX'), timeout]).then(
      (answer) => {
        clearTimeout(timer);
        return answer === 'OK';
      },
      (error: Error) => {
        clearTimeout(timer);
        this.onFailure(error);
        return true;
      },
    );
  }
}
