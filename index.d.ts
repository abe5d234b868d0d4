// anthropic-quota-manager: the package's types. Written by hand: every type, class and function
// is the generated binding's (binding.d.ts, from the Rust doc comments and src/types.d.ts, which
// declares the QuotaManager methods index.js defines); index.js also answers some synchronous
// reads of QuotaManager without calling into native code, with the same signatures.
export * from './binding.js'
