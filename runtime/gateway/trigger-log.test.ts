import { describe, expect, it } from 'vitest';
import { TestClock } from './test-helpers.js';
import { MemoryTriggerLog } from './trigger-log.js';

describe('MemoryTriggerLog', () => {
  it('the first claim wins; later ones get its run until the window ends', async () => {
    const clock = new TestClock();
    const log = new MemoryTriggerLog(clock);
    expect(await log.claim('k', 'r1', 60_000)).toBe('new');
    expect(await log.claim('k', 'r2', 60_000)).toEqual({ runId: 'r1' });
    expect(await log.claim('other', 'r3', 60_000)).toBe('new');
    clock.advance(59_999);
    expect(await log.claim('k', 'r4', 60_000)).toEqual({ runId: 'r1' });
    clock.advance(1);
    expect(await log.claim('k', 'r5', 60_000)).toBe('new');
    expect(await log.claim('k', 'r6', 60_000)).toEqual({ runId: 'r5' });
  });

  it('concurrent claims: exactly one is new', async () => {
    const log = new MemoryTriggerLog(new TestClock());
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => log.claim('k', `r${i}`, 1000)));
    expect(results.filter((r) => r === 'new')).toHaveLength(1);
    expect(new Set(results.filter((r) => r !== 'new').map((r) => (r as { runId: string }).runId))).toEqual(new Set(['r0']));
  });

  it('release frees the key, but only for the run that holds it', async () => {
    const log = new MemoryTriggerLog(new TestClock());
    await log.claim('k', 'r1', 1000);
    await log.release('k', 'someone-else');
    expect(await log.claim('k', 'r2', 1000)).toEqual({ runId: 'r1' });
    await log.release('k', 'r1');
    expect(await log.claim('k', 'r3', 1000)).toBe('new');
  });
});
