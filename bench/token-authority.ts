import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { adminPost, DURATION_SECONDS, formatRow, freePort, spawnNode, startAuthorityProcess, wrk } from './support';

/**
 * Token authority REST benchmark: token endpoint (RS256, ES256) against the raw signing
 * ceiling, and introspection against a bare Fastify server, all measured in this one run.
 *
 *   npm run build && node dist/bench/token-authority.js      (BENCH_SECONDS=10 by default)
 */
async function main() {
  console.log(`token authority REST benchmark: wrk -t1, ${DURATION_SECONDS}s per row, 127.0.0.1, ${process.env.UV_THREADPOOL_SIZE ?? 4} libuv threads`);
  const ceiling = JSON.parse(spawnSync(process.execPath, [resolve(__dirname, 'sign-ceiling.js')], { encoding: 'utf8' }).stdout) as Record<string, number>;
  console.log(`raw node:crypto signing ceiling (both cores):  RS256 ${ceiling.RS256.toFixed(0)}/s  ES256 ${ceiling.ES256.toFixed(0)}/s`);

  const authority = await startAuthorityProcess();
  try {
    await adminPost(authority, '/api/keypairs', { id: 'bench-es256', algorithm: 'ES256' });
    const rsa = await adminPost(authority, '/api/apikeys', { clientId: 'bench-rs', scope: 'read' });
    const ec = await adminPost(authority, '/api/apikeys', { clientId: 'bench-es', metadata: { 'jwt-sign-keypair': 'bench-es256' } });
    await adminPost(authority, '/api/apikeys', { clientId: 'my-id', clientSecret: 'my-secret' });
    const form = (clientId: string, secret: string) => `grant_type=client_credentials&client_id=${clientId}&client_secret=${encodeURIComponent(secret)}`;
    const post = (body: string) => ({ connections: 16, method: 'POST', body, headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    const tokenUrl = `${authority.url}/.well-known/otoroshi/oauth/token`;

    console.log(formatRow('POST token, RS256 (generated secret)', wrk(tokenUrl, post(form('bench-rs', rsa.clientSecret))), { name: 'RS256 ceiling', value: ceiling.RS256 }));
    console.log(formatRow('POST token, RS256 (tutorial my-secret, scrypt)', wrk(tokenUrl, post(form('my-id', 'my-secret'))), { name: 'RS256 ceiling', value: ceiling.RS256 }));
    console.log(formatRow('POST token, ES256', wrk(tokenUrl, post(form('bench-es', ec.clientSecret))), { name: 'ES256 ceiling', value: ceiling.ES256 }));

    const token = ((await (await fetch(tokenUrl, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form('bench-rs', rsa.clientSecret) })).json()) as { access_token: string }).access_token;
    const introspectBody = `token=${token}&client_id=bench-rs&client_secret=${encodeURIComponent(rsa.clientSecret)}`;
    const fastifyPort = await freePort();
    const bare = await spawnNode('bare-fastify.js', { PORT: String(fastifyPort) }, fastifyPort, '/ready');
    try {
      const reference = wrk(`${bare.url}/introspect`, post(introspectBody));
      console.log(formatRow('bare Fastify, constant answer', reference));
      console.log(formatRow('POST introspect, valid RS256 token', wrk(`${authority.url}/.well-known/otoroshi/oauth/token/introspect`, post(introspectBody)), { name: 'bare Fastify', value: reference.requestsPerSecond }));
    } finally {
      await bare.stop();
    }
    console.log(formatRow('GET jwks.json', wrk(`${authority.url}/.well-known/otoroshi/oauth/jwks.json`, { connections: 16 })));
  } finally {
    await authority.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
