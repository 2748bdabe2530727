import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';

const ROOT = path.resolve(__dirname, '..', '..');
const BUF = path.join(ROOT, 'node_modules', '.bin', 'buf');
const RELEASED = path.join(ROOT, 'proto', 'released', 'v0.1.0.json');

function buf(...args: string[]) {
  const run = spawnSync(BUF, args, { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

describe('the token_authority.v1 gRPC contract (buf)', () => {
  const scratch = mkdtempSync(path.join(tmpdir(), 'proto-contract-'));
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it('passes buf lint', () => {
    const lint = buf('lint', 'proto');
    assert.equal(lint.status, 0, lint.output);
  });

  it('breaks nothing a client of the last release relies on (buf breaking against proto/released)', () => {
    const breaking = buf('breaking', 'proto', '--against', RELEASED);
    assert.equal(breaking.status, 0, breaking.output);
  });

  it('would catch a breaking change: a renumbered field and a removed RPC', () => {
    // The same check on a deliberately broken copy must fail, or the check above proves nothing.
    const copy = path.join(scratch, 'proto');
    cpSync(path.join(ROOT, 'proto'), copy, { recursive: true });
    const file = path.join(copy, 'token_authority', 'v1', 'token_authority.proto');
    const source = readFileSync(file, 'utf8');
    const broken = source
      .replace('string client_secret = 2;', 'string client_secret = 12;')
      .replace(/\n\s*rpc RevokeToken\(RevokeTokenRequest\) returns \(RevokeTokenResponse\);/, '');
    assert.notEqual(broken, source, 'the fixture edits no longer match the proto; update them');
    writeFileSync(file, broken);
    const breaking = buf('breaking', copy, '--against', RELEASED);
    assert.notEqual(breaking.status, 0, breaking.output);
    assert.match(breaking.output, /client_secret/);
    assert.match(breaking.output, /RevokeToken/);
  });
});
