import { z } from 'zod';
import { ConfigError } from '../../runtime/errors.js';
import { DISK_NAME_RE } from '../../runtime/storage/naming.js';

/**
 * VmBackup's VM selection, as its README documents it, with its defects fixed. Pure.
 *
 * Entries are `NAME[:MAX[:DISK;DISK]]`:
 * - NAME is a simple name (Unicode letters and digits, space, `-`, `_`), matched by equality,
 *   or else a Python regex applied like `re.match`: anchored at the start only
 *   (`PRD-a*` also matches `PRD-Test`; add `$` to anchor the end).
 * - MAX is `-1` (the global max_backups, for vdi- AND vm-exports: VmBackup kept a single
 *   backup for `:-1` on vm-exports) or a positive integer.
 * - DISKS (only after MAX) is a `;`-separated list of device names; vdi-exports default to
 *   `xvda`; on vm_exports they are ignored with a warning.
 * - Fields are split at the `:` that are not part of the regex: `(?:…)`, `(?i:…)`, `\:` and
 *   `[:]` stay in NAME, so `(?:a|b).*:3` is NAME `(?:a|b).*`, MAX 3. Any other `:` separates
 *   fields; a literal colon in a VM name must be written `\:` or `[:]` (VmBackup split every
 *   `:`, so such entries never worked there either).
 * - Surrounding whitespace is trimmed (`DEV-a, DEV-b` works; VmBackup broke on the space).
 *
 * Four passes over one pool list (precedence 1 excludes, 2 vdi_exports, 3 delta_exports,
 * 4 vm_exports): each
 * list only takes VMs no earlier list took, so a VM is backed up one way only (VmBackup's
 * defect 6 let an entry with `:MAX` take a VM twice). Within a list the first entry matching a
 * VM wins (its MAX and disks apply). Results are in pool order.
 *
 * Errors (`Selection.errors`; the run does not start, the command exits 2, the gateway answers
 * 422 — unlike VmBackup, which skipped such entries with a warning):
 * - `invalid-entry`: bad syntax (`NAME:0`, `NAME:abc:xvdb`, `NAME:xvdb`, empty entry, …);
 * - `invalid-regex`: not a valid Python regex, or a Python feature JavaScript lacks — in every
 *   list, the config files' included;
 * - `no-match` in vdi_exports, delta_exports or vm_exports given by this request (`SelectionSources.requested`:
 *   `-e`, `-E`, a gateway body, a webhook, an alert): the entry matches no VM of the pool at all.
 *
 * Warnings (the entry is used unless said otherwise):
 * - `no-match` in a list of the config files, or in excludes (excluding a VM that is gone
 *   loses nothing, and must not stop the backups of the others): the entry matches no VM. An entry
 *   whose VMs were all taken by an earlier list or entry is NOT reported: that is the
 *   documented precedence (so `-x '.*' -p -H` stays quiet);
 * - `literal-name`: a regex entry that does not select the VM whose name it equals literally
 *   (`File Server (old)`); the message says how to escape it. With no match at all this hint
 *   is part of the `no-match` message;
 * - `duplicate-name`: several VMs carry the name of a selected VM. VmBackup skipped them; all
 *   are backed up (each into its own folder, see `vmFolderName`). Once per name;
 * - `disks-ignored` (vm_exports or delta_exports entry with disks), `fields-ignored` (excludes entry with MAX).
 *
 * MAX of a selected VM, from the most specific source (`maxFrom` says which, so that a one-off
 * run never prunes harder than the config says):
 * 1. the MAX of the entry that selected it;
 * 2. when that entry came with the request and has no MAX: the config's entry for the VM — the
 *    first of the config's vdi_exports, delta_exports, then vm_exports entries that selects it (the request's
 *    lists replaced the config's for selection, not for retention): its MAX if it has one;
 * 3. `maxBackups` (max_backups).
 *
 * Python regex → JavaScript (`u` flag), following CPython 3's `sre_parse` (str patterns), checked
 * against Python 3.11 by a differential test:
 * - `(?P<n>…)` → `(?<n>…)`, `(?P=n)` → a numbered back reference, `(?#…)` dropped;
 * - `\A`, `\Z`, `^`, `$`, `.` keep Python's meaning (`$` also matches before a final newline,
 *   `.` excludes only `\n`); leading `(?i)`, `(?s)`, `(?m)`, `(?a)`, `(?u)` are honoured;
 * - `\w`, `\d`, `\s`, `\b`, `\B` are Unicode as in Python 3 (`(?a)` makes them ASCII);
 *   VmBackup's Python 2 made them ASCII, but it crashed on non-ASCII names anyway;
 * - literal where Python says so: `{`/`}` that are no quantifier, a lone `]`, `]` first in a
 *   set, `[` inside a set, `-` first or last; `{,n}` is `{0,n}`; `\:` and any escaped
 *   punctuation; octal, `\a`, `\U…` escapes; `\W`/`\D`/`\S` inside a set;
 * - errors where Python has them: bad escapes (`\q`, `\p`), bad ranges (`[a-\w]`), nothing to
 *   repeat (`\b*`), references to unknown or still open groups, unbalanced parentheses.
 * Refused (invalid-regex) because JavaScript lacks them: `(?x)`, `(?L)`, `(?a)` with `(?i)`
 * (ASCII-only case folding), scoped flags `(?i:…)`,
 * flags not at the start, conditionals `(?(1)…)`, atomic groups `(?>…)`, possessive
 * quantifiers (`a*+`), `\N{…}`. One difference remains: a back reference to a group that took
 * no part in the match (`(a)?\1`) matches the empty string in JavaScript and fails in Python.
 */

