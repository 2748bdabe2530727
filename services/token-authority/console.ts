import { existsSync } from 'node:fs';
import path from 'node:path';
import { isIPv4 } from 'node:net';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance } from 'fastify';

/** Where `npm run build` puts the console (vite build, see console/vite.config.ts): dist/console. */
export const CONSOLE_DIR = path.resolve(__dirname, '..', '..', 'console');
export const CONSOLE_PREFIX = '/console';

/**
 * The console may only run its own files: no inline script or style, no other origin, no
 * framing. Its API calls go to this same origin (admin API and token endpoint).
 */
export const CONSOLE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/**
 * Whether a browser treats this origin as potentially trustworthy (W3C Secure Contexts): HTTPS,
 * or a loopback host (localhost, *.localhost, 127.0.0.0/8, [::1]) over plain HTTP. `protocol`
 * is Fastify's (X-Forwarded-Proto counts only with trustProxy); `host` is the Host header.
 */
export function isTrustworthyOrigin(protocol: string, host: string | undefined): boolean {
  if (protocol === 'https') return true;
  const name = (host ?? '').trim().toLowerCase().replace(/:\d*$/, '').replace(/\.$/, '');
  if (name === '[::1]' || name === 'localhost' || name.endsWith('.localhost')) return true;
  return isIPv4(name) && name.startsWith('127.');
}

/**
 * Serves the admin console's static files at /console/. Vite names assets by content hash, so
 * they are cached for a year; index.html is revalidated on every load so a new build shows at once.
 * Returns false (and serves nothing) when the console was not built.
 */
export async function serveConsole(fastify: FastifyInstance, root = CONSOLE_DIR): Promise<boolean> {
  if (!existsSync(path.join(root, 'index.html'))) return false;
  fastify.addHook('onRequest', async (request, reply) => {
    if (request.url !== CONSOLE_PREFIX && !request.url.startsWith(`${CONSOLE_PREFIX}/`)) return;
    void reply.header('content-security-policy', CONSOLE_CSP);
    void reply.header('x-content-type-options', 'nosniff');
    void reply.header('referrer-policy', 'no-referrer');
    // Browsers honour COOP only on a trustworthy origin and log an error for it anywhere else
    // (the tutorial's http://oauth.oto.tools:8080): sent only where it takes effect.
    if (isTrustworthyOrigin(request.protocol, request.headers.host)) void reply.header('cross-origin-opener-policy', 'same-origin');
  });
  await fastify.register(fastifyStatic, {
    root,
    prefix: `${CONSOLE_PREFIX}/`,
    index: 'index.html',
    decorateReply: false,
    cacheControl: false,
    dotfiles: 'deny',
    setHeaders: (reply, file) => {
      const hashed = file.startsWith(path.join(root, 'assets') + path.sep);
      reply.header('cache-control', hashed ? 'public, max-age=31536000, immutable' : 'no-cache');
    },
  });
  // The address people type: /console, moved to /console/ where index.html is served.
  fastify.get(CONSOLE_PREFIX, (_request, reply) => reply.redirect(`${CONSOLE_PREFIX}/`, 301));
  return true;
}
