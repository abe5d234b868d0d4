// The plugin core's barrel (packages/core/src/index.ts) after adopting the package: its own
// types with `export *`, and the manager by name. `export * from 'anthropic-quota-manager'`
// here would clash with accounts.ts (TS2308: AccountStorage, QuotaMoney); the named line
// replaces the barrel's `export * from './quota-manager.ts'`.

export * from './accounts.js'
export { QuotaManager, tokenFingerprint, type QuotaEntry, type QuotaManagerOptions, type QuotaRefreshResult } from '../../../index.js'
