import { readFile } from 'node:fs';
import { runService } from '../../libs/service-main';

/**
 * A service (test/process.test.ts) whose libuv thread pool is busy when SIGTERM comes: it opens
 * the FIFO named by BLOCKED_FIFO, which blocks a pool thread until a writer opens it (as a
 * getaddrinfo the DNS does not answer does). Says "blocked service ready" once started.
 */
runService(
  'blocked-service',
  () => ({ fifo: process.env.BLOCKED_FIFO ?? '' }),
  async ({ fifo }) => {
    readFile(fifo, () => undefined);
    process.stdout.write('blocked service ready\n');
    return { close: async () => undefined };
  },
);
