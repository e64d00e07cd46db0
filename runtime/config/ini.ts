/**
 * VmBackup's config file format: the INI dialect of Python 2's `ConfigParser`, which VmBackup
 * read its `[vmbackup]` section with. Kept from it, so existing files still work:
 *
 * - `[section]` headers (case-sensitive: only `[vmbackup]` is read), `key = value` and
 *   `key: value` (the first `=` or `:` separates), keys case-insensitive.
 * - Comment lines start with `#` or `;` (also indented) or `REM`; `;` after whitespace starts an
 *   inline comment (`max_backups = 4 ; four`); `#` inside a value is kept (VM names have it).
 * - An indented line after a key continues its value (joined with a newline); blank lines
 *   are skipped; `""` is the empty value.
 *
 * Not kept: `%(key)s` interpolation is done by the loader (it needs every file), not here.
 *
 * @example
 *   parseIni('[vmbackup]\nmax_backups = 4\n', '/etc/vmbackup.cfg', { knownKeys: ['max_backups'] })
 *   // → { entries: [{ key: 'max_backups', value: '4', file: '/etc/vmbackup.cfg', line: 2 }],
 *   //     warnings: [], errors: [] }
 */

/** One `key = value` line (plus its continuation lines) of the `[vmbackup]` section. */
export interface IniEntry {
  /** Lower-cased, as Python's ConfigParser does. */
  key: string;
  /** Trimmed, inline comment removed; continuation lines joined with `\n`. */
  value: string;
  file: string;
  /** 1-based line of the key. */
  line: number;
}

/** A line that is not valid INI. */
export interface IniIssue {
  file: string;
  line: number;
  message: string;
}

export interface IniResult {
  /** Entries of `[vmbackup]`, in file order (a repeated key appears twice; the last wins). */
  entries: IniEntry[];
  /** Unknown keys, repeated keys, keys outside `[vmbackup]` that look meant for it. */
  warnings: string[];
  errors: IniIssue[];
}

export interface ParseIniOptions {
  /** The section that is read. Default `vmbackup`. */
  section?: string;
  /** When given, keys not in it are warned about (with a suggestion) and left out of `entries`. */
  knownKeys?: readonly string[];
}

