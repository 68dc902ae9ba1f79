/**
 * Collects answers from peers asked at once (a candidate's GetLogState, like
 * Raft's RequestVote): resolves when every call has settled, once `need` of
 * them have answered and `graceMs` has passed since the start, or as soon as
 * so many have failed that `need` answers can no longer come — whichever is
 * first. Each call bounds itself (its own deadline); a call still running when
 * this resolves is left to finish and its answer is not counted.
 *
 * Why not a fixed short deadline per call: on a loaded host a peer's answer (a
 * durable vote: a fsync) can take longer than a third of a lease, and a candidate
 * that gave up on its majority lost terms over and over (the netns clock-skew
 * window, docs/faults.md). Why not wait for all: a peer cut off would hold every
 * election to the longest deadline.
 *
 * Returns one entry per call, in order: its answer, or null (failed or not yet).
 */
export async function gatherAnswers<T>(
  calls: ReadonlyArray<Promise<T | null>>,
  need: number,
  graceMs: number,
): Promise<Array<T | null>> {
  const out: Array<T | null> = calls.map(() => null);
  if (calls.length === 0) return out;
  return new Promise((resolve) => {
    let settled = 0;
    let answered = 0;
    let graceOver = false;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve([...out]);
    };
    const timer = setTimeout(() => {
      graceOver = true;
      if (answered >= need) finish();
    }, graceMs);
    calls.forEach((call, i) => {
      void call
        .catch(() => null)
        .then((v) => {
          if (done) return;
          settled++;
          if (v !== null) {
            out[i] = v;
            answered++;
          }
          const failed = settled - answered;
          if (
            settled === calls.length ||
            (graceOver && answered >= need) ||
            // A majority is out of reach: give the lease back now, not at the deadline.
            failed > calls.length - need
          )
            finish();
        });
    });
  });
}
