// A one-line progress display for the cluster benchmark (cli-progress on a
// terminal; plain phase lines otherwise).
import cliProgress from 'cli-progress';
import type { Sample } from './load.js';

export class Progress {
  private bar: cliProgress.SingleBar | undefined;
  private timer: NodeJS.Timeout | undefined;
  private phaseStart = 0;
  private byTime = true;
  private ops = 0;
  private errors = 0;
  private readonly tty = process.stderr.isTTY === true;
  private readonly started = performance.now();

  /** Starts a phase measured in milliseconds (`unit` 'ms') or operations ('ops'). */
  phase(name: string, total: number, unit: 'ms' | 'ops' = 'ms'): void {
    this.finishBar();
    this.phaseStart = performance.now();
    this.byTime = unit === 'ms';
    this.ops = 0;
    this.errors = 0;
    const elapsed = ((performance.now() - this.started) / 1000).toFixed(0);
    if (!this.tty) {
      process.stderr.write(`[${elapsed}s] ${name}\n`);
      return;
    }
    this.bar = new cliProgress.SingleBar(
      {
        format: `[${elapsed}s] {phase} |{bar}| {percentage}% | {ops} ops | {rate}/s | {errors} failed`,
        hideCursor: true,
        barsize: 24,
      },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(Math.max(1, Math.round(total)), 0, { phase: name.padEnd(34), ops: 0, rate: 0, errors: 0 });
    this.timer = setInterval(() => this.render(), 200);
  }

  op(s: Sample): void {
    this.ops++;
    if (!s.ok) this.errors++;
    if (!this.byTime) this.render();
  }

  private render(): void {
    if (!this.bar) return;
    const secs = (performance.now() - this.phaseStart) / 1000;
    const value = this.byTime ? Math.round(secs * 1000) : this.ops;
    this.bar.update(Math.min(value, this.bar.getTotal()), {
      ops: this.ops,
      rate: secs > 0 ? Math.round(this.ops / secs) : 0,
      errors: this.errors,
    });
  }

  log(line: string): void {
    if (this.bar) {
      this.finishBar();
    }
    process.stderr.write(`${line}\n`);
  }

  private finishBar(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.bar) {
      this.render();
      this.bar.stop();
      this.bar = undefined;
    }
  }

  done(): void {
    this.finishBar();
  }
}
