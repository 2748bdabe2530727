import { generateKeyPairSync, sign } from 'node:crypto';

/**
 * The raw node:crypto signing ceiling on all cores: async `crypto.sign` (libuv thread pool)
 * with 16 signatures in flight, for a fixed time. Prints JSON {algorithm: signatures/s}.
 */
async function ceiling(algorithm: 'RS256' | 'ES256', seconds: number): Promise<number> {
  const { privateKey } =
    algorithm === 'RS256' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const key = algorithm === 'RS256' ? privateKey : { key: privateKey, dsaEncoding: 'ieee-p1363' as const };
  const payload = Buffer.alloc(300, 'a');
  const deadline = Date.now() + seconds * 1000;
  let count = 0;
  const worker = async () => {
    while (Date.now() < deadline) {
      await new Promise<void>((done, fail) => sign('sha256', payload, key, (error) => (error ? fail(error) : done())));
      count += 1;
    }
  };
  const started = Date.now();
  await Promise.all(Array.from({ length: 16 }, worker));
  return count / ((Date.now() - started) / 1000);
}

async function main() {
  const seconds = Number(process.env.BENCH_SECONDS ?? 10) / 2;
  const result = { RS256: await ceiling('RS256', seconds), ES256: await ceiling('ES256', seconds) };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

void main();
