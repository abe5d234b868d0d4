import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.spec.ts'],
    // Native addons in worker threads are unsafe on glibc: one process per test file.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
})
