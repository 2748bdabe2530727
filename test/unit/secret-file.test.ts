import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError } from '../../libs/config/load-config';
import { readOrCreateSecretFile, readSecretFile } from '../../libs/core/secret-file';

describe('secret files (generated tokens shared through a folder)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'secret-file-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('creates the file (and its folder) with mode 0600 when there is none, then reads it back', () => {
    const file = join(dir, 'new', 'token');
    assert.equal(readSecretFile(file), undefined);
    assert.deepEqual(
      readOrCreateSecretFile(file, () => 'first-value'),
      { value: 'first-value', created: true },
    );
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(
      readOrCreateSecretFile(file, () => assert.fail('not made again')),
      { value: 'first-value', created: false },
    );
    assert.deepEqual(readdirSync(join(dir, 'new')), ['token'], 'no draft left');
  });

  it('reads an existing file without its surrounding whitespace (an operator may write it with a newline)', () => {
    const file = join(dir, 'given');
    writeFileSync(file, '  given-value\n');
    assert.deepEqual(
      readOrCreateSecretFile(file, () => 'unused'),
      { value: 'given-value', created: false },
    );
  });

  it('when another process creates the file between the read and the write, theirs wins and ours is dropped', () => {
    const file = join(dir, 'raced', 'token');
    const result = readOrCreateSecretFile(file, () => {
      writeFileSync(file, 'the-other-process'); // lands after our read, before our link
      return 'ours';
    });
    assert.deepEqual(result, { value: 'the-other-process', created: false });
    assert.equal(readFileSync(file, 'utf8'), 'the-other-process');
    assert.deepEqual(readdirSync(join(dir, 'raced')), ['token'], 'our draft removed');
  });

  it('a dangling symbolic link at the path is refused with an error naming the path and its target, and nothing is left behind', () => {
    const folder = join(dir, 'dangling');
    const file = join(folder, 'token');
    const target = join(folder, 'gone', 'token');
    readOrCreateSecretFile(join(folder, 'seed'), () => 'seed'); // the folder exists
    symlinkSync(target, file);
    assert.throws(
      () => readOrCreateSecretFile(file, () => 'fresh'),
      (error: Error) =>
        error instanceof ConfigError &&
        error.message.includes(file) &&
        error.message.includes(target) &&
        /symbolic link/.test(error.message),
    );
    assert.deepEqual(readdirSync(folder).sort(), ['seed', 'token'], 'no draft left');
  });
});
