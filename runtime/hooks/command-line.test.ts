import { describe, expect, it } from 'vitest';
import { splitCommand } from './command-line.js';

describe('splitCommand', () => {
  const ok: [string, string[]][] = [
    ['/usr/local/bin/quiesce', ['/usr/local/bin/quiesce']],
    ['  /bin/x   a\tb  ', ['/bin/x', 'a', 'b']],
    [`/bin/x --db "sales db" 'a b'`, ['/bin/x', '--db', 'sales db', 'a b']],
    [`/bin/sh -c 'echo "$VMBACKUP_VM_NAME" >> /tmp/log'`, ['/bin/sh', '-c', 'echo "$VMBACKUP_VM_NAME" >> /tmp/log']],
    [`/bin/x "say \\"hi\\"" "back\\\\slash" "keep \\n"`, ['/bin/x', 'say "hi"', 'back\\slash', 'keep \\n']],
    [`/bin/x a\\ b \\'q`, ['/bin/x', 'a b', "'q"]],
    [`/bin/x pre"fix"ed ''`, ['/bin/x', 'prefixed', '']],
    ['/bin/x $HOME * ~', ['/bin/x', '$HOME', '*', '~']],
  ];
  it.each(ok)('%s', (text, argv) => {
    expect(splitCommand(text)).toEqual({ argv });
  });

  const bad: [string, RegExp][] = [
    ['', /is empty/],
    ['   ', /is empty/],
    ['quiesce --now', /absolute path.*"quiesce"/],
    ['./quiesce', /absolute path/],
    [`/bin/x "open`, /unbalanced double quote/],
    [`/bin/x 'open`, /unbalanced single quote/],
    ['/bin/x \\', /lone backslash/],
  ];
  it.each(bad)('%j is refused', (text, message) => {
    const r = splitCommand(text);
    expect('error' in r && r.error).toMatch(message);
  });
});
