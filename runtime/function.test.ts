import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { PermanentError } from './errors.js';
import { localCtx, systemClock } from './function.js';
import { noHooks } from './hooks/runner.js';
import { silentLogger } from './log.js';
import type { XapiClient } from './xapi/client.js';

describe('localCtx', () => {
  it('runs as this process, first attempt, no hooks, never aborted, and without XAPI by default', async () => {
    const log = silentLogger();
    const ctx = localCtx({ log });
    expect(ctx.log).toBe(log);
    expect(ctx.origin).toEqual({ hostname: os.hostname(), pid: process.pid });
    expect(ctx.attempt).toBe(1);
    expect(ctx.hooks).toBe(noHooks);
    expect(ctx.clock).toBe(systemClock);
    expect(ctx.signal.aborted).toBe(false);
    expect(() => ctx.heartbeat()).not.toThrow();
    await expect(ctx.xapi()).rejects.toThrow(PermanentError);
    await expect(ctx.xapi()).rejects.toMatchObject({ code: 'NO_XAPI' });
  });

  it('takes a session, or how to get one, and the overrides given', async () => {
    // Only passed through, never called: any object stands for the session.
    const session = { url: 'https://pool' } as unknown as XapiClient;
    expect(await localCtx({ log: silentLogger(), xapi: session }).xapi()).toBe(session);
    const getter = async () => session;
    expect(localCtx({ log: silentLogger(), xapi: getter }).xapi).toBe(getter);
    const abort = new AbortController();
    const clock = { now: () => new Date('2026-11-26T08:30:00Z') };
    let beats = 0;
    const ctx = localCtx({ log: silentLogger(), signal: abort.signal, clock, heartbeat: () => beats++ });
    abort.abort();
    expect(ctx.signal.aborted).toBe(true);
    expect(ctx.clock).toBe(clock);
    ctx.heartbeat();
    expect(beats).toBe(1);
  });
});
