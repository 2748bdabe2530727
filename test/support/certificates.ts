import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

/**
 * A throw-away PKI made by openssl for mTLS tests (RFC 8705): a CA, certificates it issues,
 * self-signed ones. P-256 keys (fast to make); everything in one temp dir, removed by cleanup().
 */
export interface TestCertificate {
  certificateFile: string;
  privateKeyFile: string;
  /** PEM text. */
  certificate: string;
  privateKey: string;
}

export interface TestPki {
  dir: string;
  ca: TestCertificate;
  /** A certificate issued by the CA, for TLS clients (extendedKeyUsage clientAuth) or a server. */
  issue(name: string, options: { subject: string; subjectAltName?: string; server?: boolean }): TestCertificate;
  /** A self-signed certificate (its own issuer), for self_signed_tls_client_auth. */
  selfSigned(name: string, subject: string): TestCertificate;
  cleanup(): void;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export function createTestPki(): TestPki {
  const dir = mkdtempSync(path.join(tmpdir(), 'mtls-pki-'));
  const files = (name: string) => ({ certificateFile: path.join(dir, `${name}.crt`), privateKeyFile: path.join(dir, `${name}.key`) });
  const read = (name: string): TestCertificate => {
    const paths = files(name);
    return { ...paths, certificate: readFileSync(paths.certificateFile, 'utf8'), privateKey: readFileSync(paths.privateKeyFile, 'utf8') };
  };
  const ca = files('ca');
  openssl([
    'req',
    '-x509',
    ...EC,
    '-days',
    '2',
    '-subj',
    '/CN=mTLS test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
    '-keyout',
    ca.privateKeyFile,
    '-out',
    ca.certificateFile,
  ]);
  return {
    dir,
    ca: read('ca'),
    issue(name, { subject, subjectAltName, server }) {
      const paths = files(name);
      const csr = path.join(dir, `${name}.csr`);
      const extensions = path.join(dir, `${name}.ext`);
      writeFileSync(
        extensions,
        [`extendedKeyUsage=${server ? 'serverAuth' : 'clientAuth'}`, ...(subjectAltName ? [`subjectAltName=${subjectAltName}`] : [])].join(
          '\n',
        ),
      );
      openssl(['req', ...EC, '-subj', subject, '-keyout', paths.privateKeyFile, '-out', csr]);
      openssl([
        'x509',
        '-req',
        '-in',
        csr,
        '-CA',
        ca.certificateFile,
        '-CAkey',
        ca.privateKeyFile,
        '-CAcreateserial',
        '-days',
        '1',
        '-extfile',
        extensions,
        '-out',
        paths.certificateFile,
      ]);
      return read(name);
    },
    selfSigned(name, subject) {
      const paths = files(name);
      openssl([
        'req',
        '-x509',
        ...EC,
        '-days',
        '1',
        '-subj',
        subject,
        '-addext',
        'extendedKeyUsage=clientAuth',
        '-keyout',
        paths.privateKeyFile,
        '-out',
        paths.certificateFile,
      ]);
      return read(name);
    },
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A certificate as Envoy forwards it: URL-encoded PEM (XFCC `Cert`, CheckRequest source.certificate). */
export const urlEncodedPem = (pem: string) => encodeURIComponent(pem);

/** An x-forwarded-client-cert header as Envoy writes it with set_current_client_cert_details { cert: true, subject: true }. */
export const xfccHeader = (pem: string, subject = 'CN=client') =>
  `By=spiffe://oauth.oto.tools;Hash=0000;Cert="${urlEncodedPem(pem)}";Subject="${subject}"`;
