/**
 * Offers `read` at `perSecond`, at most `maxInFlight` at once, until stop().
 * The rate is kept against the clock, not per timer tick: on a starved machine
 * timers fire late and each read takes longer, but every tick starts the reads
 * that are due (up to the in-flight cap), so a heat threshold the test relies on
 * is still crossed. Failed reads are ignored (the caller checks outcomes).
 */
export function pacedReads(
  read: () => Promise<unknown>,
  perSecond: number,
  maxInFlight = 8,
): { stop(): Promise<void> } {
  const t0 = performance.now();
  let started = 0;
  let inFlight = 0;
  let idle: (() => void) | undefined;
  const timer = setInterval(
    () => {
      const due = Math.floor(((performance.now() - t0) * perSecond) / 1000);
      // Reads the cap kept from starting are dropped, not owed: no burst after a stall.
      started = Math.max(started, due - maxInFlight);
      while (started < due && inFlight < maxInFlight) {
        started++;
        inFlight++;
        void read()
          .catch(() => {})
          .finally(() => {
            inFlight--;
            if (inFlight === 0) idle?.();
          });
      }
    },
    Math.max(5, 1000 / perSecond),
  );
  return {
    async stop() {
      clearInterval(timer);
      if (inFlight > 0) await new Promise<void>((resolve) => (idle = resolve));
    },
  };
}
