import { ConfigError } from './config/load-config';
import { createLogger } from './logging';
import { keepServingOnUncaughtErrors } from './observability/unexpected-errors';

/** Requests that run on libuv's thread pool: file system calls and getaddrinfo (dns.lookup). */
const THREAD_POOL_WORK = /^(?:FSReq|GetAddrInfoReqWrap|GetNameInfoReqWrap)/;

/**
 * Exit 0 once closed, unless a request is still running on libuv's thread pool: process.exit
 * joins the pool's threads, so it would wait for that request to finish. A PostgreSQL or Redis
 * client reconnecting to a container that is gone has a dns.lookup pending, and where the DNS
 * does not answer (Docker's embedded DNS forwarding to an upstream it cannot reach) getaddrinfo
 * returns after 10 s: `docker stop` of a replica took 3 s, and could reach its 10 s kill. Then the
 * process ends by the signal it was sent, whose default action does not wait (exit status 143
 * for SIGTERM, as for a process without a handler), and says why.
 */
function exitAfterClose(name: string, signal: NodeJS.Signals): void {
  const pending = process.getActiveResourcesInfo().filter((resource) => THREAD_POOL_WORK.test(resource));
  if (pending.length === 0) process.exit(0);
  process.stderr.write(`${name}: ending by ${signal} without waiting for ${pending.join(', ')} (process.exit would)\n`);
  process.removeAllListeners(signal);
  process.kill(process.pid, signal);
  // Should the signal not end it (a listener added back), the usual exit.
  setTimeout(() => process.exit(0), 1000);
}

/**
 * The entry point every service shares: load and validate settings (exit 2 with the message on
 * a bad one), start, then on SIGTERM/SIGINT close gracefully and exit. A failed start exits 1;
 * once serving, unexpected exceptions are logged and counted instead (unexpected-errors.ts).
 */
export function runService<Config>(
  name: string,
  loadConfig: () => Config,
  start: (config: Config) => Promise<{ close(): Promise<void> }>,
): void {
  const main = async () => {
    let config: Config;
    try {
      config = loadConfig();
    } catch (error) {
      if (error instanceof ConfigError) {
        process.stderr.write(`${name}: ${error.message}\n`);
        process.exit(2);
      }
      throw error;
    }
    const service = await start(config);
    // From here on an exception outside any request is logged and counted, not fatal.
    keepServingOnUncaughtErrors(createLogger(name, 'error'));
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.once(signal, () => {
        // Said on stderr, so an exit nobody asked for shows who ended it (a signal, not a crash).
        process.stderr.write(`${name}: ${signal} received, closing\n`);
        const started = Date.now();
        service.close().then(
          () => {
            // How long the close took, to tell it from the supervisor's own time (docker stop).
            process.stderr.write(`${name}: closed in ${Date.now() - started} ms\n`);
            exitAfterClose(name, signal);
          },
          (error: unknown) => {
            process.stderr.write(
              `${name}: close failed after ${Date.now() - started} ms: ${error instanceof Error ? error.message : String(error)}\n`,
            );
            process.exit(1);
          },
        );
      });
    }
  };
  main().catch((error: unknown) => {
    // A settings problem found while starting (a wrong key-encryption key): its message says it all.
    if (error instanceof ConfigError) {
      process.stderr.write(`${name} failed to start: ${error.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`${name} failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}
