import { describe, expect, it } from 'vitest';
import { mergeRss } from '../../../bench/rss.js';
import { parseWeedBenchmark } from '../../../bench/seaweedfs.js';
import { parseEnvFlags } from '../../../bench/target.js';
import { parseWrk } from '../../../bench/wrk.js';

// The bench reports are only as good as these parsers of other tools' output.

const WRK = `Running 10s test @ http://127.0.0.1:8080/blobs/abc
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.54ms   20.10ms 386.00ms   97.00%
    Req/Sec   600.00     80.00   700.00     70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    2.50ms
     99%    1.20s
  11330 requests in 10.00s, 12.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   1133.00
Transfer/sec:      1.20MB
`;

const WEED = `------------ Writing Benchmark ----------
Concurrency Level:      16
Time taken for tests:   5.413 seconds
Completed requests:      4000
Failed requests:        0
Total transferred:      4214522 bytes
Requests per second:    739.00 [#/sec]
Transfer rate:          760.36 [Kbytes/sec]

Connection Times (ms)
              min      avg        max      std
Total:        2.1      21.5       160.3      12.4

Percentage of the requests served within a certain time (ms)
   50%     21.1 ms
   66%     24.3 ms
   75%     26.4 ms
   80%     28.0 ms
   90%     33.2 ms
   95%     38.9 ms
   98%     58.1 ms
   99%     78.7 ms
  100%    160.3 ms
`;

describe('bench parsers', () => {
  it('reads wrk --latency output in every unit, counting non-2xx and socket errors', () => {
    const r = parseWrk(WRK);
    expect(r.opsPerSec).toBe(1133);
    expect(r.p50ms).toBeCloseTo(0.812, 6);
    expect(r.p99ms).toBe(1200);
    expect(r.requests).toBe(11330);
    expect(r.errors).toBe(9);
  });

  it('gives NaN, not zero, for a figure wrk did not print', () => {
    const r = parseWrk('  0 requests in 10.00s\n');
    expect(r.requests).toBe(0);
    expect(Number.isNaN(r.p50ms)).toBe(true);
    expect(Number.isNaN(r.opsPerSec)).toBe(true);
  });

  it('reads the weed benchmark report', () => {
    const f = parseWeedBenchmark(WEED);
    expect(f).toEqual({
      opsPerSec: 739,
      p50ms: 21.1,
      p99ms: 78.7,
      completed: 4000,
      failed: 0,
      seconds: 5.413,
    });
  });

  it('merges RSS figures of several rounds: peak is the max, mean weighted by samples', () => {
    const m = mergeRss([
      [{ role: 'gateway', processes: 2, samples: 10, peakBytes: 100, meanBytes: 50 }],
      [{ role: 'gateway', processes: 2, samples: 30, peakBytes: 300, meanBytes: 90 }],
    ]);
    expect(m).toEqual([{ role: 'gateway', processes: 2, samples: 40, peakBytes: 300, meanBytes: 80 }]);
  });

  it('takes --env KEY=VALUE and refuses anything else', () => {
    expect(parseEnvFlags(['PLACEMENT_GROUPS=256', 'A_B=x=y'])).toEqual({
      PLACEMENT_GROUPS: '256',
      A_B: 'x=y',
    });
    expect(() => parseEnvFlags(['placement=1'])).toThrow(/KEY=VALUE/);
  });
});