/** A VM of the pool: not dom0, not a snapshot, not a template. */
export interface PoolVm {
  uuid: string;
  name: string;
}

export type SelectionListName = 'excludes' | 'vdi_exports' | 'delta_exports' | 'vm_exports';

/** An entry after parsing: `DEV-web3:7:xvda;xvdb` → name DEV-web3, max 7, disks [xvda, xvdb]. */
export interface ParsedEntry {
  /** The entry as given (trimmed). */
  entry: string;
  /** NAME: the VM name or the Python regex. */
  name: string;
  kind: 'name' | 'regex';
  /** MAX, or null for "the global max_backups" (`-1` or no MAX field). */
  maxBackups: number | null;
  /** DISKS as given, or null when the entry has none. */
  disks: string[] | null;
  /** True when the VM name is selected by this entry. */
  matches(vmName: string): boolean;
}

/**
 * Where the lists of a selection come from, as the run options carry them: which lists this
 * request gave (their export entries must match a VM), the config files' export lists (the MAX of a
 * VM a request's entry selects without one), and where max_backups is set. Every `where` is
 * a phrase for messages: `/etc/vmbackup.cfg line 4`, `command line (-e)`, `request`, `default`.
 *
 * @example
 *   { "requested": [{ "list": "vm_exports", "where": "command line (-e)" }],
 *     "config": [{ "list": "vm_exports", "entries": ["web01:7", "db.*"], "where": "/etc/vmbackup.cfg line 3" }],
 *     "maxBackups": "/etc/vmbackup.cfg line 2" }
 */
export const SelectionSources = z.object({
  requested: z.array(z.object({ list: z.enum(['excludes', 'vdi_exports', 'delta_exports', 'vm_exports']), where: z.string() })),
  config: z.array(z.object({ list: z.enum(['vdi_exports', 'delta_exports', 'vm_exports']), entries: z.array(z.string()), where: z.string() })),
  maxBackups: z.string(),
});
export type SelectionSources = z.infer<typeof SelectionSources>;

export interface SelectOptions {
  excludes: string[];
  vdiExports: string[];
  /** Incremental backups into the chunk store (`NAME[:MAX]`); absent = none. */
  deltaExports?: string[];
  vmExports: string[];
  /** The global max_backups (>= 1). */
  maxBackups: number;
  /**
   * Where the lists come from. Without it every list counts as the config's (an entry
   * matching nothing is a warning) and the config's lists are the ones given.
   */
  sources?: SelectionSources;
}

/**
 * Where a VM's MAX comes from: `request` (the entry of this request that selected it),
 * `config` (an entry of the config files, `where` is its file and line), `max_backups`.
 */
export interface MaxSource {
  from: 'request' | 'config' | 'max_backups';
  /** The entry whose MAX applies (request, config). */
  entry?: string;
  /** `/etc/vmbackup.cfg line 3`, `command line (-e)`, `default`…, where known. */
  where?: string;
}

export interface VdiExportSelection<V extends PoolVm = PoolVm> {
  vm: V;
  maxBackups: number;
  maxFrom: MaxSource;
  disks: string[];
  /** The entry that selected the VM. */
  entry: string;
}

/** A VM backed up as points of the chunk store (all its disks); MAX = points kept. */
export type DeltaExportSelection<V extends PoolVm = PoolVm> = VmExportSelection<V>;

export interface VmExportSelection<V extends PoolVm = PoolVm> {
  vm: V;
  maxBackups: number;
  maxFrom: MaxSource;
  entry: string;
}

export type SelectionWarningCode = 'invalid-entry' | 'invalid-regex' | 'no-match' | 'literal-name' | 'duplicate-name' | 'disks-ignored' | 'fields-ignored';

