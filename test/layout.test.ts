// The import rule of the repository's layout (docs/architecture.md): a tier (edge, rack, core)
// imports only itself, schema/ (the wire contract) and lib/ (shared infrastructure); schema/ and
// lib/ import no tier; nothing a daemon runs imports tools/. Tests may reach further (a tier's
// test can build wire content with tools' helpers), so only non-test files are checked.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Top folders each top folder may import from (besides itself and packages). */
const allowed: Record<string, readonly string[]> = {
  edge: ['schema', 'lib'],
  rack: ['schema', 'lib'],
  core: ['schema', 'lib'],
  schema: ['lib'],
  lib: ['schema'],
};

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      if (name !== 'generated' && name !== 'node_modules') out.push(...sources(path));
    } else if (name.endsWith('.ts') && !name.endsWith('.test.ts')) {
      out.push(path);
    }
  }
  return out;
}

/** Every relative module a file imports, statically or with import(). */
export function relativeImports(text: string): string[] {
  const specs: string[] = [];
  const re = /(?:\bfrom\s+|\bimport\s*\(\s*|\bimport\s+)(['"])(\.{1,2}\/[^'"]+)\1/g;
  for (let m = re.exec(text); m !== null; m = re.exec(text)) specs.push(m[2]!);
  return specs;
}

/** Imports that break the rule, as "file → target". */
export function violations(): string[] {
  const bad: string[] = [];
  for (const [top, may] of Object.entries(allowed)) {
    for (const file of sources(join(root, top))) {
      for (const spec of relativeImports(readFileSync(file, 'utf8'))) {
        const target = relative(root, resolve(dirname(file), spec));
        const targetTop = target.split('/')[0]!;
        if (targetTop !== top && !may.includes(targetTop)) bad.push(`${relative(root, file)} → ${target}`);
      }
    }
  }
  return bad;
}

describe('layout', () => {
  it('finds the imports a file makes', () => {
    const text = [
      "import { a } from '../tools/args.js';",
      "import type { B } from './b.js';",
      "export { c } from '../../rack/c.js';",
      "const d = await import('../core/d.js');",
      "import './side-effect.js';",
      "import { e } from 'hono';",
    ].join('\n');
    expect(relativeImports(text)).toEqual(['../tools/args.js', './b.js', '../../rack/c.js', '../core/d.js', './side-effect.js']);
  });

  it('tiers import only themselves, schema/ and lib/; nothing a daemon runs imports tools/', () => {
    expect(violations()).toEqual([]);
  });
});
