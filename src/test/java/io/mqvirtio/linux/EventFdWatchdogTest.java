package io.mqvirtio.linux;

import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The watchdog that releases writes stuck on an eventfd a peer filled (see {@link EventFdWatchdog}). */
class EventFdWatchdogTest {

    /**
     * The watchdog holds an eventfd's lock only while it looks at it and drains it: its line about the release is
     * written after, so a log handler that waits (standard error into a full pipe, a stalled journal) holds up no
     * close of that eventfd. Before, the line was written under the lock, and the close (a ring torn down, a driver
     * closing, whose close promises to return within its timeouts) waited for the handler, for as long as it waited.
     */
    @Test
    @Timeout(30)
    void aLogHandlerThatWaitsHoldsUpNoClose() throws Exception {
        Logger logger = Logger.getLogger(EventFdWatchdog.class.getName());
        CountDownLatch logging = new CountDownLatch(1), letGo = new CountDownLatch(1);
        Handler stuck = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getMessage() != null && r.getMessage().contains("released a write")) {
                    logging.countDown();
                    try {
                        letGo.await(20, TimeUnit.SECONDS);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                    }
                }
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        logger.addHandler(stuck);
        EventFd e = EventFd.create();
        Thread writer = null, closer = null;
        try {
            try (Arena a = Arena.ofConfined()) { // filled to the limit, blocking: the next signal waits
                MemorySegment v = a.allocate(ValueLayout.JAVA_LONG);
                v.set(ValueLayout.JAVA_LONG, 0, 0xffff_ffff_ffff_fffeL);
                assertThat(e.write(v)).isEqualTo(8);
            }
            e.setNonBlocking(false);
            writer = Thread.ofPlatform().daemon().start(e::signal);
            assertThat(logging.await(5, TimeUnit.SECONDS)).as("the watchdog released the write and logs it").isTrue();
            long t0 = System.nanoTime();
            closer = Thread.ofPlatform().daemon().start(e::close);
            closer.join(2000);
            assertThat(closer.isAlive()).as("close still waits, %d ms after it began, for the watchdog's log line",
                    TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0)).isFalse();
            writer.join(2000);
            assertThat(writer.isAlive()).isFalse();
        } finally {
            letGo.countDown();
            logger.removeHandler(stuck);
            if (closer != null) {
                closer.join(5000);
            }
            e.close();
        }
    }
}
