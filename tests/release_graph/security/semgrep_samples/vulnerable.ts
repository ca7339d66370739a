// Annotated sample for release-graph's semgrep rules (TypeScript).
import { exec } from 'child_process';

export function run(dir: string, code: string): void {
  // ruleid: rg-js-child-process-exec
  exec(`ls ${dir}`);
  // ruleid: rg-js-eval
  eval(code);
}
