import '../../libs/supported-node';
import { startEchoBackend } from './server';

/** Echo backend for the docker-compose demo: PORT (default 8081), HOST (default 0.0.0.0). */
async function main(): Promise<void> {
  const port = Number(process.env.PORT ?? 8081);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`PORT must be a port number, got ${process.env.PORT}`);
  const backend = await startEchoBackend(port, process.env.HOST ?? '0.0.0.0');
  process.stdout.write(`echo-backend listening on ${backend.url}\n`);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => void backend.close().then(() => process.exit(0)));
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`echo-backend failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
