import { fileURLToPath } from 'node:url'

import { defineConfig } from 'vitest/config'

// The OpenCode end-to-end test (issue 17): `npm run test:opencode`, run by `.ci/run`.
export default defineConfig({
  root: fileURLToPath(new URL('../..', import.meta.url)),
  test: {
    include: ['__test__/opencode/**/*.e2e.ts'],
    pool: 'forks',
    // The scenarios run one after another: each starts several OpenCode processes itself.
    fileParallelism: false,
    testTimeout: 240_000,
    hookTimeout: 300_000,
  },
})
