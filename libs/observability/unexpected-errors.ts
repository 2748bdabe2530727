import { Counter, type Registry } from 'prom-client';

/**
 * What a truly unexpected exception does, in both services: it is logged with its stack,
 * counted in `unexpected_errors_total{where}`, and the process keeps serving. A request that
 * hit it gets a plain INTERNAL (gRPC) or 500 `server_error` (REST) that reveals nothing.
 * An exception outside any request (a timer, a stream callback) is logged and counted the
 * same way instead of exiting: one bad request must never take the service down with it.
 */
export type UnexpectedErrorSite = 'rest' | 'grpc' | 'uncaught_exception' | 'unhandled_rejection';

const counter = new Counter({
  name: 'unexpected_errors_total',
  help: 'Exceptions no code path expected, by where they were caught; each is logged with its stack.',
  labelNames: ['where'],
  registers: [],
});

export function registerUnexpectedErrors(registry: Registry): void {
  registry.registerMetric(counter);
}

export function countUnexpectedError(where: UnexpectedErrorSite): void {
  counter.inc({ where });
}

export interface ErrorLogger {
  error(object: object, message: string): void;
}

let installed: ErrorLogger | undefined;

/** Process-wide handlers (installed once, by the service entry point). */
export function keepServingOnUncaughtErrors(logger: ErrorLogger): void {
  if (installed) return;
  installed = logger;
  process.on('uncaughtException', (error) => {
    countUnexpectedError('uncaught_exception');
    logger.error({ err: error }, 'uncaught exception; still serving');
  });
  process.on('unhandledRejection', (reason) => {
    countUnexpectedError('unhandled_rejection');
    logger.error({ err: reason }, 'unhandled promise rejection; still serving');
  });
}
