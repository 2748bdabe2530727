import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startTestAuthority, type TestAuthority } from './support/authority';

/** Runs from dist/test/, the script stays in the source tree. */
const PROBE = resolve(__dirname, '../../test/support/grpc_probe.py');
const CLIENT_ID = 'py-client';
const CLIENT_SECRET = 'py-secret-123';
const TOKEN_AUTHORITY = 'token_authority.v1.TokenAuthority';
const HEALTH = 'grpc.health.v1.Health';
const REFLECTION_VERSIONS = ['v1', 'v1alpha'] as const;

interface Outcome {
  ok: boolean;
  code?: string;
  details?: string;
  error?: string;
}
interface HealthOutcome extends Outcome {
  status?: string;
}
interface DescriptorOutcome extends Outcome {
  symbol: string;
  files_sent_for_symbol?: string[];
  load_order?: string[];
  files?: Record<string, { package: string; syntax: string; dependency: string[] }>;
  anomalies?: string[];
  methods?: { name: string; input: string; output: string }[];
}
interface ProbeReport {
  fatal?: string;
  runtime: { python: string; grpc: string; protobuf: string; protobuf_implementation: string };
  health: Record<string, HealthOutcome>;
  health_unknown: HealthOutcome & { service: string };
  reflection: Record<string, Outcome & { services?: string[]; unknown_symbol?: { error_code?: string | number; error?: string } }>;
  descriptors: Record<string, Record<string, DescriptorOutcome>>;
  issue_token: Outcome & { token_type?: string; expires_in?: number; scope?: string; access_token_segments?: number };
  get_jwks: Outcome & { count?: number; keys?: { kty: string; alg: string; kid: string; use: string }[] };
}

function run(
  file: string,
  args: string[],
  timeout = 20_000,
): Promise<{ code: number | null; stdout: string; stderr: string; spawnError?: string }> {
  // Asynchronous on purpose: the server under test runs in this process's event loop.
  return new Promise((done) => {
    execFile(file, args, { timeout, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const spawnError = error && typeof (error as NodeJS.ErrnoException).code === 'string' ? String(error.message) : undefined;
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : null) : 0;
      done({ code, stdout, stderr, spawnError });
    });
  });
}

/**
 * A Python 3 with Debian's grpcio and protobuf. `python3` first; then Debian's own interpreter,
 * for machines where another python3 (pyenv, venv) shadows it on PATH. PYTHON overrides both.
 */
async function findPython(): Promise<{ python?: string; tried: string[] }> {
  const candidates = process.env.PYTHON ? [process.env.PYTHON] : ['python3', '/usr/bin/python3'];
  const tried: string[] = [];
  for (const candidate of candidates) {
    const result = await run(
      candidate,
      ['-c', 'import grpc, google.protobuf; print(grpc.__version__, google.protobuf.__version__)'],
      10_000,
    );
    if (result.code === 0) return { python: candidate, tried };
    tried.push(`${candidate}: ${result.spawnError ?? result.stderr.trim().split('\n').pop() ?? `exit ${result.code}`}`);
  }
  return { tried };
}

