import preact from '@preact/preset-vite';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

/** The admin console, served by the token authority at /console/ from dist/console (see services/token-authority/console.ts). */
export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: '/console/',
  plugins: [preact({ devToolsEnabled: false, prefreshEnabled: false })],
  build: {
    outDir: '../dist/console',
    emptyOutDir: true,
    // Hashed names under assets/ are what the server caches for a year.
    assetsDir: 'assets',
    // No data: URLs (the CSP allows only 'self') and no inline module preload polyfill.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
});
