import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../../config/load-config';
import type { KeyVersion } from '../model';

/**
 * Envelope encryption of private keys at rest: each key version's PEM is encrypted (AES-256-GCM)
 * with its own random data key, and that data key is wrapped (AES-256-GCM) by the key-encryption
 * key (KEK) from the settings. Rotating the KEK rewraps data keys only. The KEK never reaches the
 * store, a log or an error message; only its id (a hash) does, so a wrong key is named clearly.
 */
export interface SealedPrivateKey {
  /** Id of the KEK that wrapped the data key (kekId). */
  kek: string;
  /** The data key, wrapped: base64 of iv (12) | tag (16) | ciphertext. */
  dataKey: string;
  /** The PEM, encrypted with the data key: base64 of iv | tag | ciphertext. */
  privateKey: string;
}

/** A settings problem (wrong or missing key): the start fails with this message alone. */
export class KeyEncryptionError extends ConfigError {}

const IV_BYTES = 12;
const TAG_BYTES = 16;

/** A short public name of a KEK: what sealed entries record, and what errors may show. */
export function kekId(kek: Buffer): string {
  return createHash('sha256').update('token-authority kek id\0').update(kek).digest('hex').slice(0, 16);
}

function encrypt(key: Buffer, plaintext: Buffer, aad: string): string {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), ciphertext]).toString('base64');
}

function decrypt(key: Buffer, sealed: string, aad: string): Buffer {
  const bytes = Buffer.from(sealed, 'base64');
  const decipher = createDecipheriv('aes-256-gcm', key, bytes.subarray(0, IV_BYTES));
  decipher.setAAD(Buffer.from(aad));
  decipher.setAuthTag(bytes.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
  return Buffer.concat([decipher.update(bytes.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]);
}

/** Parses a KEK: base64 (or base64url) of exactly 32 bytes. */
export function parseKek(encoded: string, source: string): Buffer {
  const text = encoded.trim();
  const key = /^[A-Za-z0-9+/_-]+={0,2}$/.test(text) ? Buffer.from(text, 'base64') : Buffer.alloc(0);
  if (key.length !== 32) throw new KeyEncryptionError(`${source} must be 32 random bytes in base64 (e.g. \`openssl rand -base64 32\`)`);
  return key;
}

/** The KEK settings: the current key (seals), and optionally the previous one (only opens) during a rotation. */
export interface KeyEncryptionSettings {
  key?: string;
  keyFile?: string;
  previousKey?: string;
  previousKeyFile?: string;
}

function readKek(value: string | undefined, file: string | undefined, name: string): Buffer | undefined {
  if (value !== undefined && file !== undefined) throw new KeyEncryptionError(`set ${name} or ${name}_FILE, not both`);
  if (value !== undefined) return parseKek(value, name);
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new KeyEncryptionError(
      `${name}_FILE ${file} cannot be read: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
  return parseKek(text, `${name}_FILE ${file}`);
}

/** Seals and opens private keys; without a KEK, keys stay (and are read) in plaintext. */
export class KeyProtector {
  private readonly openers = new Map<string, Buffer>();
  private readonly current: { id: string; key: Buffer } | undefined;

  constructor(current?: Buffer, previous?: Buffer) {
    if (current) {
      this.current = { id: kekId(current), key: current };
      this.openers.set(this.current.id, current);
    }
    if (previous) this.openers.set(kekId(previous), previous);
  }

  static fromSettings(settings: KeyEncryptionSettings = {}): KeyProtector {
    const current = readKek(settings.key, settings.keyFile, 'KEY_ENCRYPTION_KEY');
    const previous = readKek(settings.previousKey, settings.previousKeyFile, 'KEY_ENCRYPTION_KEY_PREVIOUS');
    if (previous && !current) throw new KeyEncryptionError('KEY_ENCRYPTION_KEY_PREVIOUS needs KEY_ENCRYPTION_KEY (the new key)');
    return new KeyProtector(current, previous);
  }

  get enabled(): boolean {
    return this.current !== undefined;
  }

  get currentKekId(): string | undefined {
    return this.current?.id;
  }

  /** A new version's private key as stored: sealed under the current KEK, or plaintext without one. */
  protect(privateKeyPem: string): Pick<KeyVersion, 'privateKeyPem' | 'sealedPrivateKey'> {
    if (!this.current) return { privateKeyPem };
    const dataKey = randomBytes(32);
    const sealed: SealedPrivateKey = {
      kek: this.current.id,
      dataKey: encrypt(this.current.key, dataKey, `data key\0${this.current.id}`),
      privateKey: encrypt(dataKey, Buffer.from(privateKeyPem, 'utf8'), 'private key'),
    };
    return { sealedPrivateKey: sealed };
  }

  /** The PEM of a stored version; a clear error when it is sealed under a key we do not hold, or the key is wrong. */
  privateKeyPem(version: KeyVersion, keyPairId: string): string {
    if (version.privateKeyPem !== undefined) return version.privateKeyPem;
    const sealed = version.sealedPrivateKey;
    if (!sealed) throw new KeyEncryptionError(`key pair '${keyPairId}' version '${version.kid}' has no private key`);
    const kek = this.openers.get(sealed.kek);
    if (!kek) {
      throw new KeyEncryptionError(
        this.current
          ? `key pair '${keyPairId}' is encrypted under key-encryption key ${sealed.kek}, but KEY_ENCRYPTION_KEY is ${this.current.id}: wrong key (during a rotation, set the old one as KEY_ENCRYPTION_KEY_PREVIOUS)`
          : `key pair '${keyPairId}' is encrypted at rest (key-encryption key ${sealed.kek}): set KEY_ENCRYPTION_KEY or KEY_ENCRYPTION_KEY_FILE`,
      );
    }
    try {
      const dataKey = decrypt(kek, sealed.dataKey, `data key\0${sealed.kek}`);
      return decrypt(dataKey, sealed.privateKey, 'private key').toString('utf8');
    } catch {
      throw new KeyEncryptionError(`key pair '${keyPairId}' version '${version.kid}' does not decrypt: its sealed private key was altered`);
    }
  }

  /**
   * A version as it should be stored now: plaintext sealed, or its data key rewrapped under the
   * current KEK (rotation). Undefined when it already is.
   */
  reseal(version: KeyVersion, keyPairId: string): KeyVersion | undefined {
    if (!this.current) throw new KeyEncryptionError('set KEY_ENCRYPTION_KEY (or KEY_ENCRYPTION_KEY_FILE) to encrypt private keys');
    const sealed = version.sealedPrivateKey;
    if (sealed?.kek === this.current.id) return undefined;
    if (sealed === undefined) {
      const { privateKeyPem, ...rest } = version;
      return { ...rest, ...this.protect(privateKeyPem ?? '') };
    }
    // Rewrap: the data key is opened by the previous KEK and wrapped by the current one; the encrypted PEM stays.
    const previous = this.openers.get(sealed.kek);
    if (!previous) this.privateKeyPem(version, keyPairId);
    let dataKey: Buffer;
    try {
      dataKey = decrypt(previous!, sealed.dataKey, `data key\0${sealed.kek}`);
    } catch {
      throw new KeyEncryptionError(`key pair '${keyPairId}' version '${version.kid}' does not decrypt: its sealed private key was altered`);
    }
    return {
      ...version,
      sealedPrivateKey: {
        kek: this.current.id,
        dataKey: encrypt(this.current.key, dataKey, `data key\0${this.current.id}`),
        privateKey: sealed.privateKey,
      },
    };
  }
}