export interface SelectionWarning {
  entry: string;
  list: SelectionListName;
  code: SelectionWarningCode;
  message: string;
}

export interface Selection<V extends PoolVm = PoolVm> {
  excludes: V[];
  vdiExports: VdiExportSelection<V>[];
  deltaExports: DeltaExportSelection<V>[];
  vmExports: VmExportSelection<V>[];
  warnings: SelectionWarning[];
  /** Entries that make the selection unusable: the run must not start (see the module comment). */
  errors: SelectionWarning[];
}

const SIMPLE_NAME_RE = /^[\p{L}\p{M}\p{N} _-]+$/u;
const MAX_RE = /^-?\d+$/;
const DEFAULT_VDI_DISKS = ['xvda'] as const;

/** True for names matched by equality rather than as a regex. @example isSimpleName('DEV web_1') // true */
export function isSimpleName(name: string): boolean {
  return SIMPLE_NAME_RE.test(name);
}

/** The error of a bad entry: a ConfigError whose `data.reason` says which kind. */
function entryError(entry: string, reason: 'invalid-entry' | 'invalid-regex', detail: string): ConfigError {
  return new ConfigError(`invalid entry "${entry}": ${detail}`, { reason, detail });
}

// Indices of the `:` that separate fields, i.e. not inside a class, not escaped, not the
// colon of a `(?:` / `(?flags:` group opener, not inside a `(?#…)` comment.
function separatorColons(s: string): number[] {
  const out: number[] = [];
  let inClass = false;
  let classStart = -1;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']' && i > classStart) inClass = false;
      continue;
    }
    if (c === '[') {
      inClass = true;
      classStart = i + 1;
      if (s[classStart] === '^') classStart++;
      continue;
    }
    if (c === '(' && s[i + 1] === '?') {
      if (s[i + 2] === '#') {
        const end = s.indexOf(')', i + 3);
        i = end < 0 ? s.length : end;
        continue;
      }
      const m = /^[aiLmsux-]*:/.exec(s.slice(i + 2));
      if (m) i += 1 + m[0].length;
      continue;
    }
    if (c === ':') out.push(i);
  }
  return out;
}

/**
 * Parses one entry of excludes / vdi_exports / vm_exports; throws a ConfigError naming the
 * entry when it is malformed or its regex is invalid (`data.reason` is `invalid-entry` or
 * `invalid-regex`).
 *
 * @example parseEntry('DEV-web3:-1:xvda;xvdb') // { name: 'DEV-web3', kind: 'name', maxBackups: null, disks: ['xvda', 'xvdb'] }
 * @example parseEntry('(?:a|b).*:3')           // { name: '(?:a|b).*', kind: 'regex', maxBackups: 3, disks: null }
 * @example parseEntry('DEV-web3:0')            // throws: max_backups must be -1 or a positive integer
 */
export function parseEntry(raw: string): ParsedEntry {
  const entry = raw.trim();
  if (entry === '') throw entryError(raw, 'invalid-entry', 'empty entry (an empty list item never selects anything)');
  const seps = separatorColons(entry);
  const fields: string[] = [];
  let from = 0;
  for (const at of seps) {
    fields.push(entry.slice(from, at));
    from = at + 1;
  }
  fields.push(entry.slice(from));
  if (fields.length > 3) {
    throw entryError(entry, 'invalid-entry', 'too many ":"-separated fields (NAME[:MAX[:DISK;DISK]]; write a colon inside a regex as \\: or [:])');
  }
  const name = fields[0]!.trim();
  if (name === '') throw entryError(entry, 'invalid-entry', 'NAME is empty');

  let maxBackups: number | null = null;
  if (fields.length >= 2) {
    const maxField = fields[1]!.trim();
    if (!MAX_RE.test(maxField)) {
      const looksLikeDisks = fields.length === 2 && maxField.split(';').every((d) => DISK_NAME_RE.test(d.trim()));
      throw entryError(
        entry,
        'invalid-entry',
        looksLikeDisks && /[A-Za-z]/.test(maxField)
          ? `MAX "${maxField}" is not a number; to choose disks, put a MAX before them: ${name}:-1:${maxField}`
          : `max_backups "${maxField}" is not a number (-1 or a positive integer)`,
      );
    }
    const n = Number(maxField);
    if (!(n === -1 || (n >= 1 && Number.isSafeInteger(n)))) {
      throw entryError(entry, 'invalid-entry', `max_backups must be -1 or a positive integer, got "${maxField}"`);
    }
    maxBackups = n === -1 ? null : n;
  }

  let disks: string[] | null = null;
  if (fields.length === 3) {
    disks = fields[2]!.split(';').map((d) => d.trim());
    for (const d of disks) {
      if (!DISK_NAME_RE.test(d)) throw entryError(entry, 'invalid-entry', d === '' ? 'empty disk name in the disks field' : `invalid disk name "${d}" (letters and digits only, e.g. xvdb)`);
    }
    const dup = disks.find((d, i) => disks!.indexOf(d) !== i);
    if (dup !== undefined) throw entryError(entry, 'invalid-entry', `disk "${dup}" is listed twice`);
  }

  if (isSimpleName(name)) {
    return { entry, name, kind: 'name', maxBackups, disks, matches: (vmName) => vmName === name };
  }
  let re: RegExp;
  try {
    re = compilePythonMatch(name);
  } catch (cause) {
    // The entry is named once when it is the regex alone: `invalid entry "a(": invalid regex: …`.
    throw entryError(entry, 'invalid-regex', `invalid regex${name !== entry ? ` "${name}"` : ''}: ${(cause as Error).message}`);
  }
  return { entry, name, kind: 'regex', maxBackups, disks, matches: (vmName) => re.test(vmName) };
}