describe('gRPC health and reflection, seen from Python grpcio (not grpc-js)', () => {
  let authority: TestAuthority;
  let python: string | undefined;
  let pythonProblem = '';
  let report: ProbeReport;

  async function probe(): Promise<ProbeReport> {
    assert.ok(
      python,
      `no usable Python for the gRPC probe (needs python3 with grpc and google.protobuf: apt-get install python3-grpcio python3-protobuf). Tried: ${pythonProblem}`,
    );
    const result = await run(python, [PROBE, authority.grpcAddress, CLIENT_ID, CLIENT_SECRET]);
    let parsed: ProbeReport | undefined;
    try {
      parsed = JSON.parse(result.stdout) as ProbeReport;
    } catch {
      parsed = undefined;
    }
    assert.ok(parsed, `grpc_probe.py printed no JSON (exit ${result.code}): ${result.stdout}\n${result.stderr}`);
    assert.equal(parsed.fatal, undefined, `grpc_probe.py failed: ${parsed.fatal}\n${result.stderr}`);
    assert.equal(result.code, 0, `grpc_probe.py exited ${result.code}: ${result.stderr}`);
    return parsed;
  }

  before(async () => {
    const found = await findPython();
    python = found.python;
    pythonProblem = found.tried.join('; ');
    authority = await startTestAuthority();
    const created = await authority.admin('POST', '/api/apikeys', { clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, scope: 'read' });
    assert.equal(created.status, 201);
    if (python) report = await probe();
  });
  after(() => authority?.stop());

  it('has a Python 3 with grpcio and protobuf to probe with', () => {
    assert.ok(
      python,
      `no usable Python for the gRPC probe (needs python3 with grpc and google.protobuf: apt-get install python3-grpcio python3-protobuf). Tried: ${pythonProblem}`,
    );
    assert.ok(report, 'the probe ran');
    const { runtime } = report;
    assert.match(runtime.grpc, /^\d+\.\d+/);
    assert.match(runtime.protobuf, /^\d+\.\d+/);
  });

  it('answers grpc.health.v1.Health/Check with SERVING for the server and for the TokenAuthority service', () => {
    assert.ok(report, 'the probe ran');
    assert.deepEqual(report.health[''], { ok: true, code: 'OK', status: 'SERVING' });
    assert.deepEqual(report.health[TOKEN_AUTHORITY], { ok: true, code: 'OK', status: 'SERVING' });
  });

  it('answers Check for an unknown service with the NOT_FOUND status, as the health protocol says', () => {
    assert.ok(report, 'the probe ran');
    assert.equal(report.health_unknown.ok, false, `an unknown service must not answer a status: ${JSON.stringify(report.health_unknown)}`);
    assert.equal(report.health_unknown.code, 'NOT_FOUND');
  });

  for (const version of REFLECTION_VERSIONS) {
    it(`lists the services over grpc.reflection.${version}.ServerReflection, itself included`, () => {
      assert.ok(report, 'the probe ran');
      const listed = report.reflection[`grpc.reflection.${version}.ServerReflection`];
      assert.ok(listed.ok, `ListServices failed: ${JSON.stringify(listed)}`);
      const services = listed.services ?? [];
      for (const service of [TOKEN_AUTHORITY, HEALTH, `grpc.reflection.${version}.ServerReflection`]) {
        assert.ok(services.includes(service), `${service} not listed by reflection ${version}; listed: ${services.join(', ')}`);
      }
      assert.equal(listed.unknown_symbol?.error_code, 'NOT_FOUND');
      assert.match(String((listed.unknown_symbol as { error_message?: string } | undefined)?.error_message), /no\.such\.v1\.Symbol/);
    });
  }

  for (const version of REFLECTION_VERSIONS) {
    for (const symbol of [TOKEN_AUTHORITY, HEALTH]) {
      it(`serves descriptors for ${symbol} over ${version} that load, imports and all, into a fresh Python DescriptorPool`, () => {
        assert.ok(report, 'the probe ran');
        const loaded = report.descriptors[version][symbol];
        const files = loaded.load_order ?? [];
        const anomalies = (loaded.anomalies ?? []).map((note) => `\n  - ${note}`).join('');
        assert.ok(
          loaded.ok,
          `descriptor chain of ${symbol} (${files.join(' <- ') || 'no file'}) does not load: ${loaded.error ?? loaded.details}${anomalies ? `\nserved descriptors differ from protoc's:${anomalies}` : ''}`,
        );
        assert.ok(files.length >= 1);
        // Every import of every file was fetched by name and loaded before the files that need it.
        for (const [name, file] of Object.entries(loaded.files ?? {})) {
          for (const dependency of file.dependency) {
            assert.ok(
              files.indexOf(dependency) >= 0 && files.indexOf(dependency) < files.indexOf(name),
              `${dependency} loaded before ${name}`,
            );
          }
        }
        const methods = (loaded.methods ?? []).map((method) => method.name);
        const expected = symbol === HEALTH ? ['Check', 'Watch'] : ['IssueToken', 'IntrospectToken', 'GetJwks', 'RevokeToken'];
        for (const method of expected)
          assert.ok(methods.includes(method), `${symbol}/${method} in the loaded descriptors (files: ${files.join(', ')})`);
      });
    }
  }

  it('issues a token through IssueToken called with message classes built from reflection', () => {
    assert.ok(report, 'the probe ran');
    const issued = report.issue_token;
    assert.ok(issued.ok, `IssueToken failed: ${JSON.stringify(issued)}`);
    assert.equal(issued.token_type, 'Bearer');
    assert.equal(issued.expires_in, 3600);
    assert.equal(issued.scope, 'read');
    assert.equal(issued.access_token_segments, 3, 'a compact JWS');
  });

  it('returns the JWKS through GetJwks called the same way', () => {
    assert.ok(report, 'the probe ran');
    const jwks = report.get_jwks;
    assert.ok(jwks.ok, `GetJwks failed: ${JSON.stringify(jwks)}`);
    assert.ok((jwks.count ?? 0) >= 1, 'at least one key');
    assert.ok(
      jwks.keys?.some((key) => key.kty === 'RSA' && key.alg === 'RS256'),
      `an RSA RS256 key: ${JSON.stringify(jwks.keys)}`,
    );
  });

  it('reports NOT_SERVING when the application says so, and SERVING again after', async () => {
    assert.ok(report, 'the probe ran');
    authority.health.setStatus('', 'NOT_SERVING');
    try {
      const down = await probe();
      assert.equal(down.health[''].status, 'NOT_SERVING');
      assert.equal(down.health[TOKEN_AUTHORITY].status, 'SERVING', 'only the server-wide status changed');
    } finally {
      authority.health.setStatus('', 'SERVING');
    }
    const up = await probe();
    assert.equal(up.health[''].status, 'SERVING');
  });
});
