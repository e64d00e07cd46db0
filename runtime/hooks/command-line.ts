/**
 * Splits a configured hook command into the program and its arguments — no shell: words are
 * separated by blanks; `'…'` keeps everything literally; `"…"` keeps blanks, and `\"` and `\\`
 * inside it are a quote and a backslash; outside quotes `\x` is `x`. Nothing is expanded
 * (`$VAR`, `*`, `~` stay as written); an operator who wants a shell writes one:
 * `/bin/sh -c '…'`. The program must be an absolute path (cron's PATH is short).
 *
 * @example
 *   splitCommand(`/usr/local/bin/quiesce --db "sales db" 'a b'`)
 *   // → { argv: ['/usr/local/bin/quiesce', '--db', 'sales db', 'a b'] }
 *   splitCommand('quiesce') // → { error: 'the program must be an absolute path (/usr/local/bin/…), not "quiesce"' }
 */
export function splitCommand(text: string): { argv: string[] } | { error: string } {
  const argv: string[] = [];
  let word = '';
  let inWord = false;
  let quote: '"' | "'" | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote === "'") {
      if (c === "'") quote = undefined;
      else word += c;
      continue;
    }
    if (quote === '"') {
      if (c === '"') quote = undefined;
      else if (c === '\\' && (text[i + 1] === '"' || text[i + 1] === '\\')) word += text[++i];
      else word += c;
      continue;
    }
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      if (inWord) argv.push(word);
      word = '';
      inWord = false;
      continue;
    }
    inWord = true;
    if (c === "'" || c === '"') quote = c;
    else if (c === '\\') {
      if (i + 1 >= text.length) return { error: 'ends with a lone backslash' };
      word += text[++i];
    } else word += c;
  }
  if (quote !== undefined) return { error: `unbalanced ${quote === '"' ? 'double' : 'single'} quote` };
  if (inWord) argv.push(word);
  if (argv.length === 0) return { error: 'is empty' };
  if (!argv[0]!.startsWith('/')) return { error: `the program must be an absolute path (/usr/local/bin/…), not ${JSON.stringify(argv[0])}` };
  return { argv };
}
