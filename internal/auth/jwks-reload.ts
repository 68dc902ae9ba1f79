import { readFile } from 'node:fs/promises';
import { type Jwks, parseJwks } from './keys.js';

/** What a reload found: new keys, or a file that is not a valid JWKS (the old keys stay). */
export type JwksReload = { kind: 'changed'; jwks: Jwks; kids: string[] } | { kind: 'invalid'; why: string };

/**
 * The verification keys of AUTH_JWKS_FILE, re-read every `intervalMs` so a rotation (a key
 * added, a key removed) takes effect without a restart. Polling, not fs.watch: a Kubernetes
 * Secret volume is updated by swapping a symlink, which inotify on the file does not see, and
 * the file is a few hundred bytes. A file that no longer parses keeps the last good keys (a
 * half-written file never locks everyone out) and is reported once per distinct content.
 */
export class JwksFile {
  private text: string;
  private timer: NodeJS.Timeout | undefined;
  private reading = false;

  constructor(
    private readonly file: string,
    /** The keys read at start (readJwksFile: a bad file stops the start). */
    private jwks: Jwks,
  ) {
    this.text = JSON.stringify(jwks);
  }

  /** The keys now in force. */
  get current(): Jwks {
    return this.jwks;
  }

  /**
   * Reads the file once; undefined when it is unchanged (or unreadable for a moment: a
   * Secret update in progress, reported as invalid).
   */
  async reload(): Promise<JwksReload | undefined> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      return this.refuse(
        `cannot read ${this.file}: ${(err as Error).message}`,
        `\0${(err as Error).message}`,
      );
    }
    if (text === this.text) return undefined;
    let jwks: Jwks;
    try {
      jwks = parseJwks(text);
    } catch (err) {
      return this.refuse(`${this.file}: ${(err as Error).message}`, text);
    }
    this.text = text;
    if (JSON.stringify(jwks) === JSON.stringify(this.jwks)) return undefined;
    this.jwks = jwks;
    return { kind: 'changed', jwks, kids: jwks.keys.map((k) => String(k.kid)) };
  }

  private refuse(why: string, seen: string): JwksReload | undefined {
    if (seen === this.text) return undefined;
    this.text = seen;
    return { kind: 'invalid', why };
  }

  /** Re-reads every `intervalMs`, telling `on` about every change or refusal. */
  start(intervalMs: number, on: (r: JwksReload) => void): void {
    this.timer = setInterval(() => {
      if (this.reading) return;
      this.reading = true;
      void this.reload()
        .then((r) => r && on(r))
        .finally(() => {
          this.reading = false;
        });
    }, intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
