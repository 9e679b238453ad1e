package io.mqvirtio.vhostuser;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;

class WarningLimitTest {
    @Test
    void aBurstPerWindowThenACountOfTheRest() {
        AtomicLong now = new AtomicLong(1_000);
        WarningLimit limit = new WarningLimit("vm1.sock", 3, 10_000_000_000L, now::get);
        System.Logger log = System.getLogger("io.mqvirtio.vhostuser.WarningLimitTest");
        try (LogCapture capture = new LogCapture().quiet()) {
            for (int i = 1; i <= 7; i++) {
                limit.warn(log, "bad request {0}", i);
            }
            assertThat(capture.lines()).containsExactly("WARNING bad request 1", "WARNING bad request 2",
                    "WARNING bad request 3 (the last warning about this frontend logged for up to 10 s; the rest are counted)");
            now.addAndGet(9_000_000_000L);
            limit.warn(log, "bad request {0}", 8);
            assertThat(capture.lines()).as("still in the window").hasSize(3);
            now.addAndGet(2_000_000_000L); // 11 s after the window opened
            capture.clear();
            limit.warn(log, "bad request {0}", 9);
            assertThat(capture.lines()).containsExactly(
                    "WARNING vm1.sock: 5 warnings about the frontend were not logged in the last 11 s (8 in all)",
                    "WARNING bad request 9");
            assertThat(limit.total()).isEqualTo(9);
            // a quiet window ends without a count
            now.addAndGet(60_000_000_000L);
            capture.clear();
            limit.warn(log, "bad request {0}", 10);
            assertThat(capture.lines()).containsExactly("WARNING bad request 10");
        }
    }
}
