#!/usr/bin/env node
// `npm run bench`: runs every benchmark in its own child process, then prints one table.
//
//   node bench/run.mjs            all benchmarks (a few minutes)
//   node bench/run.mjs --quick    fewer repetitions (a smoke run; figures are rougher)
//   node bench/run.mjs --json     the rows as JSON on stdout (the table goes to stderr)
//   node bench/run.mjs hot-path   only the named benchmark(s)
//
// Every figure is the median over repeated runs; where a yardstick exists it is measured in the
// same run and the ratio is addon / yardstick. bench/cross-process.mjs, when present, runs too
// (as a child process; its own output is shown as it is).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const args = process.argv.slice(2)
const quick = args.includes('--quick')
const asJson = args.includes('--json')
const only = args.filter((a) => !a.startsWith('--'))
const BENCHES = ['hot-path', 'single-flight', 'fallbacks', 'scaling', 'cold-start', 'memory', 'multi-host']
for (const name of only) {
  if (![...BENCHES, 'cross-process'].includes(name)) {
    console.error(`bench: unknown benchmark ${name} (known: ${[...BENCHES, 'cross-process'].join(', ')})`)
    process.exit(2)
  }
}
const selected = (name) => only.length === 0 || only.includes(name)
const show = asJson ? (s) => process.stderr.write(s + '\n') : (s) => process.stdout.write(s + '\n')

function run(file, { capture }) {
  return new Promise((resolve) => {
    const started = performance.now()
    const child = spawn(process.execPath, [file, ...(quick ? ['--quick'] : [])], {
      stdio: ['ignore', capture ? 'pipe' : 'inherit', 'inherit'],
      env: { ...process.env, ...(quick ? { BENCH_QUICK: '1' } : {}) },
    })
    let out = ''
    if (capture) child.stdout.on('data', (c) => (out += c))
    child.on('close', (code) => resolve({ code, out, seconds: (performance.now() - started) / 1000 }))
  })
}

const fmt = (value, unit) => {
  if (!Number.isFinite(value)) return String(value)
  const digits = Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2
  return `${value.toLocaleString('en', { maximumFractionDigits: digits, minimumFractionDigits: unit === 'requests' ? 0 : Math.min(digits, 1) })} ${unit}`
}

const rows = []
const failures = []
const started = performance.now()
show(
  `anthropic-quota-manager benchmarks: node ${process.version}, ${os.platform()} ${os.arch()}, ${os.cpus().length} CPU (${os.cpus()[0]?.model.trim() ?? '?'})${quick ? ', --quick' : ''}`,
)
for (const name of BENCHES.filter(selected)) {
  process.stderr.write(`\n== ${name}\n`)
  const result = await run(path.join(here, `${name}.mjs`), { capture: true })
  const last = result.out.trim().split('\n').at(-1) ?? ''
  try {
    if (result.code !== 0) throw new Error(`exit ${result.code}`)
    const parsed = JSON.parse(last)
    rows.push(...parsed.rows.map((r) => ({ bench: name, ...r })))
    process.stderr.write(`   (${result.seconds.toFixed(1)} s)\n`)
  } catch (error) {
    failures.push(`${name}: ${error.message}`)
  }
}

let crossProcess = 'absent'
const crossFile = path.join(here, 'cross-process.mjs')
if (selected('cross-process') && fs.existsSync(crossFile)) {
  process.stderr.write('\n== cross-process (bench/cross-process.mjs, its own output)\n')
  const result = await run(crossFile, { capture: asJson })
  if (asJson) process.stderr.write(result.out)
  crossProcess = result.code === 0 ? 'ok' : `failed (exit ${result.code})`
  if (result.code !== 0) failures.push(`cross-process: exit ${result.code}`)
}

// ----- the table -------------------------------------------------------------------------------
const header = ['benchmark', 'addon (median)', 'yardstick (median)', 'ratio']
const body = []
let group
for (const r of rows) {
  if (r.group !== group) {
    group = r.group
    body.push([`${group}`, '', '', ''])
  }
  body.push([
    `  ${r.name}`,
    fmt(r.value, r.unit),
    r.baseline ? `${fmt(r.baseline.value, r.unit)} ${r.baseline.name}` : (r.note ?? ''),
    r.ratio !== undefined && Number.isFinite(r.ratio) ? `${r.ratio >= 10 ? r.ratio.toFixed(0) : r.ratio.toFixed(2)}×` : '',
  ])
  if (r.baseline && r.note) body.push(['', '', r.note, ''])
}
const widths = header.map((_, i) => Math.max(...[header, ...body].map((r) => r[i].length)))
const line = (r) =>
  r
    .map((c, i) => (i === 1 || i === 3 ? c.padStart(widths[i]) : c.padEnd(widths[i])))
    .join('  ')
    .trimEnd()
show('')
show(line(header))
show(widths.map((w) => '─'.repeat(w)).join('  '))
for (const r of body) show(line(r))
show('')
show(
  `ratio = addon / yardstick (lower is better for time and memory). Runs per figure: ${[...new Set(rows.map((r) => r.runs))].join('/')}.`,
)
if (!selected('cross-process')) show('cross-process benchmark: not selected')
else if (fs.existsSync(crossFile)) show(`cross-process benchmark (its own output above): ${crossProcess}`)
else show('cross-process benchmark: bench/cross-process.mjs not present, skipped')
show(`total ${((performance.now() - started) / 1000).toFixed(0)} s`)
if (asJson) process.stdout.write(JSON.stringify({ node: process.version, quick, rows, crossProcess, failures }, null, 2) + '\n')
if (failures.length) {
  console.error(`\nfailed: ${failures.join('; ')}`)
  process.exitCode = 1
}
