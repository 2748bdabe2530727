import { readFileSync, existsSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

/** Maps an environment variable to a dotted path in the config object. */
export type EnvOverrides = Record<string, string>;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function setPath(target: Record<string, unknown>, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]] = value;
}

/**
 * Reads an optional YAML file, applies environment overrides on top, then validates
 * with the zod schema. Every failure names the setting (and the env var when it came
 * from one) so a bad deployment stops at start with a readable message.
 */
export function loadConfig<S extends z.ZodType>(
  schema: S,
  options: { file?: string; env?: NodeJS.ProcessEnv; overrides: EnvOverrides; required?: boolean },
): z.infer<S> {
  const env = options.env ?? process.env;
  let raw: Record<string, unknown> = {};
  if (options.file) {
    if (existsSync(options.file)) {
      let parsed: unknown;
      try {
        parsed = parseYaml(readFileSync(options.file, 'utf8'));
      } catch (error) {
        throw new ConfigError(`config file ${options.file}: ${(error as Error).message}`);
      }
      if (parsed !== null && parsed !== undefined) {
        if (typeof parsed !== 'object' || Array.isArray(parsed)) {
          throw new ConfigError(`config file ${options.file}: the top level must be a mapping`);
        }
        raw = parsed as Record<string, unknown>;
      }
    } else if (options.required) {
      throw new ConfigError(`config file ${options.file} does not exist`);
    }
  }
  const fromEnv = new Map<string, string>();
  for (const [name, path] of Object.entries(options.overrides)) {
    const value = env[name];
    if (value !== undefined && value !== '') {
      setPath(raw, path, value);
      fromEnv.set(path, name);
    }
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const path = issue.path.join('.');
      const source = fromEnv.has(path) ? ` (from env ${fromEnv.get(path)})` : '';
      return `${path || '(root)'}${source}: ${issue.message}`;
    });
    throw new ConfigError(`invalid configuration:\n  ${problems.join('\n  ')}`);
  }
  return result.data;
}

/** Booleans from YAML or from env strings ("true"/"false"/"1"/"0"). */
export const booleanSetting = z.preprocess((value) => {
  if (typeof value !== 'string') return value;
  const lowered = value.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(lowered)) return true;
  if (['false', '0', 'no', 'off'].includes(lowered)) return false;
  return value;
}, z.boolean());

export const portSetting = z.coerce.number().int().min(0).max(65535);

export const logLevelSetting = z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info');
