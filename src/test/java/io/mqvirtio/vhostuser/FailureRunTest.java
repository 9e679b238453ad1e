package io.mqvirtio.vhostuser;

import static org.assertj.core.api.Assertions.assertThat;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Which failures of a run reach the log: the first ten, then one in a thousand, and how many once it is over. */
class FailureRunTest {
    @Test
    void theFirstTenThenOneInAThousandAndTheCountAtTheEnd() {
        FailureRun run = new FailureRun();
        int logged = 0;
        for (int i = 0; i < 5000; i++) {
            logged += run.failed() ? 1 : 0;
        }
        assertThat(logged).isEqualTo(10 + 5);
        assertThat(run.count()).isEqualTo(5000);
        assertThat(run.succeeded()).isEqualTo(5000);
        assertThat(run.failed()).isTrue(); // a new run
        assertThat(run.succeeded()).isZero(); // its one line said it all
    }

    /**
     * A failure that lasts (out of descriptors for good: an accept loop fails ten times a second) past 2^31 failures,
     * about seven years, goes on being logged one in a thousand, and its count stays right. The count was an int: it
     * wrapped to -2^31, which is "among the first ten", so every failure from then on was a line (ten a second into
     * the log every VM shares, each saying "-2147483647 in a row"), and the closing line was never written.
     */
    @Test
    @Timeout(60)
    void aRunPastTwoToTheThirtyOneFailuresStillLogsOneInAThousand() {
        FailureRun run = new FailureRun();
        long logged = 0;
        long n = (1L << 31) + 10_000;
        for (long i = 0; i < n; i++) {
            if (run.failed()) {
                logged++;
            }
        }
        assertThat(logged).isEqualTo(10 + n / 1000);
        assertThat(run.count()).isEqualTo(n);
        assertThat(run.succeeded()).isEqualTo(n);
    }
}
