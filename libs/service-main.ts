import { ConfigError } from './config/load-config';
import { createLogger } from './logging';
import { keepServingOnUncaughtErrors } from './observability/unexpected-errors';

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
            process.exit(0);
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
