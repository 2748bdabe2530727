import { ConfigError } from '../../libs/config/load-config';
import { loadExtAuthzConfig } from '../../libs/authz/config';
import { startExtAuthz } from './app';

async function main(): Promise<void> {
  let config;
  try {
    config = loadExtAuthzConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`ext-authz: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const extAuthz = await startExtAuthz(config);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      extAuthz.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`ext-authz failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
