import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';

/**
 * Who writes a file: every `.partial` file and every folder lock is named after (or records)
 * its writer, so that the next run can tell a live writer's file from a dead one's at once,
 * without waiting for the file to age.
 *
 * A writer tag is `w<host>-<pid>-<start>-<boot>-<seq>`:
 * - `host`: 8 hex of sha256(hostname), the same on every run of that host;
 * - `pid` and `start`: the process and its start time in clock ticks since boot
 *   (`/proc/<pid>/stat` field 22), so a pid reused by another process never passes for it;
 * - `boot`: 8 hex of the kernel's boot id, so a pid from before a reboot is never live;
 * - `seq`: a counter of this process, so two writes of one name in one process never share
 *   a partial file.
 *
 * The rule (see {@link writerState}):
 * - a writer of this host is live while its pid runs with the same start time in this boot;
 * - a writer of another host (a NATS worker on a shared NFS backup_dir) cannot be asked: it
 *   keeps its file's mtime fresh (every {@link HEARTBEAT_MS}, data or not), and counts as dead
 *   once the file was not touched for {@link WRITER_STALE_MS}. Hosts' clocks must agree
 *   within a few minutes (NTP), as for `lock_stale_hours`.
 * Old `.partial` files without a tag (earlier versions) have no known writer: retention keeps
 * its age rules for them (an hour untouched, a day at most).
 *
 * @example formatWriterTag({ host: '1a2b3c4d', pid: 4242, start: '81234567', boot: '9f8e7d6c', seq: 3 })
 *   // 'w1a2b3c4d-4242-81234567-9f8e7d6c-3'
 */
export interface WriterTag {
  host: string;
  pid: number;
  /** Start time of the process in clock ticks since boot; `0` where /proc is not there. */
  start: string;
  boot: string;
  seq: number;
}

/** How often a live writer touches its file. */
export const HEARTBEAT_MS = 30_000;
/** A writer of another host whose file was not touched for this long is dead (20 heartbeats). */
export const WRITER_STALE_MS = 10 * 60_000;

const TAG_RE = /^w([0-9a-f]{8})-(\d{1,10})-(\d{1,20})-([0-9a-f]{8})-(\d{1,10})$/;
/** Longest tag, for names that must fit in 255 bytes. */
export const WRITER_TAG_MAX = 'w'.length + 8 + 1 + 10 + 1 + 20 + 1 + 8 + 1 + 10;

export function formatWriterTag(tag: WriterTag): string {
  return `w${tag.host}-${tag.pid}-${tag.start}-${tag.boot}-${tag.seq}`;
}

/** @example parseWriterTag('w1a2b3c4d-4242-81234567-9f8e7d6c-3') // { host: '1a2b3c4d', pid: 4242, … } */
export function parseWriterTag(s: string): WriterTag | null {
  const m = TAG_RE.exec(s);
  if (!m) return null;
  return { host: m[1]!, pid: Number(m[2]), start: m[3]!, boot: m[4]!, seq: Number(m[5]) };
}

/** 8 hex of sha256(hostname): how a tag names a host. */
export function hostHash(hostname: string): string {
  return createHash('sha256').update(hostname, 'utf8').digest('hex').slice(0, 8);
}

/** Start time of process `pid` (clock ticks since boot); undefined when it does not run. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] ?? '0';
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') {
      // No /proc at all (not Linux): fall back to asking the kernel whether the pid exists.
      if (!procMounted()) return pidAlive(pid) ? '0' : undefined;
      return undefined;
    }
    return '0';
  }
}

function procMounted(): boolean {
  try {
    readFileSync('/proc/self/stat');
    return true;
  } catch {
    return false;
  }
}

/** Whether a process of this host runs (EPERM: it exists but belongs to someone else). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as { code?: string }).code === 'EPERM';
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').replace(/[^0-9a-f]/g, '').slice(0, 8).padEnd(8, '0');
  } catch {
    return '00000000';
  }
}

/** This process as a writer, without `seq`. */
export interface Me {
  host: string;
  pid: number;
  start: string;
  boot: string;
}

let me: Me | undefined;
let seq = 0;

/** This process: computed once (its host, pid, start time and boot never change). */
export function thisProcess(): Me {
  me ??= { host: hostHash(os.hostname()), pid: process.pid, start: processStart(process.pid) ?? '0', boot: bootId() };
  return me;
}

/** A new tag of this process, for one file. */
export function newWriterTag(): string {
  return formatWriterTag({ ...thisProcess(), seq: ++seq });
}

export type WriterState = 'live' | 'dead';

/**
 * Whether the writer of a tagged file is alive (the rule in this file's header). Pure: the
 * caller passes `start(pid)`, the start time of a process of this host (undefined: none).
 *
 * @example writerState(parseWriterTag(tag)!, mtimeMs, Date.now(), thisProcess(), processStart)
 */
export function writerState(tag: WriterTag, mtimeMs: number, now: number, self: Me, start: (pid: number) => string | undefined): WriterState {
  if (tag.host === self.host) {
    if (tag.boot !== self.boot) return 'dead';
    const running = start(tag.pid);
    if (running === undefined) return 'dead';
    return tag.start === '0' || running === '0' || running === tag.start ? 'live' : 'dead';
  }
  return now - mtimeMs > WRITER_STALE_MS ? 'dead' : 'live';
}

/**
 * Touches a file every {@link HEARTBEAT_MS} until stopped: what tells other hosts its writer
 * is alive while no data flows (an export that has not started sending).
 */
export function keepFresh(touch: (now: Date) => Promise<void>): { stop(): void } {
  const timer = setInterval(() => {
    const now = new Date();
    touch(now).catch(() => {});
  }, HEARTBEAT_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
