import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { loadSync } from '@grpc/proto-loader';
import { LOADER_OPTIONS, TOKEN_AUTHORITY_PROTO } from '../services/token-authority/grpc-options';
import {
  adminPost,
  DURATION_SECONDS,
  formatRow,
  freePort,
  grpcFrame,
  grpcStatusOf,
  h2loadGrpc,
  spawnNode,
  startAuthorityProcess,
  wrk,
} from './support';

/**
 * Token authority benchmark: token endpoint (RS256, ES256) against the raw signing ceiling,
 * introspection against a bare Fastify server, and the same calls over gRPC (h2load replaying
 * pre-serialized requests), all measured in this one run.
 *
 *   npm run build && node dist/bench/token-authority.js      (BENCH_SECONDS=10 by default)
 */

/** A serialized token_authority.v1 request, framed for the wire, checked to succeed. */
async function grpcRequest(address: string, method: string, message: object): Promise<{ path: string; frame: Buffer }> {
  const definition = loadSync(TOKEN_AUTHORITY_PROTO, LOADER_OPTIONS);
  const service = definition['token_authority.v1.TokenAuthority'] as Record<string, { requestSerialize(value: object): Buffer }>;
  const frame = grpcFrame(service[method].requestSerialize(message));
  const path = `/token_authority.v1.TokenAuthority/${method}`;
  const status = await grpcStatusOf(address, path, frame);
  if (status !== 0) throw new Error(`${method} answers grpc-status ${status}; not benchmarking an error`);
  return { path, frame };
}
async function main() {
  console.log(
    `token authority REST benchmark: wrk -t1, ${DURATION_SECONDS}s per row, 127.0.0.1, ${process.env.UV_THREADPOOL_SIZE ?? 4} libuv threads`,
  );
  const ceiling = JSON.parse(spawnSync(process.execPath, [resolve(__dirname, 'sign-ceiling.js')], { encoding: 'utf8' }).stdout) as Record<
    string,
    number
  >;
  console.log(`raw node:crypto signing ceiling (both cores):  RS256 ${ceiling.RS256.toFixed(0)}/s  ES256 ${ceiling.ES256.toFixed(0)}/s`);

  const authority = await startAuthorityProcess();
  try {
    await adminPost(authority, '/api/keypairs', { id: 'bench-es256', algorithm: 'ES256' });
    const rsa = await adminPost(authority, '/api/apikeys', { clientId: 'bench-rs', scope: 'read' });
    const ec = await adminPost(authority, '/api/apikeys', { clientId: 'bench-es', metadata: { 'jwt-sign-keypair': 'bench-es256' } });
    await adminPost(authority, '/api/apikeys', { clientId: 'my-id', clientSecret: 'my-secret' });
    const form = (clientId: string, secret: string) =>
      `grant_type=client_credentials&client_id=${clientId}&client_secret=${encodeURIComponent(secret)}`;
    const post = (body: string) => ({
      connections: 16,
      method: 'POST',
      body,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    const tokenUrl = `${authority.url}/.well-known/otoroshi/oauth/token`;

    console.log(
      formatRow('POST token, RS256 (generated secret)', wrk(tokenUrl, post(form('bench-rs', rsa.clientSecret))), {
        name: 'RS256 ceiling',
        value: ceiling.RS256,
      }),
    );
    console.log(
      formatRow('POST token, RS256 (tutorial my-secret, scrypt)', wrk(tokenUrl, post(form('my-id', 'my-secret'))), {
        name: 'RS256 ceiling',
        value: ceiling.RS256,
      }),
    );
    console.log(
      formatRow('POST token, ES256', wrk(tokenUrl, post(form('bench-es', ec.clientSecret))), {
        name: 'ES256 ceiling',
        value: ceiling.ES256,
      }),
    );

    const token = (
      (await (
        await fetch(tokenUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: form('bench-rs', rsa.clientSecret),
        })
      ).json()) as { access_token: string }
    ).access_token;
    const introspectBody = `token=${token}&client_id=bench-rs&client_secret=${encodeURIComponent(rsa.clientSecret)}`;
    const fastifyPort = await freePort();
    const bare = await spawnNode('bare-fastify.js', { PORT: String(fastifyPort) }, fastifyPort, '/ready');
    try {
      const reference = wrk(`${bare.url}/introspect`, post(introspectBody));
      console.log(formatRow('bare Fastify, constant answer', reference));
      console.log(
        formatRow(
          'POST introspect, valid RS256 token',
          wrk(`${authority.url}/.well-known/otoroshi/oauth/token/introspect`, post(introspectBody)),
          { name: 'bare Fastify', value: reference.requestsPerSecond },
        ),
      );
    } finally {
      await bare.stop();
    }
    console.log(formatRow('GET jwks.json', wrk(`${authority.url}/.well-known/otoroshi/oauth/jwks.json`, { connections: 16 })));

    // gRPC: 4 connections x 4 streams = 16 in flight, as the 16 REST connections.
    const grpcLoad = { clients: 4, streams: 4 };
    const client = { client_id: 'bench-rs', client_secret: rsa.clientSecret };
    const issue = await grpcRequest(authority.grpcAddress, 'IssueToken', { grant_type: 'client_credentials', client });
    const restRs = wrk(tokenUrl, post(form('bench-rs', rsa.clientSecret)));
    console.log(formatRow('POST token, RS256 (again, beside gRPC)', restRs));
    console.log(
      formatRow('gRPC IssueToken, RS256', h2loadGrpc(authority.grpcAddress, issue.path, issue.frame, grpcLoad), {
        name: 'REST token',
        value: restRs.requestsPerSecond,
      }),
    );
    const introspect = await grpcRequest(authority.grpcAddress, 'IntrospectToken', { token, client });
    const restIntrospect = wrk(`${authority.url}/.well-known/otoroshi/oauth/token/introspect`, post(introspectBody));
    console.log(formatRow('POST introspect (again, beside gRPC)', restIntrospect));
    console.log(
      formatRow('gRPC IntrospectToken', h2loadGrpc(authority.grpcAddress, introspect.path, introspect.frame, grpcLoad), {
        name: 'REST introspect',
        value: restIntrospect.requestsPerSecond,
      }),
    );
  } finally {
    await authority.stop();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
