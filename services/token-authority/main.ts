import { ConfigError } from '../../libs/config/load-config';
import { loadAuthorityConfig } from '../../libs/core/config';
import { startTokenAuthority } from './app';

async function main(): Promise<void> {
  let config;
  try {
    config = loadAuthorityConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`token-authority: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const authority = await startTokenAuthority(config);
  // SIGTERM (docker stop, Kubernetes): finish calls in flight, then exit.
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      authority.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`token-authority failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