/**
 * Compiles a Python regex as `re.match` uses it: anchored at the start only. Throws a
 * SyntaxError naming the problem when the pattern is invalid or uses a Python feature that
 * has no JavaScript equivalent. See the module comment for the translation.
 *
 * @example compilePythonMatch('PRD-.*print[4-5]$').test('PRD-xprint4') // true
 * @example compilePythonMatch('(?P<n>a)(?P=n)').test('aab')            // true
 */
export function compilePythonMatch(pattern: string): RegExp {
  const { source, flags } = translatePythonRegex(pattern);
  return new RegExp(`^(?:${source})`, flags);
}

const hex = (cp: number): string => `\\u{${cp.toString(16)}}`;
const OCT = /[0-7]/;
const DIGIT = /[0-9]/;
const GROUP_NAME_RE = /^[\p{L}_][\p{L}\p{N}_]*$/u;

// Python 3's classes for str patterns, as JavaScript class contents; ASCII ones under (?a).
const UNICODE_CLASSES = {
  w: '\\p{L}\\p{N}_',
  d: '\\p{Nd}',
  s: '\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000',
} as const;
const ASCII_CLASSES = { w: 'A-Za-z0-9_', d: '0-9', s: ' \\t\\n\\r\\f\\v' } as const;

/** One escape, as sre_parse reads it: a literal code point, a class, or (outside sets) an assertion/reference. */
type Escape = { lit: number } | { cls: 'w' | 'W' | 'd' | 'D' | 's' | 'S' } | { at: 'A' | 'Z' | 'b' | 'B' } | { ref: number };

/**
 * Translates Python `re` syntax (str patterns) to a JavaScript pattern for the `u` flag (not
 * anchored). Mirrors CPython's sre_parse where the two differ; throws a SyntaxError where
 * Python would, or where JavaScript has no equivalent.
 *
 * @example translatePythonRegex('(?i)a\\Z') // { source: 'a(?![\\s\\S])', flags: 'iu' }
 */