const HEADER = /^\s*\[([^\]]+)\]/;
// Python 2 ConfigParser's OPTCRE: the key runs up to the first ':' or '='.
const OPTION = /^\s*([^:=\s][^:=]*?)\s*([:=])(.*)$/;
const COMMENT = /^\s*[#;]|^[rR][eE][mM](\s|$)/;

/** Parse the text of one config file. Never throws: bad lines come back in `errors`. */
export function parseIni(text: string, file: string, options: ParseIniOptions = {}): IniResult {
  const wanted = options.section ?? 'vmbackup';
  const known = options.knownKeys ? new Set(options.knownKeys) : undefined;
  const entries: IniEntry[] = [];
  const warnings: string[] = [];
  const errors: IniIssue[] = [];
  const seen = new Map<string, number>();

  let section: string | undefined;
  // The entry that indented lines continue; also set (to a throwaway) for keys we ignore, so
  // that their continuation lines are ignored with them.
  let current: IniEntry | undefined;
  let warnedNoSection = false;

  const lines = text.replace(/^\uFEFF/, '').split(/\r\n|\n|\r/);
  lines.forEach((raw, index) => {
    const line = index + 1;
    if (raw.trim() === '' || COMMENT.test(raw)) return;

    if (/^\s/.test(raw) && current) {
      const more = stripInlineComment(raw).trim();
      if (more !== '') current.value = current.value === '' ? more : `${current.value}\n${more}`;
      return;
    }

    const header = HEADER.exec(raw);
    if (header) {
      section = header[1]!;
      current = undefined;
      if (section !== wanted && section.trim().toLowerCase() === wanted) {
        warnings.push(`section [${section}] in ${file} line ${line} is ignored: the section must be spelled [${wanted}]`);
      }
      return;
    }

    const option = OPTION.exec(raw);
    if (!option) {
      errors.push({ file, line, message: `cannot parse ${JSON.stringify(raw.trim())}: expected "key = value", "[section]" or a # comment` });
      current = undefined;
      return;
    }
    const key = option[1]!.toLowerCase();
    let value = stripInlineComment(option[3]!).trim();
    if (value === '""') value = '';
    const entry: IniEntry = { key, value, file, line };
    current = entry;

    if (section === undefined) {
      if (!warnedNoSection) {
        warnings.push(`${key} in ${file} line ${line} is ignored: it comes before any [section] header (put it under [${wanted}])`);
        warnedNoSection = true;
      }
      return;
    }
    if (section !== wanted) return;
    if (known && !known.has(key)) {
      const guess = closest(key, [...known]);
      warnings.push(`unknown key ${key} in ${file} line ${line} is ignored${guess ? ` (did you mean ${guess}?)` : ''}`);
      return;
    }
    const before = seen.get(key);
    if (before !== undefined) {
      warnings.push(`${key} is set twice in ${file} (line ${before} and line ${line}): line ${line} wins; give a list once, comma-separated`);
    }
    seen.set(key, line);
    entries.push(entry);
  });

  return { entries, warnings, errors };
}

// Python 2 ConfigParser: ';' preceded by whitespace starts a comment. '#' does not (VM names
// such as "web #2" contain it), nor does ';' inside a value (it separates disks: xvda;xvdb).
function stripInlineComment(value: string): string {
  const match = /(^|\s);/.exec(value);
  return match ? value.slice(0, match.index) : value;
}

/**
 * Split a VmBackup list value: comma-separated, each item trimmed, empty items dropped (so an
 * empty value is an empty list), `\,` for a comma inside an item, and line breaks (continued
 * values) separate too. A comma inside a regex group, class or quantifier does not split
 * (`print[\d{1,}]$:8` is one entry) as long as the brackets balance.
 *
 * @example
 *   splitList('DEV-phishing-test, PRD-PRINTER1') // → ['DEV-phishing-test', 'PRD-PRINTER1']
 *   splitList('')                                // → []
 *   splitList('web\\, old,db')                   // → ['web, old', 'db']
 */
export function splitList(value: string): string[] {
  return value
    .split('\n')
    .flatMap((line) => splitTopLevel(line, ',', ','))
    .map((item) => item.trim())
    .filter((item) => item !== '');
}

/**
 * Split `text` at each `separator` that is outside regex brackets — `(…)`, `[…]`, `{…}` — and
 * not escaped with a backslash. Escapes of characters in `unescape` are resolved (`\,` → `,`);
 * other escapes are kept as written (`\d` stays `\d`). When the brackets do not balance (a VM
 * name with a lone `(`), brackets are ignored and every unescaped separator splits.
 *
 * @example
 *   splitTopLevel('(?:a|b):5', ':', ':') // → ['(?:a|b)', '5']
 */
export function splitTopLevel(text: string, separator: string, unescape: string): string[] {
  return scan(text, separator, unescape, true) ?? scan(text, separator, unescape, false)!;
}

function scan(text: string, separator: string, unescape: string, nested: boolean): string[] | undefined {
  const pieces: string[] = [];
  let piece = '';
  let parens = 0;
  let braces = 0;
  let inClass = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\\' && i + 1 < text.length) {
      const next = text[i + 1]!;
      piece += unescape.includes(next) ? next : ch + next;
      i++;
      continue;
    }
    if (nested) {
      if (inClass) {
        if (ch === ']') inClass = false;
        piece += ch;
        continue;
      }
      if (ch === '[') {
        inClass = true;
        piece += ch;
        // In a regex, ']' right after '[' or '[^' is a literal, not the end of the class.
        if (text[i + 1] === '^') piece += text[++i];
        if (text[i + 1] === ']') piece += text[++i];
        continue;
      }
      if (ch === '(') parens++;
      else if (ch === ')' && parens > 0) parens--;
      else if (ch === '{') braces++;
      else if (ch === '}' && braces > 0) braces--;
    }
    if (ch === separator && parens === 0 && braces === 0) {
      pieces.push(piece);
      piece = '';
      continue;
    }
    piece += ch;
  }
  pieces.push(piece);
  if (nested && (parens !== 0 || braces !== 0 || inClass)) return undefined;
  return pieces;
}

/** The candidate closest to `word` (prefix or edit distance <= 2), for "did you mean" hints. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const d = candidate.startsWith(word) && word.length >= 3 ? 1 : distance(word, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.floor(word.length / 4)) ? best : undefined;
}

function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length]!;
}
