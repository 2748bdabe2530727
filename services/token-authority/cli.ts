import '../../libs/supported-node';
import { readFileSync } from 'node:fs';
import { inspect, parseArgs } from 'node:util';
import { ConfigError } from '../../libs/config/load-config';
import { createAuthority, type Authority } from '../../libs/core/authority';
import { loadAuthorityConfig } from '../../libs/core/config';
import type { AdminContext } from '../../libs/core/admin-service';
import { cliActor } from '../../libs/core/audit';
import { AdminError } from '../../libs/core/errors';
import { SqliteStore } from '../../libs/core/store/sqlite-store';

const USAGE = `usage: npm run cli -- <command>

  apikeys list
  apikeys get <clientId>
  apikeys create [--id ID] [--secret SECRET] [--name NAME] [--description TEXT] [--scope "a b"]
                 [--entity route_foo]... [--metadata key=value]... [--tag TAG]... [--disabled]
                 [--valid-until 2027-01-01T00:00:00Z]
  apikeys update <clientId> [--secret S] [--name N] [--scope "a b"] [--enable | --disable] [--metadata k=v]...
  apikeys rotate-secret <clientId> [--secret S] [--grace-hours H]
  apikeys delete <clientId>
  keypairs list
  keypairs get <id>
  keypairs create <id> [--alg RS256|PS256|ES256|EdDSA] [--private-key-file key.pem] [--description TEXT]
                 [--rotate-every 30d --publish-ahead 1d [--leeway 60s]]
  keypairs schedule <id> --rotate-every 30d --publish-ahead 1d [--leeway 60s]
                         rotate on a schedule: the next key is in the JWKS publish-ahead before it signs
                         (durations: 45s, 90m, 12h, 30d, or seconds)
  keypairs unschedule <id>   rotate only when asked again
  keypairs rotate <id> [--private-key-file key.pem]
  keypairs retire <id>
  keypairs delete <id>
  keypairs encrypt       seal every private key under KEY_ENCRYPTION_KEY: plaintext ones (a store written
                         without it) and those under KEY_ENCRYPTION_KEY_PREVIOUS (rotation)
  routes list [--enabled true|false] [--domain DOMAIN]
  routes get <id>
  routes create <id> --domain foo.oto.tools... --target [http(s)://]host:port... [--path-prefix /]
                [--name N] [--description T] [--extractor bearer|basic|customHeaders|clientId]...
                [--entity route_foo]... [--scope "a b"] [--strip-credential] [--public-prefix /public/]...
                [--no-check] [--disabled]
  routes create --file route.json          (the body of POST /api/routes)
  routes update <id> [--file patch.json] [--enable | --disable]   (a JSON merge patch, as PATCH /api/routes/:id)
  routes delete <id>
  audit list [--type apikey|keypair|route] [--id ENTITY_ID] [--limit N] [--after ID]
  store backup <file>    a consistent copy of a SQLite store, while servers run (PostgreSQL: pg_dump)
  store restore <file>   replaces a SQLite store's content with a backup's, and gives it a new store id
  store rotate-id        a new store id, after restoring a backup by other means (a file copy, pg_restore):
                         data planes then read a snapshot instead of resuming from the old positions

Works on the store named by the same settings as the server (config/token-authority.yaml, DATA_DIR, STORE_PATH...).
A running server sees these changes within 250 ms. An unexpected failure is said in one line
(exit 1); --verbose, or DEBUG set, adds where it happened.`;