export function translatePythonRegex(pattern: string): { source: string; flags: string } {
  const fail = (msg: string): never => {
    throw new SyntaxError(msg);
  };
  let i = 0;
  let ignoreCase = false;
  let multiline = false;
  let dotAll = false;
  let ascii = false;
  for (let m; (m = /^\(\?([aiLmsux]+)\)/.exec(pattern.slice(i))); i += m[0].length) {
    for (const f of m[1]!) {
      if (f === 'i') ignoreCase = true;
      else if (f === 'm') multiline = true;
      else if (f === 's') dotAll = true;
      else if (f === 'a') ascii = true;
      else if (f === 'x') fail('verbose flag (?x) is not supported');
      else if (f === 'L') fail('locale flag (?L) is not supported');
      // u is the default for str patterns.
    }
  }
  // Python folds case for ASCII letters only under (?a); JavaScript cannot restrict it.
  if (ascii && ignoreCase) fail('flags (?a) and (?i) together (ASCII-only case folding) are not supported');
  const classes = ascii ? ASCII_CLASSES : UNICODE_CLASSES;
  const W = `[${classes.w}]`;
  const classText = (c: 'w' | 'W' | 'd' | 'D' | 's' | 'S'): string => {
    const body = classes[c.toLowerCase() as 'w' | 'd' | 's'];
    return c === c.toLowerCase() ? `[${body}]` : `[^${body}]`;
  };

  const n = pattern.length;
  const codePointAt = (at: number): number => pattern.codePointAt(at)!;
  const width = (cp: number): number => (cp > 0xffff ? 2 : 1);

  // Reads the escape at pattern[i] === '\\' and advances i past it.
  const readEscape = (inClass: boolean): Escape => {
    if (i + 1 >= n) fail('pattern ends with a lone backslash');
    const cp = codePointAt(i + 1);
    const c = String.fromCodePoint(cp);
    i += 1 + width(cp);
    const take = (re: RegExp): string => {
      const m = re.exec(pattern.slice(i));
      if (!m) return '';
      i += m[0].length;
      return m[0];
    };
    if (DIGIT.test(c)) {
      if (c === '0') return { lit: parseInt(c + take(/^[0-7]{0,2}/), 8) };
      if (inClass) {
        if (!OCT.test(c)) fail(`bad escape \\${c}`);
        const v = parseInt(c + take(/^[0-7]{0,2}/), 8);
        if (v > 0o377) fail(`octal escape value \\${v.toString(8)} outside of range 0-0o377`);
        return { lit: v };
      }
      // Outside a set: three octal digits make an octal escape, else a group reference of 1-2 digits.
      if (OCT.test(c) && /^[0-7]{2}/.test(pattern.slice(i))) {
        const v = parseInt(c + take(/^[0-7]{2}/), 8);
        if (v > 0o377) fail(`octal escape value \\${v.toString(8)} outside of range 0-0o377`);
        return { lit: v };
      }
      return { ref: Number(c + take(/^[0-9]/)) };
    }
    switch (c) {
      case 'w': case 'W': case 'd': case 'D': case 's': case 'S':
        return { cls: c };
      case 'A': case 'Z': case 'B':
        if (inClass) fail(`bad escape \\${c}`);
        return { at: c };
      case 'b':
        return inClass ? { lit: 8 } : { at: 'b' };
      case 'a': return { lit: 7 };
      case 'f': return { lit: 12 };
      case 'n': return { lit: 10 };
      case 'r': return { lit: 13 };
      case 't': return { lit: 9 };
      case 'v': return { lit: 11 };
      case 'x': case 'u': case 'U': {
        const len = c === 'x' ? 2 : c === 'u' ? 4 : 8;
        const h = take(new RegExp(`^[0-9a-fA-F]{${len}}`));
        if (!h) fail(`incomplete escape \\${c}`);
        const v = parseInt(h, 16);
        if (v > 0x10ffff) fail(`bad escape \\${c}${h}`);
        return { lit: v };
      }
      case 'N':
        return fail('named character escapes \\N{...} are not supported');
      default:
        if (/[A-Za-z]/.test(c)) fail(`bad escape \\${c}`);
        // Python lets any other character be escaped to stand for itself.
        return { lit: cp };
    }
  };

  // A character set, from just after `[` to just after its `]`, as sre_parse reads it:
  // `]` first is literal, `[` inside is literal, `-` is literal first or last, a class
  // escape cannot bound a range. Sets holding \W, \D or \S become alternations.
  const readSet = (): string => {
    let negate = false;
    if (pattern[i] === '^') {
      negate = true;
      i++;
    }
    let pos = '';
    const negs: string[] = [];
    let items = 0;
    type Item = { lit: number } | { cls: 'w' | 'W' | 'd' | 'D' | 's' | 'S' };
    const readItem = (): Item => {
      if (pattern[i] === '\\') return readEscape(true) as Item;
      const cp = codePointAt(i);
      i += width(cp);
      return { lit: cp };
    };
    const add = (item: Item): void => {
      items++;
      if ('lit' in item) pos += hex(item.lit);
      else if (item.cls === item.cls.toLowerCase()) pos += classes[item.cls as 'w' | 'd' | 's'];
      else negs.push(classText(item.cls));
    };
    while (true) {
      if (i >= n) fail('unterminated character set');
      if (pattern[i] === ']' && items > 0) {
        i++;
        break;
      }
      const first = readItem();
      if (pattern[i] === '-') {
        i++;
        if (i >= n) fail('unterminated character set');
        if (pattern[i] === ']') {
          add(first);
          add({ lit: 0x2d });
          i++;
          break;
        }
        const second = readItem();
        if (!('lit' in first) || !('lit' in second)) fail('bad character range');
        const lo = (first as { lit: number }).lit;
        const hi = (second as { lit: number }).lit;
        if (hi < lo) fail(`bad character range ${String.fromCodePoint(lo)}-${String.fromCodePoint(hi)}`);
        items++;
        pos += `${hex(lo)}-${hex(hi)}`;
      } else {
        add(first);
      }
    }
    if (negs.length === 0) return `[${negate ? '^' : ''}${pos}]`;
    const alternatives = [...(pos ? [`[${pos}]`] : []), ...negs].join('|');
    return negate ? `(?:(?!${alternatives})[\\s\\S])` : `(?:${alternatives})`;
  };

  let out = '';
  let groups = 0;
  const open: number[] = [];
  const closed = new Set<number>();
  const names = new Map<string, number>();
  const reference = (g: number, label: string): string => {
    if (g < 1 || g > groups) fail(`invalid group reference ${label}`);
    if (!closed.has(g)) fail(`cannot refer to an open group ${label}`);
    return `\\${g}`;
  };

  while (i < n) {
    const c = pattern[i]!;
    if (c === '\\') {
      const e = readEscape(false);
      if ('lit' in e) out += hex(e.lit);
      else if ('cls' in e) out += classText(e.cls);
      else if ('ref' in e) out += reference(e.ref, `\\${e.ref}`);
      else if (e.at === 'A') out += '(?<![\\s\\S])';
      else if (e.at === 'Z') out += '(?![\\s\\S])';
      // Boundaries as one lookahead, so that quantifying them fails as in Python ("nothing to
      // repeat"); Python's \B never matches an empty string.
      else if (e.at === 'b') out += `(?=(?<=${W})(?!${W})|(?<!${W})(?=${W}))`;
      else out += `(?=(?<=${W})(?=${W})|(?<!${W})(?!${W})(?:(?<=[\\s\\S])|(?=[\\s\\S])))`;
      continue;
    }
    if (c === '[') {
      i++;
      out += readSet();
      continue;
    }
    if (c === '(') {
      if (pattern[i + 1] !== '?') {
        open.push(++groups);
        out += '(';
        i++;
        continue;
      }
      const rest = pattern.slice(i + 2);
      let m: RegExpExecArray | null;
      if ((m = /^P<([^>]*)>/.exec(rest))) {
        if (!GROUP_NAME_RE.test(m[1]!)) fail(`bad character in group name "${m[1]}"`);
        if (names.has(m[1]!)) fail(`redefinition of group name "${m[1]}"`);
        open.push(++groups);
        names.set(m[1]!, groups);
        out += `(?<${m[1]}>`;
        i += 2 + m[0].length;
      } else if ((m = /^P=([^)]*)\)/.exec(rest))) {
        const g = names.get(m[1]!);
        if (g === undefined) fail(`unknown group name "${m[1]}"`);
        out += reference(g!, `(?P=${m[1]})`);
        i += 2 + m[0].length;
      } else if (rest.startsWith('#')) {
        const end = pattern.indexOf(')', i + 3);
        if (end < 0) fail('missing ), unterminated comment');
        i = end + 1;
      } else if ((m = /^(?::|=|!|<=|<!)/.exec(rest))) {
        open.push(0);
        out += `(?${m[0]}`;
        i += 2 + m[0].length;
      } else if (rest.startsWith('(')) {
        fail('conditional groups (?(…)…) are not supported');
      } else if (rest.startsWith('>')) {
        fail('atomic groups (?>…) are not supported');
      } else if (/^[aiLmsux-]+:/.test(rest)) {
        fail('scoped inline flags (?flags:…) are not supported');
      } else if (/^[aiLmsux]+\)/.test(rest)) {
        fail('global flags (?…) must be at the start of the pattern');
      } else {
        fail(`unknown extension (?${rest.slice(0, 2)}`);
      }
      continue;
    }
    if (c === ')') {
      if (open.length === 0) fail('unbalanced parenthesis');
      const g = open.pop()!;
      if (g > 0) closed.add(g);
      out += ')';
      i++;
      continue;
    }
    if (c === '{') {
      const m = /^\{(\d*)(?:(,)(\d*))?\}/.exec(pattern.slice(i));
      if (!m || (m[1] === '' && m[2] === undefined)) {
        out += '\\{';
        i++;
      } else {
        const lo = m[1] === '' ? '0' : m[1]!;
        out += m[2] === undefined ? `{${lo}}` : `{${lo},${m[3]}}`;
        i += m[0].length;
      }
      continue;
    }
    if (c === '}' || c === ']') {
      out += `\\${c}`;
      i++;
      continue;
    }
    if (c === '.') {
      out += dotAll ? '[\\s\\S]' : '[^\\n]';
      i++;
      continue;
    }
    if (c === '^') {
      out += multiline ? '(?<![^\\n])' : '^';
      i++;
      continue;
    }
    if (c === '$') {
      out += multiline ? '(?![^\\n])' : '(?=\\n?(?![\\s\\S]))';
      i++;
      continue;
    }
    const cp = codePointAt(i);
    out += String.fromCodePoint(cp);
    i += width(cp);
  }
  if (open.length > 0) fail('missing ), unterminated subpattern');
  return { source: out, flags: ignoreCase ? 'iu' : 'u' };
}

