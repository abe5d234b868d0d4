import { describe, it, expect } from 'vitest'
import { QuotaManager, ManualClock, tokenFingerprint } from '../index.js'
import { startUsageSimulator } from '../simulator/index.js'

describe('probe', () => {
  it('works', async () => {
    const sim = await startUsageSimulator()
    const m = new QuotaManager({ statePath: null, usageUrl: sim.url, apiCallGapMs: 0, clock: new ManualClock(1_800_000_000_000) })
    const q = await m.refreshMain('alice', 'tok')
    console.log(JSON.stringify(q), tokenFingerprint('tok'), JSON.stringify(m.stats()))
    try { await m.refreshMain(42 as unknown as string) } catch (e) { console.log('err', e, (e as Error).constructor.name) }
    sim.replyOnce({ status: 429, body: 'slow down', headers: { 'retry-after': '0' } })
    const clock = new ManualClock(1)
    const m2 = new QuotaManager({ statePath: null, usageUrl: sim.url, apiCallGapMs: 0 })
    await m2.refreshMain('bob', 'tok').catch((e: unknown) => console.log('429', e, Object.entries(e as object)))
    console.log(m2.getLastApiError())
    await m.close(); await m2.close(); await sim.close()
    expect(clock.now()).toBe(1)
  })
})