const OPTIONS = {
  id: { type: 'string' },
  secret: { type: 'string' },
  name: { type: 'string' },
  description: { type: 'string' },
  scope: { type: 'string' },
  entity: { type: 'string', multiple: true },
  metadata: { type: 'string', multiple: true },
  tag: { type: 'string', multiple: true },
  disabled: { type: 'boolean' },
  enable: { type: 'boolean' },
  disable: { type: 'boolean' },
  'valid-until': { type: 'string' },
  'grace-hours': { type: 'string' },
  alg: { type: 'string' },
  'private-key-file': { type: 'string' },
  'rotate-every': { type: 'string' },
  'publish-ahead': { type: 'string' },
  leeway: { type: 'string' },
  type: { type: 'string' },
  limit: { type: 'string' },
  after: { type: 'string' },
  domain: { type: 'string', multiple: true },
  target: { type: 'string', multiple: true },
  'path-prefix': { type: 'string' },
  extractor: { type: 'string', multiple: true },
  'strip-credential': { type: 'boolean' },
  'public-prefix': { type: 'string', multiple: true },
  'no-check': { type: 'boolean' },
  enabled: { type: 'string' },
  file: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  verbose: { type: 'boolean' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

function metadataOf(pairs: string[] | undefined): Record<string, string> | undefined {
  if (!pairs) return undefined;
  return Object.fromEntries(
    pairs.map((pair) => {
      const at = pair.indexOf('=');
      if (at < 1) throw new AdminError(400, `--metadata takes key=value, got '${pair}'`);
      return [pair.slice(0, at), pair.slice(at + 1)];
    }),
  );
}

/** Only the options given, so an update changes nothing else. */
function apiKeyFields(values: Values): Record<string, unknown> {
  const fields: Record<string, unknown> = {
    clientSecret: values.secret,
    clientName: values.name,
    description: values.description,
    scope: values.scope,
    authorizedEntities: values.entity,
    metadata: metadataOf(values.metadata),
    tags: values.tag,
    validUntil: values['valid-until'],
    enabled: values.disabled || values.disable ? false : values.enable ? true : undefined,
  };
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

/** `45s`, `90m`, `12h`, `30d` or plain seconds, as whole seconds (the admin service checks the range). */
function seconds(option: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const match = /^(\d{1,12})([smhd]?)$/.exec(value.trim());
  if (!match) throw new AdminError(400, `--${option} takes a duration such as 45s, 90m, 12h, 30d or seconds, got '${value}'`);
  return Number(match[1]) * UNIT_SECONDS[match[2] || 's'];
}

/** The rotation schedule the options give, or undefined when none of them is given. */
function rotationOf(values: Values): Record<string, number | undefined> | undefined {
  const rotation = {
    rotateEvery: seconds('rotate-every', values['rotate-every']),
    publishAhead: seconds('publish-ahead', values['publish-ahead']),
    leeway: seconds('leeway', values.leeway),
  };
  return Object.values(rotation).some((value) => value !== undefined) ? rotation : undefined;
}

/** Every API key, a page at a time (the CLI prints them all). */
async function allApiKeys(admin: Authority['admin']): Promise<unknown[]> {
  const all: unknown[] = [];
  let after: string | undefined;
  do {
    const page = await admin.listApiKeys({ limit: 1000, ...(after === undefined ? {} : { after }) });
    all.push(...page.items);
    after = page.next;
  } while (after !== undefined);
  return all;
}

function jsonFile(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new AdminError(400, `--file ${path}: ${(error as Error).message}`);
  }
}

/** `[http://|https://]host:port` as a route target (https: TLS to the backend). */
function targetOf(text: string): Record<string, unknown> {
  const match = /^(?:(https?):\/\/)?(\[[0-9a-fA-F:.]+\]|[^:/[\]]+):(\d{1,5})$/.exec(text);
  if (!match) throw new AdminError(400, `--target takes [http(s)://]host:port, got '${text}'`);
  return { hostname: match[2].replace(/^\[|\]$/g, ''), port: Number(match[3]), tls: match[1] === 'https' };
}

/** A route body from the options (validated by the admin service like an API body), or from --file. */
function routeBody(values: Values, id: string | undefined): unknown {
  if (values.file) {
    const fromFile = jsonFile(values.file);
    return id !== undefined && typeof fromFile === 'object' && fromFile !== null && !('id' in fromFile) ? { ...fromFile, id } : fromFile;
  }
  const apikeys: Record<string, unknown> = {
    enabled: values['no-check'] ? false : undefined,
    extractors: values.extractor,
    authorizedEntities: values.entity,
    requiredScopes: values.scope?.split(' ').filter(Boolean),
    stripCredential: values['strip-credential'],
    publicPathPrefixes: values['public-prefix'],
  };
  const body: Record<string, unknown> = {
    id,
    name: values.name,
    description: values.description,
    enabled: values.disabled ? false : undefined,
    frontend: { domains: values.domain ?? [], pathPrefix: values['path-prefix'] },
    backend: { targets: (values.target ?? []).map(targetOf) },
    apikeys: Object.fromEntries(Object.entries(apikeys).filter(([, value]) => value !== undefined)),
  };
  return JSON.parse(JSON.stringify(body));
}

/** Every route, a page at a time. */
async function allRoutes(admin: Authority['admin'], values: Values): Promise<unknown[]> {
  const all: unknown[] = [];
  let after: string | undefined;
  const filters = Object.fromEntries(
    Object.entries({ enabled: values.enabled, domain: values.domain?.[0] }).filter(([, v]) => v !== undefined),
  );
  do {
    const page = await admin.listRoutes({ limit: 1000, ...filters, ...(after === undefined ? {} : { after }) });
    all.push(...page.items);
    after = page.next;
  } while (after !== undefined);
  return all;
}

function sqliteStore(authority: Authority, command: string): SqliteStore {
  if (authority.store instanceof SqliteStore) return authority.store;
  throw new AdminError(400, `store ${command} works on a SQLite store; for PostgreSQL use pg_dump / pg_restore, then store rotate-id`);
}

async function run(authority: Authority, positionals: string[], values: Values): Promise<unknown> {
  const [resource, action, target] = positionals;
  const admin = authority.admin;
  const need = () => {
    if (!target) throw new AdminError(400, `${resource} ${action} needs an id`);
    return target;
  };
  const privateKey = values['private-key-file'] ? readFileSync(values['private-key-file'], 'utf8') : undefined;
  // Changes made here are audited as the operating system user who ran the command.
  const context: AdminContext = { actor: cliActor() };
  const body = <T>(tagged: Promise<{ body: T }>) => tagged.then((answer) => answer.body);
  switch (`${resource} ${action}`) {
    case 'apikeys list':
      return allApiKeys(admin);
    case 'apikeys get':
      return body(admin.getApiKey(need()));
    case 'apikeys create':
      return body(admin.createApiKey({ clientId: values.id, ...apiKeyFields(values) }, context));
    case 'apikeys update':
      return body(admin.updateApiKey(need(), apiKeyFields(values), context));
    case 'apikeys rotate-secret':
      return body(
        admin.rotateApiKeySecret(
          need(),
          {
            clientSecret: values.secret,
            gracePeriod: values['grace-hours'] === undefined ? undefined : Number(values['grace-hours']),
          },
          context,
        ),
      );
    case 'apikeys delete':
      return admin.deleteApiKey(need(), context).then(() => ({ deleted: target }));
    case 'keypairs list':
      return admin.listKeyPairs();
    case 'keypairs get':
      return body(admin.getKeyPair(need()));
    case 'keypairs create':
      return body(
        admin.createKeyPair(
          { id: need(), algorithm: values.alg, description: values.description, privateKey, rotation: rotationOf(values) },
          context,
        ),
      );
    case 'keypairs schedule':
      return body(admin.updateKeyPair(need(), { rotation: rotationOf(values) ?? {} }, context));
    case 'keypairs unschedule':
      return body(admin.updateKeyPair(need(), { rotation: null }, context));
    case 'keypairs rotate':
      return body(admin.rotateKeyPair(need(), { privateKey }, context));
    case 'keypairs retire':
      return body(admin.retireKeyPair(need(), context));
    case 'keypairs encrypt':
      return admin.sealPrivateKeys().then((changed) => ({ keyEncryptionKey: authority.keyRing.protector.currentKekId, changed }));
    case 'keypairs delete':
      return admin.deleteKeyPair(need(), context).then(() => ({ deleted: target }));
    case 'routes list':
      return allRoutes(admin, values);
    case 'routes get':
      return body(admin.getRoute(need()));
    case 'routes create':
      return body(admin.createRoute(routeBody(values, target), context));
    case 'routes update': {
      const patch = values.file ? jsonFile(values.file) : {};
      if ((values.enable || values.disable) && typeof patch === 'object' && patch !== null && !Array.isArray(patch))
        (patch as Record<string, unknown>).enabled = Boolean(values.enable);
      return body(admin.patchRoute(need(), patch, context, false));
    }
    case 'routes delete':
      return admin.deleteRoute(need(), context).then(() => ({ deleted: target }));
    case 'audit list': {
      const query = { entity: values.type, entityId: values.id, limit: values.limit, after: values.after };
      return (await admin.listAudit(Object.fromEntries(Object.entries(query).filter(([, value]) => value !== undefined)))).items;
    }
    case 'store backup':
      return sqliteStore(authority, 'backup')
        .backupTo(need())
        .then(() => ({ backup: target, storeId: authority.store.changes.storeId }));
    case 'store restore':
      return sqliteStore(authority, 'restore')
        .restoreFrom(need())
        .then((storeId) => ({ restored: target, storeId }));
    case 'store rotate-id':
      return authority.store.rotateStoreId().then((storeId) => ({ storeId }));
    default:
      throw new AdminError(400, `unknown command '${positionals.join(' ')}'\n\n${USAGE}`);
  }
}

async function main(): Promise<number> {
  let parsed: ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true; strict: true }>>;
  try {
    parsed = parseArgs({ options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (parsed.values.help || parsed.positionals.length < 2) {
    process.stdout.write(`${USAGE}\n`);
    return parsed.values.help ? 0 : 2;
  }
  let authority: Authority | undefined;
  try {
    const config = loadAuthorityConfig();
    const quiet = { info: () => {}, warn: (message: string) => process.stderr.write(`${message}\n`) };
    authority = await createAuthority(config, quiet, { adminApi: false, seedRoutes: false });
    const result = await run(authority, parsed.positionals, parsed.values);
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    return 0;
  } catch (error) {
    if (error instanceof AdminError) {
      process.stderr.write(`error: ${error.message}${error.details ? `\n${JSON.stringify(error.details, null, 2)}` : ''}\n`);
      return error.status === 404 ? 4 : 1;
    }
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      return 2;
    }
    // Not a refusal of the input (a file system or store error, a bug): one line, the stack when asked.
    const message = (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, ' ');
    if (parsed.values.verbose || process.env.DEBUG) process.stderr.write(`error: ${message}\n${inspect(error)}\n`);
    else process.stderr.write(`error: ${message} (--verbose for details)\n`);
    return 1;
  } finally {
    await authority?.close();
  }
}

void main().then((code) => process.exit(code));