/**
 * Names carried by more than one VM of the pool: those VMs need `shared: true` in
 * `vmFolderName`. Pass the whole pool list, not only the selected VMs, so that the folder of
 * a VM does not depend on the selection.
 *
 * @example duplicateNames([{ uuid: 'a', name: 'web' }, { uuid: 'b', name: 'web' }]) // Set { 'web' }
 */
export function duplicateNames(vms: readonly PoolVm[]): Set<string> {
  const seen = new Set<string>();
  const dup = new Set<string>();
  for (const vm of vms) {
    if (seen.has(vm.name)) dup.add(vm.name);
    else seen.add(vm.name);
  }
  return dup;
}

interface Assignment {
  list: SelectionListName;
  parsed: ParsedEntry;
}

/**
 * The regex entry that selects exactly the VM called `name`, as the messages suggest it:
 * Python's regex characters (and `:`) escaped, `$` anchoring the end, spaces at either end
 * written `\x20` so that the entry's trimming keeps them.
 *
 * @example literalNameEntry('File Server (old)') // 'File Server \\(old\\)$'
 */
export function literalNameEntry(name: string): string {
  const body = name.replace(/[\\.^$*+?{}[\]|():#]/g, (c) => `\\${c}`);
  const lead = /^\s*/.exec(body)![0].length;
  const trail = /\s*$/.exec(body.slice(lead))![0].length;
  const hex = (ws: string) =>
    [...ws].map((c) => (c.codePointAt(0)! > 0xff ? `\\U${c.codePointAt(0)!.toString(16).padStart(8, '0')}` : `\\x${c.codePointAt(0)!.toString(16).padStart(2, '0')}`)).join('');
  return `${hex(body.slice(0, lead))}${body.slice(lead, body.length - trail)}${hex(body.slice(body.length - trail))}$`;
}

/**
 * Splits the pool into excluded VMs, vdi-exports and vm-exports. See the module comment for
 * the rules. Throws a ConfigError when `maxBackups` is not an integer >= 1.
 *
 * @example
 *   selectVms(pool, { excludes: ['PRD-a.*'], vdiExports: ['DEV-web3:7'], vmExports: ['.*'], maxBackups: 4 })
 *   // → DEV-web3 as vdi-export (7 backups, disk xvda), every other VM not starting with PRD-a as vm-export (4)
 */
export function selectVms<V extends PoolVm>(vms: readonly V[], opts: SelectOptions): Selection<V> {
  if (!Number.isSafeInteger(opts.maxBackups) || opts.maxBackups < 1) {
    throw new ConfigError(`max_backups must be an integer >= 1, got ${opts.maxBackups}`, { key: 'max_backups' });
  }
  const count = vms.length;
  const names = vms.map((vm) => vm.name);
  const byName = new Map<string, number[]>();
  names.forEach((name, i) => {
    const list = byName.get(name);
    if (list) list.push(i);
    else byName.set(name, [i]);
  });
  const assigned: (Assignment | undefined)[] = new Array(count);
  const warnings: SelectionWarning[] = [];
  const errors: SelectionWarning[] = [];
  const requestedWhere = (list: SelectionListName): string | undefined => opts.sources?.requested.find((r) => r.list === list)?.where;
  const configWhere = (list: SelectionListName): string | undefined => opts.sources?.config.find((c) => c.list === list)?.where;

  const pass = (list: SelectionListName, entries: readonly string[]): void => {
    const mustMatch = list !== 'excludes' && requestedWhere(list) !== undefined;
    for (const raw of entries) {
      let parsed: ParsedEntry;
      try {
        parsed = parseEntry(raw);
      } catch (error) {
        if (!(error instanceof ConfigError)) throw error;
        const code = error.data.reason === 'invalid-regex' ? 'invalid-regex' : 'invalid-entry';
        errors.push({ entry: raw, list, code, message: error.message });
        continue;
      }
      if ((list === 'vm_exports' || list === 'delta_exports') && parsed.disks) {
        const what = list === 'vm_exports' ? 'a vm-export' : 'a delta-export (it backs up every disk)';
        warnings.push({ entry: parsed.entry, list, code: 'disks-ignored', message: `entry "${parsed.entry}": disks apply to vdi_exports only; ignored for ${what}` });
      }
      if (list === 'excludes' && (parsed.maxBackups !== null || parsed.disks)) {
        warnings.push({ entry: parsed.entry, list, code: 'fields-ignored', message: `entry "${parsed.entry}": max_backups and disks mean nothing in excludes; ignored` });
      }
      let matchedAny = false;
      if (parsed.kind === 'name') {
        const idx = byName.get(parsed.name) ?? [];
        matchedAny = idx.length > 0;
        for (const i of idx) if (!assigned[i]) assigned[i] = { list, parsed };
      } else {
        for (let i = 0; i < count; i++) {
          if (assigned[i]) {
            if (!matchedAny && parsed.matches(names[i]!)) matchedAny = true;
          } else if (parsed.matches(names[i]!)) {
            matchedAny = true;
            assigned[i] = { list, parsed };
          }
        }
      }
      // A name with regex characters is a regex: `File Server (old)` does not select the VM
      // of that name. Say so, and how to write it, when that VM exists.
      const missedLiteral = parsed.kind === 'regex' && byName.has(parsed.name) && !parsed.matches(parsed.name);
      const hint = missedLiteral
        ? `it is read as a regular expression, which the VM named "${parsed.name}" does not match; to select that VM by its name, escape the regex characters: ${literalNameEntry(parsed.name)}`
        : undefined;
      if (!matchedAny) {
        const message = `entry "${parsed.entry}" matches no VM of the pool${hint !== undefined ? `: ${hint}` : ''}`;
        (mustMatch ? errors : warnings).push({ entry: parsed.entry, list, code: 'no-match', message });
      } else if (hint !== undefined) {
        warnings.push({ entry: parsed.entry, list, code: 'literal-name', message: `entry "${parsed.entry}": ${hint}` });
      }
    }
  };
  pass('excludes', opts.excludes);
  pass('vdi_exports', opts.vdiExports);
  pass('delta_exports', opts.deltaExports ?? []);
  pass('vm_exports', opts.vmExports);

  // The config's export entries, in the order the config's own selection would try them.
  const configEntries: { parsed: ParsedEntry; where: string }[] = [];
  for (const list of ['vdi_exports', 'delta_exports', 'vm_exports'] as const) {
    for (const c of opts.sources?.config.filter((c) => c.list === list) ?? []) {
      for (const raw of c.entries) {
        try {
          configEntries.push({ parsed: parseEntry(raw), where: c.where });
        } catch {
          // A bad config entry is the config's error (loadSettings), not a MAX.
        }
      }
    }
  }
  const globalMax = (): { maxBackups: number; maxFrom: MaxSource } => ({
    maxBackups: opts.maxBackups,
    maxFrom: { from: 'max_backups', ...(opts.sources !== undefined ? { where: opts.sources.maxBackups } : {}) },
  });
  const maxOf = (a: Assignment, vmName: string): { maxBackups: number; maxFrom: MaxSource } => {
    const requested = requestedWhere(a.list);
    if (a.parsed.maxBackups !== null) {
      const where = requested ?? configWhere(a.list);
      return { maxBackups: a.parsed.maxBackups, maxFrom: { from: requested !== undefined ? 'request' : 'config', entry: a.parsed.entry, ...(where !== undefined ? { where } : {}) } };
    }
    if (requested === undefined) return globalMax();
    const config = configEntries.find((c) => c.parsed.matches(vmName));
    if (config === undefined || config.parsed.maxBackups === null) return globalMax();
    return { maxBackups: config.parsed.maxBackups, maxFrom: { from: 'config', entry: config.parsed.entry, where: config.where } };
  };

  const result: Selection<V> = { excludes: [], vdiExports: [], deltaExports: [], vmExports: [], warnings, errors };
  const warnedNames = new Set<string>();
  for (let i = 0; i < count; i++) {
    const a = assigned[i];
    if (!a) continue;
    const vm = vms[i]!;
    if (a.list === 'excludes') {
      result.excludes.push(vm);
      continue;
    }
    const max = maxOf(a, vm.name);
    if (a.list === 'vdi_exports') {
      result.vdiExports.push({ vm, ...max, disks: [...(a.parsed.disks ?? DEFAULT_VDI_DISKS)], entry: a.parsed.entry });
    } else if (a.list === 'delta_exports') {
      result.deltaExports.push({ vm, ...max, entry: a.parsed.entry });
    } else {
      result.vmExports.push({ vm, ...max, entry: a.parsed.entry });
    }
    const same = byName.get(vm.name)!;
    if (same.length > 1 && !warnedNames.has(vm.name)) {
      warnedNames.add(vm.name);
      warnings.push({
        entry: a.parsed.entry,
        list: a.list,
        code: 'duplicate-name',
        message: `${same.length} VMs are named "${vm.name}" (${same.map((j) => vms[j]!.uuid).join(', ')}): each selected one is backed up into its own folder`,
      });
    }
  }
  return result;
}
