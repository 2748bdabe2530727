import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface TestCertificates {
  /** The CA's certificate (PEM): what a client trusts. */
  ca: Buffer;
  /** The server's certificate (signed by the CA) and its key, PEM files in `dir`. */
  certificateFile: string;
  privateKeyFile: string;
}

/**
 * A certificate authority made for one test (P-256, one day, by openssl) and a server certificate
 * it signs for `names` (subjectAltName DNS entries), written in `dir` (the caller removes it).
 */
export function makeTestCertificates(dir: string, names: string[]): TestCertificates {
  const file = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(
    'req',
    '-x509',
    ...ec,
    '-days',
    '1',
    '-subj',
    '/CN=test CA',
    '-keyout',
    file('ca.key'),
    '-out',
    file('ca.crt'),
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign',
  );
  openssl('req', ...ec, '-subj', `/CN=${names[0]}`, '-keyout', file('tls.key'), '-out', file('tls.csr'));
  writeFileSync(file('tls.ext'), `subjectAltName=${names.map((name) => `DNS:${name}`).join(',')}\nextendedKeyUsage=serverAuth\n`);
  openssl(
    'x509',
    '-req',
    '-in',
    file('tls.csr'),
    '-CA',
    file('ca.crt'),
    '-CAkey',
    file('ca.key'),
    '-set_serial',
    '0x1d5',
    '-days',
    '1',
    '-extfile',
    file('tls.ext'),
    '-out',
    file('tls.crt'),
  );
  return { ca: readFileSync(file('ca.crt')), certificateFile: file('tls.crt'), privateKeyFile: file('tls.key') };
}
