import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

// Everything is bundled into dist/ with no external URL (no CDN, no web fonts): the gateway
// embeds dist/ in the binary and serves it at /.
export default defineConfig({
  plugins: [preact()],
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsInlineLimit: 0,
    sourcemap: false,
  },
  server: {
    proxy: { '/v1': 'http://127.0.0.1:8080', '/healthz': 'http://127.0.0.1:8080' },
  },
});
