import { readFileSync } from 'node:fs';
import path from 'node:path';
import { renderEnvoyConfig } from '../libs/envoy/render-config';
import { dropSchema, POSTGRES_URL, randomSchema } from '../test/support/postgres';
import { ENVOY_DIR, runEnvoy, type TestEnvoy } from '../test/support/envoy';
import { httpRequest } from '../test/support/http';
import { adminPost, DURATION_SECONDS, formatRow, freePort, startAuthorityProcess, wrk, type LoadResult } from './support';

/**
 * Token requests/s (RS256) and introspections/s of the token authority on each store: one
 * replica on SQLite, one on PostgreSQL, two on PostgreSQL behind Envoy (envoy/envoy-cluster.yaml
 * rendered for 127.0.0.1). Same load tool (wrk -t1), same 16 connections, same requests.
 *
 *   npm run build && node dist/bench/store-replicas.js      (BENCH_SECONDS=10 by default; PostgreSQL on
 *   127.0.0.1:5432, or TEST_POSTGRES_URL; Envoy on PATH)
 */
const CONNECTIONS = 16;

interface Target {
  /** Where wrk sends the requests. */
  url: string;
  /** The Host header (Envoy routes oauth.oto.tools to the replicas); spelled `Host` so it replaces the one wrk sends. */
  host?: string;
}

async function measure(
  target: Target,
  admin: { url: string; adminToken: string },
): Promise<{ tokens: LoadResult; introspections: LoadResult }> {
  const created = await adminPost(admin, '/api/apikeys', { clientId: `bench-${Date.now()}`, scope: 'read' });
  const clientId = created.clientId as string;
  const secret = created.clientSecret as string;
  const headers = { 'content-type': 'application/x-www-form-urlencoded', ...(target.host ? { Host: target.host } : {}) };
  const tokenBody = `grant_type=client_credentials&client_id=${clientId}&client_secret=${encodeURIComponent(secret)}`;
  // Every replica has seen the key (pushed within a second) before the load starts.
  let token = '';
  for (let attempt = 0; attempt < 100 && !token; attempt += 1) {
    // node:http: fetch will not send a Host header.
    const answers = await Promise.all(
      [0, 1, 2, 3].map(() => httpRequest(`${target.url}/.well-known/otoroshi/oauth/token`, { method: 'POST', headers, body: tokenBody })),
    );
    if (answers.every((answer) => answer.status === 200)) token = (JSON.parse(answers[0].body) as { access_token: string }).access_token;
    else await new Promise((done) => setTimeout(done, 20));
  }
  if (!token) throw new Error('the key does not issue tokens through this target');
  const load = (body: string) => ({ connections: CONNECTIONS, method: 'POST', body, headers });
  const tokens = wrk(`${target.url}/.well-known/otoroshi/oauth/token`, load(tokenBody));
  const introspections = wrk(
    `${target.url}/.well-known/otoroshi/oauth/token/introspect`,
    load(`token=${token}&client_id=${clientId}&client_secret=${encodeURIComponent(secret)}`),
  );
  return { tokens, introspections };
}

async function main() {
  console.log(`store benchmark: wrk -t1 -c${CONNECTIONS}, ${DURATION_SECONDS}s per row, 127.0.0.1, RS256 (the default key pair)`);
  const rows: [string, LoadResult][] = [];
  const report = (name: string, result: { tokens: LoadResult; introspections: LoadResult }) => {
    rows.push([`${name}: POST token`, result.tokens], [`${name}: POST introspect`, result.introspections]);
    console.log(formatRow(`${name}: POST token`, result.tokens));
    console.log(formatRow(`${name}: POST introspect`, result.introspections));
  };

  const sqlite = await startAuthorityProcess();
  try {
    report('1 replica, SQLite', await measure({ url: sqlite.url }, sqlite));
  } finally {
    await sqlite.stop();
  }

  const schema = randomSchema('bench');
  const onPostgres = { STORE_URL: POSTGRES_URL, STORE_SCHEMA: schema };
  try {
    const a = await startAuthorityProcess(onPostgres);
    let b: Awaited<ReturnType<typeof startAuthorityProcess>> | undefined;
    let envoy: TestEnvoy | undefined;
    try {
      report('1 replica, PostgreSQL', await measure({ url: a.url }, a));
      b = await startAuthorityProcess(onPostgres);
      const address = (url: string) => ({ address: '127.0.0.1', port: Number(new URL(url).port) });
      const grpc = (grpcAddress: string) => ({ address: '127.0.0.1', port: Number(grpcAddress.split(':')[1]) });
      const [listener, adminPort, unused] = [await freePort(), await freePort(), await freePort()];
      const config = renderEnvoyConfig(readFileSync(path.join(ENVOY_DIR, 'envoy-cluster.yaml'), 'utf8'), {
        listener: { address: '127.0.0.1', port: listener },
        admin: { address: '127.0.0.1', port: adminPort },
        clusters: {
          token_authority: [address(a.url), address(b.url)],
          token_authority_grpc: [grpc(a.grpcAddress), grpc(b.grpcAddress)],
          // Not on the token path (ext_authz is off for oauth.oto.tools): placed, not run.
          ext_authz: { address: '127.0.0.1', port: unused },
          echo: { address: '127.0.0.1', port: unused },
        },
      });
      envoy = await runEnvoy(config, { listener, admin: adminPort });
      report('2 replicas, PostgreSQL, behind Envoy', await measure({ url: envoy.url, host: 'oauth.oto.tools' }, a));
    } finally {
      await envoy?.stop();
      await b?.stop();
      await a.stop();
    }
  } finally {
    await dropSchema(schema);
  }

  const [sqliteTokens, , pgTokens, pgIntrospections] = rows.map(([, result]) => result.requestsPerSecond);
  console.log(
    `one replica on PostgreSQL vs SQLite: tokens ${((pgTokens / sqliteTokens) * 100).toFixed(0)}%, introspections ${((pgIntrospections / rows[1][1].requestsPerSecond) * 100).toFixed(0)}%`,
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
