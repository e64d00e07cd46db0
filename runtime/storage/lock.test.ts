import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LockedError } from '../errors.js';
import { LOCK_FILE, acquireLock, isStale } from './lock.js';

const me = { hostname: 'mgmt1', pid: process.pid };
const now = new Date('2026-11-26T08:00:00Z');

describe('acquireLock', () => {
  it('refuses a second run while the first holds the lock, naming the owner', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-lock-'));
    const first = await acquireLock(dir, { ...me, runId: 'run-a' }, { now, staleHours: 24 });
    const second = acquireLock(dir, { ...me, runId: 'run-b' }, { now, staleHours: 24 });
    await expect(second).rejects.toBeInstanceOf(LockedError);
    await expect(second).rejects.toThrow(/run run-a, pid \d+ on mgmt1/);
    await first.release();
    const third = await acquireLock(dir, { ...me, runId: 'run-c' }, { now, staleHours: 24 });
    expect(JSON.parse(await readFile(path.join(dir, LOCK_FILE), 'utf8'))).toMatchObject({ runId: 'run-c' });
    await third.release();
  });

  it('takes over a lock whose process is dead, and says so', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-lock-'));
    // pid 2^22+1 is above Linux's pid_max default: never alive.
    await writeFile(path.join(dir, LOCK_FILE), JSON.stringify({ hostname: 'mgmt1', pid: 4194305, runId: 'crashed', startedAt: now.toISOString() }));
    const lock = await acquireLock(dir, { ...me, runId: 'new' }, { now, staleHours: 24 });
    expect(lock.previous).toMatchObject({ runId: 'crashed' });
    await lock.release();
  });

  it('release leaves a lock that is not ours', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmb-lock-'));
    const lock = await acquireLock(dir, { ...me, runId: 'a' }, { now, staleHours: 24 });
    await writeFile(path.join(dir, LOCK_FILE), JSON.stringify({ hostname: 'other', pid: 1, runId: 'b', startedAt: now.toISOString() }));
    await lock.release();
    expect(JSON.parse(await readFile(path.join(dir, LOCK_FILE), 'utf8'))).toMatchObject({ runId: 'b' });
  });
});

describe('isStale', () => {
  const alive = () => true;
  const dead = () => false;
  it.each([
    ['same host, process alive', { hostname: 'mgmt1', pid: 5, startedAt: '2026-11-20T00:00:00Z' }, alive, false],
    ['same host, process dead', { hostname: 'mgmt1', pid: 5, startedAt: now.toISOString() }, dead, true],
    ['other host, recent', { hostname: 'mgmt2', pid: 5, startedAt: '2026-11-26T07:00:00Z' }, dead, false],
    ['other host, older than stale hours', { hostname: 'mgmt2', pid: 5, startedAt: '2026-11-25T07:00:00Z' }, alive, true],
    ['other host, unreadable time', { hostname: 'mgmt2', pid: 5, startedAt: 'garbage' }, alive, true],
  ])('%s', (_name, info, pidAlive, expected) => {
    expect(isStale({ runId: 'r', ...info }, now, me, 24, pidAlive)).toBe(expected);
  });
});
